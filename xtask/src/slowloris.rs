//! The slowloris row of `cargo xtask bench --threads-only`: 300 connections each trickle a
//! request head a byte every half second, never finishing it, while a normal client measures
//! its latency. The p99 with the attack over the p99 without must stay ≤ 2× for ferrocorn
//! (heads are read by the I/O loop, so tricklers hold no app thread). gunicorn's sync workers,
//! in the same table, each block on a trickler until it is cut: its errors show what happens.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bench::{hello_target, load, Load};
use crate::bench_threads::{print_checks, ratio, server, Bound, Check};
use crate::servers::{start_with, Env, ONE_REQUEST_TIMEOUT};

const TRICKLERS: usize = 300;
const TRICKLE_EVERY: Duration = Duration::from_millis(500);
/// The normal client: a few connections, `Connection: close` per request.
const NORMAL_CONNECTIONS: usize = 4;
const WORKERS: usize = 2;
/// The head each trickler sends, a byte at a time; past it, header bytes forever.
const HEAD_START: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: ";

/// What the attack saw: connections opened (reconnecting each one the server cut) and cut.
#[derive(Debug, Default)]
struct Counts {
    opened: AtomicU64,
    cut: AtomicU64,
    connect_failures: AtomicU64,
}

/// A running attack; [`Attack::stop`] ends it and returns its counts.
struct Attack {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    thread: JoinHandle<()>,
}

impl Attack {
    /// Start trickling on [`TRICKLERS`] connections; returns once all have been opened (or
    /// after 10 s, with whatever connected).
    fn start(addr: SocketAddr) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || trickle(addr, &stop, &counts))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while counts.opened.load(Ordering::Relaxed) < TRICKLERS as u64 && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        Attack {
            stop,
            counts,
            thread,
        }
    }

    fn stop(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        Arc::try_unwrap(self.counts).unwrap_or_default()
    }
}

/// One trickling connection and how far into its head it is.
struct Trickler {
    stream: TcpStream,
    sent: usize,
}

impl Trickler {
    fn open(addr: SocketAddr) -> std::io::Result<Trickler> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_nonblocking(true)?;
        Ok(Trickler { stream, sent: 0 })
    }

    /// Send the next byte; false once the server has answered or closed the connection.
    fn step(&mut self) -> bool {
        let byte = HEAD_START.get(self.sent).copied().unwrap_or(b'a');
        if self.stream.write(&[byte]).is_err() {
            return false;
        }
        self.sent += 1;
        let mut buf = [0u8; 512];
        // Any answer (408, 400) or EOF means the server let go of this connection.
        matches!(self.stream.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
    }
}

/// The attack's loop: every [`TRICKLE_EVERY`], a byte on each connection; a connection the
/// server cut is opened again, as an attacker would.
fn trickle(addr: SocketAddr, stop: &AtomicBool, counts: &Counts) {
    let mut tricklers: Vec<Option<Trickler>> = (0..TRICKLERS).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        for slot in tricklers.iter_mut() {
            if slot.is_none() {
                match Trickler::open(addr) {
                    Ok(t) => {
                        counts.opened.fetch_add(1, Ordering::Relaxed);
                        *slot = Some(t);
                    }
                    Err(_) => {
                        counts.connect_failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            if !slot.as_mut().is_some_and(Trickler::step) {
                counts.cut.fetch_add(1, Ordering::Relaxed);
                *slot = None;
            }
        }
        std::thread::sleep(TRICKLE_EVERY.saturating_sub(tick.elapsed()));
    }
}

/// One server's row: normal-client latency without and with the attack.
struct Row {
    server: &'static str,
    without: Load,
    with: Load,
    attack: Counts,
}

/// ferrocorn and gunicorn sync, 2 workers each, hello.py.
pub(crate) fn slowloris(env: &Env, duration: Duration) -> Result<Vec<String>> {
    let hello = hello_target(env);
    println!(
        "\n## Slowloris: examples/hello.py, {WORKERS} workers; {TRICKLERS} connections trickle a \
         head a byte every {} ms while {NORMAL_CONNECTIONS} connections send normal requests \
         (Connection: close), {:.0} s each without and with\n",
        TRICKLE_EVERY.as_millis(),
        duration.as_secs_f64()
    );
    println!("| server | p99 ms without | requests without | p99 ms with | requests with | failed with | tricklers opened | cut by the server |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rows = Vec::new();
    for name in ["ferrocorn", "gunicorn"] {
        let log_name = format!("{name}-slowloris");
        let running = match start_with(server(name)?, env, &hello, WORKERS, false, &[], &log_name) {
            Ok(running) => running,
            Err(e) => {
                println!("| {name} | skipped: {e:#} | | | | | | |");
                continue;
            }
        };
        load(
            running.addr,
            hello.path,
            NORMAL_CONNECTIONS,
            Duration::from_secs(1),
        );
        let without = load(running.addr, hello.path, NORMAL_CONNECTIONS, duration);
        let attack = Attack::start(running.addr);
        // Let every trickler send a few bytes first: each is now inside some read of a head.
        std::thread::sleep(TRICKLE_EVERY * 2);
        let with = load(running.addr, hello.path, NORMAL_CONNECTIONS, duration);
        let attack = attack.stop();
        let row = Row {
            server: server(name)?.name,
            without,
            with,
            attack,
        };
        print_row(&row);
        rows.push(row);
    }
    Ok(slowloris_failures(&rows))
}

fn print_row(row: &Row) {
    println!(
        "| {} | {:.2} | {} | {:.2} | {} | {} | {} | {} |",
        row.server,
        row.without.p99_ms,
        row.without.requests,
        row.with.p99_ms,
        row.with.requests,
        row.with.errors,
        row.attack.opened.load(Ordering::Relaxed),
        row.attack.cut.load(Ordering::Relaxed)
    );
}

fn slowloris_failures(rows: &[Row]) -> Vec<String> {
    let p99_ratio = |name: &str| {
        let row = rows.iter().find(|r| r.server == name)?;
        if row.with.requests == 0 && row.without.requests > 0 {
            // Not one normal request answered under the attack: an unbounded p99.
            return Some(f64::INFINITY);
        }
        ratio(Some(row.with.p99_ms), Some(row.without.p99_ms))
    };
    let mut failures = print_checks(&[
        Check {
            what: "ferrocorn p99 with attack / without".into(),
            ratio: p99_ratio("ferrocorn"),
            bound: Bound::AtMost(2.0),
        },
        Check {
            what: "gunicorn sync p99 with attack / without".into(),
            ratio: p99_ratio("gunicorn"),
            bound: Bound::None,
        },
    ]);
    for row in rows {
        let failed = row.with.errors;
        if failed > 0 {
            println!(
                "{}: {failed} normal requests failed under the attack ({} succeeded; each \
                 read waits up to {} s), e.g. {}",
                row.server,
                row.with.requests,
                ONE_REQUEST_TIMEOUT.as_secs(),
                row.with.first_error.as_deref().unwrap_or("?")
            );
        }
        if row.server == "ferrocorn" && failed > 0 {
            failures.push(format!(
                "ferrocorn: {failed} normal requests failed under slowloris"
            ));
        }
    }
    failures
}
