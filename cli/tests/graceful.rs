//! No connection is lost on a graceful path (TERM, HUP, TTOU, --max-requests, USR2 then TERM of
//! the old master): the real binary and the example WSGI app, real signals, load from client
//! threads in the test.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferrocorn_testkit::*;

/// How long each load test keeps its clients busy.
const LOAD_TIME: Duration = Duration::from_secs(5);
const CLIENTS: usize = 16;
/// How long the slow clients of the load take between connecting and sending their request.
const SLOW_LINK: Duration = Duration::from_millis(5);
/// The log line of a worker that noticed a graceful stop while it holds an accepted connection
/// whose request has not come yet.
const WAITING_FOR_REQUEST: &str = "stopping gracefully: waiting up to";
const STOP_PATIENCE: Duration = Duration::from_secs(30);

const GET_KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

/// Read one response off `client`, a failure as text for the tally.
fn read_response(client: &mut Client) -> Result<Resp, String> {
    client
        .read_response_for(false)
        .map_err(|e| format!("reading the response: {e}"))
}

/// Connect and wait until a worker has accepted the connection (nothing is sent on it).
fn connect_accepted(addr: SocketAddr) -> TcpStream {
    let stream = connect(addr);
    wait_all_accepted(addr, BOOT_TIMEOUT);
    stream
}

/// The connection accepted before the stop gets its response, which closes it.
fn assert_served(stream: TcpStream) {
    let mut client = Client::on(stream);
    client.send(GET_KEEP_ALIVE);
    let resp = read_response(&mut client).unwrap_or_else(|e| panic!("pending connection: {e}"));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"Hello, World!\n");
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    assert!(client.at_eof(), "bytes after the last response");
}

#[test]
fn hup_serves_a_connection_accepted_before_it() {
    let mut server = start_hello(&["-w", "1", "--log-level", "debug"]);
    let old = server.wait_for_workers(1);
    let pending = connect_accepted(server.addr());
    server.signal(libc::SIGHUP);
    // The new worker is forked first, then the old one is retired.
    let new = server.wait_for_workers(1);
    server.wait_for_log(WAITING_FOR_REQUEST, BOOT_TIMEOUT);
    assert_served(pending);
    server.wait_until_workers(&new, STOP_PATIENCE);
    assert!(!pid_alive(old[0]));
}

#[test]
fn term_serves_a_connection_accepted_before_it() {
    let mut server = start_hello(&["-w", "1", "--log-level", "debug"]);
    server.wait_for_workers(1);
    let pending = connect_accepted(server.addr());
    server.signal(libc::SIGTERM);
    server.wait_for_log(WAITING_FOR_REQUEST, BOOT_TIMEOUT);
    assert_served(pending);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
}

#[test]
fn ttou_serves_a_connection_the_retired_worker_accepted() {
    let mut server = start_hello(&["-w", "1", "--log-level", "debug"]);
    let oldest = server.wait_for_workers(1)[0];
    let pending = connect_accepted(server.addr());
    server.signal(libc::SIGTTIN);
    let second = server.wait_for_workers(1)[0];
    server.wait_worker_count(2, BOOT_TIMEOUT);
    // The oldest worker, which holds the connection, is retired.
    server.signal(libc::SIGTTOU);
    server.wait_for_log(WAITING_FOR_REQUEST, BOOT_TIMEOUT);
    assert_served(pending);
    server.wait_until_workers(&[second], STOP_PATIENCE);
    assert!(!pid_alive(oldest));
}

#[test]
fn usr2_then_term_of_the_old_master_serves_a_connection_it_accepted() {
    let mut server = start_hello(&["-w", "1", "--log-level", "debug"]);
    server.wait_for_workers(1);
    let pending = connect_accepted(server.addr());
    let (new_master, _cleanup) = reexec(&mut server, 1);
    server.signal(libc::SIGTERM);
    server.wait_for_log(WAITING_FOR_REQUEST, BOOT_TIMEOUT);
    assert_served(pending);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    assert!(pid_alive(new_master));
}

/// USR2 to the master; waits until the new master's `workers` workers booted. Returns the new
/// master's pid and a guard that kills it.
fn reexec(server: &mut Server, workers: usize) -> (i32, KillOnDrop) {
    let new_master = server.reexec();
    let guard = KillOnDrop(new_master);
    server.wait_for_workers(workers);
    wait_until("the new master's workers come", || {
        children_of(new_master).len() >= workers
    });
    (new_master, guard)
}

/// What the load's clients saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    /// Keep-alive connections the server had closed (EOF seen) before the client sent on them:
    /// the one loss HTTP allows, as the client could tell and retry.
    closed_before_send: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed.extend(other.failed);
        self.closed_before_send += other.closed_before_send;
    }
}

/// Client threads sending `GET /` until told to stop: half with `Connection: close` (half of those
/// [`SLOW_LINK`] after connecting), half on keep-alive connections.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    started: Instant,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let clients = (0..CLIENTS)
            .map(|i| {
                let stop = stop.clone();
                let ok = ok.clone();
                std::thread::spawn(move || match i % 4 {
                    0 => close_client(addr, &stop, &ok, Duration::ZERO),
                    // A client on a slower link: its request comes a moment after its connection
                    // was accepted, the window in which a stop used to drop it.
                    2 => close_client(addr, &stop, &ok, SLOW_LINK),
                    _ => keep_alive_client(addr, &stop, &ok),
                })
            })
            .collect();
        Load {
            stop,
            ok,
            started: Instant::now(),
            clients,
        }
    }

    /// Wait until `n` more requests have succeeded: the load reaches the workers now in place.
    fn wait_progress(&self, n: u64) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        wait_until("the load makes progress", || {
            self.ok.load(Ordering::SeqCst) >= target
        });
    }

    /// Let the load run to [`LOAD_TIME`], stop it, and sum up.
    fn finish(self, scenario: &str) -> Tally {
        let left = LOAD_TIME.saturating_sub(self.started.elapsed());
        std::thread::sleep(left);
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for client in self.clients {
            tally.add(client.join().unwrap());
        }
        eprintln!(
            "{scenario}: {} ok, {} failed, {} keep-alive connections closed before the client sent",
            tally.ok,
            tally.failed.len(),
            tally.closed_before_send
        );
        tally
    }
}

fn assert_none_lost(tally: &Tally, server: &Server) {
    assert!(
        tally.failed.is_empty(),
        "{} failed requests (of {}): {:?}\nlog:\n{}",
        tally.failed.len(),
        tally.ok + tally.failed.len() as u64,
        &tally.failed[..tally.failed.len().min(10)],
        server.log_text()
    );
    assert!(tally.ok >= 200, "too little load to tell: {tally:?}");
}

fn check(resp: Result<Resp, String>, tally: &mut Tally, ok: &AtomicU64) -> Option<Resp> {
    match resp {
        Ok(resp) if resp.status == 200 && resp.body == b"Hello, World!\n" => {
            tally.ok += 1;
            ok.fetch_add(1, Ordering::SeqCst);
            Some(resp)
        }
        Ok(resp) => {
            tally.failed.push(format!("bad response {resp:?}"));
            None
        }
        Err(e) => {
            tally.failed.push(e);
            None
        }
    }
}

fn close_client(addr: SocketAddr, stop: &AtomicBool, ok: &AtomicU64, delay: Duration) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::SeqCst) {
        let resp = TcpStream::connect(addr)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                std::thread::sleep(delay);
                s.write_all(GET_CLOSE).map_err(|e| format!("send: {e}"))?;
                read_response(&mut Client::on(s))
            })
            .map_err(|e| format!("Connection: close: {e}"));
        check(resp, &mut tally, ok);
    }
    tally
}

fn keep_alive_client(addr: SocketAddr, stop: &AtomicBool, ok: &AtomicU64) -> Tally {
    let mut tally = Tally::default();
    let mut held: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        if held.as_ref().is_some_and(|c| closed_by_server(&c.stream)) {
            tally.closed_before_send += 1;
            held = None;
        }
        let mut client = match held.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    Client::on(s)
                }
                Err(e) => {
                    tally.failed.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let resp = client
            .stream
            .write_all(GET_KEEP_ALIVE)
            .map_err(|e| format!("send: {e}"))
            .and_then(|()| read_response(&mut client))
            .map_err(|e| format!("keep-alive: {e}"));
        if let Some(resp) = check(resp, &mut tally, ok) {
            if resp.header("connection") != Some("close") {
                held = Some(client);
            }
        }
    }
    tally
}

/// Whether the server's close (or reset) has reached us: EOF is readable on the connection.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        // Bytes nobody asked for: the connection is unusable, as good as closed.
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

fn three_hups_under_load(preload: bool) {
    let mut args = vec!["-w", "4"];
    if preload {
        args.push("--preload");
    }
    let mut server = start_hello(&args);
    server.wait_for_workers(4);
    let load = Load::start(server.addr());
    load.wait_progress(200);
    for _ in 0..3 {
        server.signal(libc::SIGHUP);
        server.wait_for_workers(4);
        load.wait_progress(200);
    }
    let tally = load.finish(if preload {
        "HUP x3 --preload"
    } else {
        "HUP x3"
    });
    assert_none_lost(&tally, &server);
    assert_eq!(server.count_log("Booting worker with pid"), 16);
}

#[test]
fn three_hups_under_load_lose_nothing() {
    three_hups_under_load(false);
}

#[test]
fn three_hups_under_load_with_preload_lose_nothing() {
    three_hups_under_load(true);
}

#[test]
fn ttin_ttou_under_load_lose_nothing() {
    let mut server = start_hello(&["-w", "4"]);
    server.wait_for_workers(4);
    let load = Load::start(server.addr());
    load.wait_progress(200);
    for _ in 0..2 {
        server.signal(libc::SIGTTIN);
        server.wait_for_workers(1);
    }
    server.wait_worker_count(6, BOOT_TIMEOUT);
    load.wait_progress(200);
    for _ in 0..3 {
        server.signal(libc::SIGTTOU);
        load.wait_progress(100);
    }
    server.wait_worker_count(3, STOP_PATIENCE);
    let tally = load.finish("TTIN x2, TTOU x3");
    assert_none_lost(&tally, &server);
}

#[test]
fn max_requests_recycling_under_load_loses_nothing() {
    let mut server = start_hello(&["-w", "4", "--max-requests", "50"]);
    server.wait_for_workers(4);
    let load = Load::start(server.addr());
    let tally = load.finish("--max-requests 50");
    assert_none_lost(&tally, &server);
    assert!(
        server.count_log("Autorestarting worker") >= 4,
        "workers were not recycled:\n{}",
        server.log_text()
    );
}

#[test]
fn usr2_then_term_of_the_old_master_under_load_loses_nothing() {
    let mut server = start_hello(&["-w", "4"]);
    server.wait_for_workers(4);
    let load = Load::start(server.addr());
    load.wait_progress(200);
    let (new_master, _cleanup) = reexec(&mut server, 4);
    load.wait_progress(200);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    load.wait_progress(200);
    let tally = load.finish("USR2, then TERM of the old master");
    assert!(pid_alive(new_master));
    assert_none_lost(&tally, &server);
}

/// The server's debug line once its TCP listeners stopped completing new handshakes.
const REFUSING: &str = "Refusing new connections on http://";

/// Wait until `n` clients sit in the accept queue of `addr`, not accepted by any worker.
fn wait_queued(addr: SocketAddr, n: u32) {
    wait_for(
        &format!("{n} connections queued on {addr}"),
        BOOT_TIMEOUT,
        || (accept_queue_len(addr) == Some(n)).then_some(()),
    );
}

#[test]
fn term_serves_the_connections_still_in_the_accept_queue() {
    let mut server = start_hello(&["-w", "1", "--log-level", "debug"]);
    server.wait_for_workers(1);
    let addr = server.addr();
    // The only worker is busy, so the next connections wait in the listener's queue.
    let mut busy = connect(addr);
    busy.write_all(b"GET /sleep?s=3 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    server.wait_for_log("sleeping 3.0s", BOOT_TIMEOUT);
    let queued: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut stream = connect(addr);
            stream.write_all(GET_KEEP_ALIVE).unwrap();
            stream
        })
        .collect();
    wait_queued(addr, 5);
    server.signal(libc::SIGTERM);
    server.wait_for_log(REFUSING, BOOT_TIMEOUT);
    // A client that comes after the stop began gets no connection that would then be reset.
    match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::ConnectionRefused
            ),
            "{e}"
        ),
        Ok(s) => panic!("a connection made after TERM completed: {s:?}"),
    }
    let slow = read_response(&mut Client::on(busy)).unwrap_or_else(|e| panic!("slow request: {e}"));
    assert_eq!(slow.status, 200, "{slow:?}");
    assert_eq!(slow.header("connection"), Some("close"), "{slow:?}");
    for (i, stream) in queued.into_iter().enumerate() {
        let resp =
            read_response(&mut Client::on(stream)).unwrap_or_else(|e| panic!("queued #{i}: {e}"));
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.body, b"Hello, World!\n");
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    }
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
}
