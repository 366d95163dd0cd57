//! A small loopback load generator: N threads, each one connection at a time (`Connection:
//! close`, as nginx talks to its upstream), bounded by a deadline, recording latencies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One request to send: `GET /`, `POST /api/ping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub method: String,
    pub path: String,
}

impl Target {
    /// `PATH` or `METHOD PATH`.
    pub fn parse(text: &str) -> Result<Target> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let (method, path) = match words.as_slice() {
            [path] => ("GET", *path),
            [method, path] => (*method, *path),
            _ => bail!("{text:?} is not a URL path or METHOD PATH"),
        };
        if !path.starts_with('/') {
            bail!("{text:?}: the path must start with '/'");
        }
        if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            bail!("{text:?}: {method:?} is not an HTTP method");
        }
        Ok(Target {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A whole answer: the status and the body (with the head, for error reports).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub raw: Vec<u8>,
}

impl Answer {
    /// The body after the head, as text, cut to `max` bytes.
    pub fn body_text(&self, max: usize) -> String {
        let body = self
            .raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(&self.raw[..], |i| &self.raw[i + 4..]);
        String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned()
    }
}

/// Send one request on a new connection and read the answer until the server closes.
pub fn exchange(
    addr: SocketAddr,
    host: &str,
    target: &Target,
    timeout: Duration,
) -> Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = if matches!(target.method.as_str(), "POST" | "PUT" | "PATCH") {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferrocorn-sizing\r\n{body}Connection: close\r\n\r\n",
        target.method, target.path
    );
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {target}"))?;
    let status = std::str::from_utf8(&raw[..raw.len().min(64)])
        .ok()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line in the answer to {target}"))?;
    Ok(Answer { status, raw })
}

/// What one run of load measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Answered 1xx-3xx before the deadline.
    pub ok: u64,
    /// Failed, timed out, or answered 4xx/5xx before the deadline.
    pub errors: u64,
    /// Latencies of the `ok` requests, sorted.
    pub latencies: Vec<Duration>,
    pub first_error: Option<String>,
}

impl LoadReport {
    /// The latency at quantile `q` (nearest rank), zero when nothing was answered.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    pub fn mean(&self) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }

    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Keep `connections` requests in flight for `duration` (requests answered after it are not
/// counted), cycling through `targets`; stop early when `stop` is set.
pub fn run(
    addr: SocketAddr,
    host: &str,
    targets: &[Target],
    connections: usize,
    duration: Duration,
    stop: &AtomicBool,
) -> LoadReport {
    let end = Instant::now() + duration;
    let mut report = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..connections.max(1))
            .map(|i| scope.spawn(move || one_connection(addr, host, targets, i, end, stop)))
            .collect();
        let mut report = LoadReport::default();
        for t in threads {
            if let Ok(r) = t.join() {
                report.merge(r);
            }
        }
        report
    });
    report.latencies.sort_unstable();
    report
}

/// One connection's loop: a request, then the next, until the deadline.
fn one_connection(
    addr: SocketAddr,
    host: &str,
    targets: &[Target],
    first: usize,
    end: Instant,
    stop: &AtomicBool,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut i = first;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let target = &targets[i % targets.len()];
        i += 1;
        // A request started before the deadline may finish a little after it; a stuck one is cut.
        let timeout = (end - start) + Duration::from_secs(5);
        let outcome = exchange(addr, host, target, timeout);
        let done = Instant::now();
        if done > end {
            break;
        }
        match outcome {
            Ok(answer) if answer.status < 400 => {
                report.ok += 1;
                report.latencies.push(done - start);
            }
            Ok(answer) => {
                report.errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("{target} answered {}", answer.status));
            }
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    report
}
