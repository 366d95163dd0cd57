//! `cargo xtask soak`: requests lost while the master reloads, scales, stops or re-executes,
//! ferrocorn and gunicorn in the same run, same app (examples/hello.py), same workers.
//!
//! Target: ferrocorn fails no request on any of these graceful paths. One loss is allowed and
//! counted apart: a keep-alive connection the server closed while idle, when the close reached
//! the client before it sent its next request (the client checks for EOF just before sending, as
//! a proxy's connection pool does). A connection refused after the master was told to stop is
//! not a failure either; any other refused connection is.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::servers::{prepare, start_with, workers_of, Env, Running, ServerKind, Target, SERVERS};

const WORKERS: usize = 4;
const CLIENT_THREADS: usize = 16;
/// Per thread, so the load stays bounded in count as well as in time.
const MAX_REQUESTS_PER_THREAD: u64 = 2_000_000;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Hup,
    HupPreload,
    TtinTtou,
    TermInFlight,
    Usr2ThenTerm,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Hup,
        Scenario::HupPreload,
        Scenario::TtinTtou,
        Scenario::TermInFlight,
        Scenario::Usr2ThenTerm,
    ];

    fn describe(self) -> &'static str {
        match self {
            Scenario::Hup => "HUP x3",
            Scenario::HupPreload => "HUP x3, --preload",
            Scenario::TtinTtou => "TTIN x2, TTOU x3",
            Scenario::TermInFlight => "TERM with requests in flight",
            Scenario::Usr2ThenTerm => "USR2, then TERM the old master",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Scenario::Hup => "hup",
            Scenario::HupPreload => "hup-preload",
            Scenario::TtinTtou => "ttin-ttou",
            Scenario::TermInFlight => "term",
            Scenario::Usr2ThenTerm => "usr2",
        }
    }
}

/// What happened to the requests of one kind of connection.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u64,
    failed: u64,
    /// Keep-alive connections found closed just before sending on them (the allowed loss).
    closed_before_send: u64,
    /// Connections refused once the master was told to stop (expected).
    refused_after_stop: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.closed_before_send += o.closed_before_send;
        self.refused_after_stop += o.refused_after_stop;
    }
}

#[derive(Debug, Clone, Copy)]
enum Connections {
    Close,
    KeepAlive,
}

/// Load on one server: half the threads with `Connection: close`, half with keep-alive.
struct Clients {
    stop: Arc<AtomicBool>,
    /// Set just before the master is told to stop: from then on a refused connect is expected.
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(Connections, Tally)>>,
}

impl Clients {
    fn start(addr: SocketAddr, hard_deadline: Instant) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let threads = (0..CLIENT_THREADS)
            .map(|i| {
                let mode = if i % 2 == 0 {
                    Connections::Close
                } else {
                    Connections::KeepAlive
                };
                let (stop, stopping) = (stop.clone(), stopping.clone());
                std::thread::spawn(move || {
                    let mut client = Client {
                        addr,
                        stopping: &stopping,
                        tally: Tally::default(),
                        conn: None,
                    };
                    for _ in 0..MAX_REQUESTS_PER_THREAD {
                        if stop.load(Ordering::Relaxed) || Instant::now() > hard_deadline {
                            break;
                        }
                        match mode {
                            Connections::Close => client.one_closed_request(),
                            Connections::KeepAlive => client.one_keep_alive_request(),
                        }
                    }
                    (mode, client.tally)
                })
            })
            .collect();
        Clients {
            stop,
            stopping,
            threads,
        }
    }

    /// Stop and add up: (Connection: close, keep-alive).
    fn finish(self) -> (Tally, Tally) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut close, mut keep_alive) = (Tally::default(), Tally::default());
        for t in self.threads {
            match t.join().expect("client thread") {
                (Connections::Close, tally) => close += tally,
                (Connections::KeepAlive, tally) => keep_alive += tally,
            }
        }
        (close, keep_alive)
    }
}

struct Client<'a> {
    addr: SocketAddr,
    stopping: &'a AtomicBool,
    tally: Tally,
    /// The keep-alive connection, while the server keeps it open.
    conn: Option<TcpStream>,
}

impl Client<'_> {
    fn connect(&mut self) -> Option<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)
            .and_then(|s| {
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(s)
            })
            .ok();
        if stream.is_none() {
            if self.stopping.load(Ordering::Relaxed) {
                self.tally.refused_after_stop += 1;
                // The listener is gone for good: do not spin.
                std::thread::sleep(Duration::from_millis(10));
            } else {
                self.tally.failed += 1;
            }
        }
        stream
    }

    fn one_closed_request(&mut self) {
        let Some(mut stream) = self.connect() else {
            return;
        };
        match exchange(&mut stream, "close") {
            Ok(r) if r.status == 200 => self.tally.ok += 1,
            _ => self.tally.failed += 1,
        }
    }

    fn one_keep_alive_request(&mut self) {
        let mut stream = match self.conn.take() {
            Some(s) if closed_by_peer(&s) => {
                self.tally.closed_before_send += 1;
                return;
            }
            Some(s) => s,
            None => match self.connect() {
                Some(s) => s,
                None => return,
            },
        };
        match exchange(&mut stream, "keep-alive") {
            Ok(r) if r.status == 200 => {
                self.tally.ok += 1;
                if !r.close {
                    self.conn = Some(stream);
                }
            }
            _ => self.tally.failed += 1,
        }
    }
}

/// Whether the server closed an idle connection (EOF or reset waiting to be read), checked
/// without blocking right before sending on it.
fn closed_by_peer(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match stream.peek(&mut [0u8; 1]) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        // EOF, a reset, or bytes nobody asked for: this connection cannot carry a request.
        _ => true,
    };
    closed || stream.set_nonblocking(false).is_err()
}

struct Reply {
    status: u16,
    /// The server said it closes the connection after this response.
    close: bool,
}

/// Send one GET and read one whole response (framed by Content-Length, else by EOF).
fn exchange(stream: &mut TcpStream, connection: &str) -> io::Result<Reply> {
    stream.write_all(
        format!("GET / HTTP/1.1\r\nHost: soak\r\nConnection: {connection}\r\n\r\n").as_bytes(),
    )?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("response head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let close = header("connection") == Some("close") || head.starts_with("http/1.0");
    match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(length) => {
            let mut body_seen = buf.len() - head_end;
            while body_seen < length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                body_seen += n;
            }
            Ok(Reply { status, close })
        }
        None => {
            stream.read_to_end(&mut buf)?;
            Ok(Reply {
                status,
                close: true,
            })
        }
    }
}

fn send(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) };
}

/// The master started by USR2: gunicorn's writes PIDFILE (the old one moved to .oldbin),
/// ferrocorn's PIDFILE.2 until the old master is gone.
fn wait_new_master(pidfile: &Path, old: i32) -> Result<i32> {
    let mut second = pidfile.as_os_str().to_owned();
    second.push(".2");
    let candidates = [pidfile.to_path_buf(), PathBuf::from(second)];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let found = candidates.iter().find_map(|p| {
            let pid: i32 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
            (pid != old).then_some(pid)
        });
        if let Some(pid) = found {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no new master in {} within 30 s", pidfile.display())
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Send the scenario's signals while `clients` load the server, spread over `span`.
fn drive(
    scenario: Scenario,
    server: &mut Running,
    clients: &Clients,
    pidfile: &Path,
    span: Duration,
) -> Result<()> {
    let master = server.child.id() as i32;
    let signals: &[libc::c_int] = match scenario {
        Scenario::Hup | Scenario::HupPreload => &[libc::SIGHUP; 3],
        Scenario::TtinTtou => &[
            libc::SIGTTIN,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGTTOU,
            libc::SIGTTOU,
        ],
        Scenario::TermInFlight => {
            std::thread::sleep(span / 2);
            clients.stopping.store(true, Ordering::Relaxed);
            send(master, libc::SIGTERM);
            return wait_for(
                "the master exits after TERM",
                Duration::from_secs(60),
                || matches!(server.child.try_wait(), Ok(Some(_))),
            );
        }
        Scenario::Usr2ThenTerm => {
            std::thread::sleep(span / 3);
            send(master, libc::SIGUSR2);
            let new = wait_new_master(pidfile, master)?;
            wait_for("the new master's workers", Duration::from_secs(60), || {
                workers_of(new).len() >= WORKERS
            })?;
            send(master, libc::SIGTERM);
            wait_for("the old master exits", Duration::from_secs(60), || {
                matches!(server.child.try_wait(), Ok(Some(_)))
            })?;
            std::thread::sleep(span / 3);
            // The new master is in the old one's process group: dropping `server` stops it.
            return Ok(());
        }
    };
    let gap = span / (signals.len() as u32 + 1);
    for &signal in signals {
        std::thread::sleep(gap);
        send(master, signal);
    }
    std::thread::sleep(gap);
    Ok(())
}

struct Row {
    scenario: Scenario,
    server: &'static str,
    close: Tally,
    keep_alive: Tally,
}

fn run_scenario(
    kind: &ServerKind,
    env: &Env,
    hello: &Target,
    scenario: Scenario,
    span: Duration,
) -> Result<Row> {
    let log_name = format!("soak-{}-{}", kind.name, scenario.slug());
    let pidfile = env.root.join(format!("target/bench-logs/{log_name}.pid"));
    for stale in ["", ".2", ".oldbin"] {
        let mut p = pidfile.as_os_str().to_owned();
        p.push(stale);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let preload = scenario == Scenario::HupPreload;
    let extra = ["--pid".to_string(), pidfile.display().to_string()];
    let mut server = start_with(kind, env, hello, WORKERS, preload, &extra, &log_name)?;
    let clients = Clients::start(
        server.addr,
        Instant::now() + span * 4 + Duration::from_secs(90),
    );
    let driven = drive(scenario, &mut server, &clients, &pidfile, span);
    let (close, keep_alive) = clients.finish();
    driven.with_context(|| format!("{} under {}", kind.name, scenario.describe()))?;
    Ok(Row {
        scenario,
        server: kind.name,
        close,
        keep_alive,
    })
}

fn parse_seconds(args: &[String]) -> Result<Duration> {
    match args {
        [] => Ok(Duration::from_secs(6)),
        [flag, value] if flag == "--seconds" => {
            let s: f64 = value.parse().context("--seconds takes a number")?;
            if !(s.is_finite() && s > 0.0) {
                bail!("--seconds must be positive");
            }
            Ok(Duration::from_secs_f64(s))
        }
        _ => bail!("usage: cargo xtask soak [--seconds S]  (per scenario, default 6)"),
    }
}

pub fn soak(root: &Path, args: &[String]) -> Result<()> {
    let span = parse_seconds(args)?;
    let env = prepare(root)?;
    let hello = Target {
        dir: env.root.join("examples"),
        spec: "hello:app",
        path: "/",
    };
    let mut rows = Vec::new();
    for scenario in Scenario::ALL {
        for kind in SERVERS
            .iter()
            .filter(|k| matches!(k.name, "ferrocorn" | "gunicorn"))
        {
            eprintln!("soak: {} under {}", kind.name, scenario.describe());
            match run_scenario(kind, &env, &hello, scenario, span) {
                Ok(row) => rows.push(row),
                Err(e) if kind.name == "ferrocorn" => return Err(e),
                Err(e) => println!("{}: {}: skipped: {e:#}", kind.name, scenario.describe()),
            }
        }
    }
    print_table(&rows, span);
    let missed: Vec<String> = rows
        .iter()
        .filter(|r| r.server == "ferrocorn" && r.close.failed + r.keep_alive.failed > 0)
        .map(|r| {
            format!(
                "{} ({} failed)",
                r.scenario.describe(),
                r.close.failed + r.keep_alive.failed
            )
        })
        .collect();
    if missed.is_empty() {
        println!("\nsoak: target met: ferrocorn 0 failed on every graceful path");
        Ok(())
    } else {
        bail!(
            "soak target missed (ferrocorn 0 failed on every graceful path): {}",
            missed.join("; ")
        )
    }
}

fn print_table(rows: &[Row], span: Duration) {
    println!(
        "\n## Soak: examples/hello.py, {WORKERS} workers, {CLIENT_THREADS} client threads (half \
         Connection: close, half keep-alive), {:.0} s per scenario\n",
        span.as_secs_f64()
    );
    println!("| scenario | server | ok | failed (close) | failed (keep-alive) | closed before send (allowed) | refused after stop |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let mut all = r.close;
        all += r.keep_alive;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario.describe(),
            r.server,
            all.ok,
            r.close.failed,
            r.keep_alive.failed,
            all.closed_before_send,
            all.refused_after_stop
        );
    }
}
