//! wrk as the load generator of the `--threads-only` rows: keep-alive load on dozens of
//! connections from two epoll threads, far cheaper per request than the built-in
//! thread-per-connection client, so on a small machine the servers, not the client, get the CPUs.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What wrk reports for one run.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct WrkRun {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: SocketErrors,
    /// Responses whose status was not 2xx or 3xx.
    pub non_2xx: u64,
    /// The server's CPU time (every process of it, user + system) over the run, per request:
    /// steadier than the rate on a shared machine. Filled in by the caller, which knows the pid.
    pub server_cpu_us: Option<f64>,
}

/// wrk's "Socket errors" line: failed connects, reads (a connection closed under a sent
/// request counts here), writes, and requests unanswered past `--timeout`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl SocketErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

impl std::fmt::Display for SocketErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.connect, self.read, self.write, self.timeout
        )
    }
}

/// Whether `wrk` is on PATH (it exits 1 on `--version`, so look at what it prints).
pub(crate) fn available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("wrk"))
}

/// `wrk` on `http://addr{path}` with `connections` keep-alive connections for `duration`,
/// sending `headers` with every request (e.g. `Connection: close`).
pub(crate) fn wrk(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
    headers: &[&str],
) -> Result<WrkRun> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &connections.min(2).to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1))])
        .args(["--timeout", "5s", "--latency"]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    let out = cmd.output().context("running wrk")?;
    let report = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed with {}: {report}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&report).with_context(|| format!("reading wrk's report:\n{report}"))
}

/// Read wrk's text report (`--latency` on).
fn parse(report: &str) -> Result<WrkRun> {
    let mut run = WrkRun::default();
    let mut saw_rate = false;
    for line in report.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rate] => {
                run.rps = rate.parse()?;
                saw_rate = true;
            }
            [count, "requests", "in", ..] => run.requests = count.parse()?,
            ["50%", latency] => run.p50_ms = millis(latency)?,
            ["99%", latency] => run.p99_ms = millis(latency)?,
            ["Non-2xx", "or", "3xx", "responses:", count] => run.non_2xx = count.parse()?,
            ["Socket", "errors:", ..] => run.errors = socket_errors(line)?,
            _ => {}
        }
    }
    if !saw_rate {
        bail!("no Requests/sec line");
    }
    Ok(run)
}

/// `Socket errors: connect 0, read 12, write 0, timeout 3`.
fn socket_errors(line: &str) -> Result<SocketErrors> {
    let mut errors = SocketErrors::default();
    let counts = line.trim_start_matches("Socket errors:");
    for part in counts.split(',') {
        let (name, count) = part
            .trim()
            .split_once(' ')
            .with_context(|| format!("socket error count {part:?}"))?;
        let count: u64 = count.parse()?;
        match name {
            "connect" => errors.connect = count,
            "read" => errors.read = count,
            "write" => errors.write = count,
            "timeout" => errors.timeout = count,
            other => bail!("unknown socket error kind {other:?}"),
        }
    }
    Ok(errors)
}

/// A wrk latency (`132.00us`, `4.20ms`, `1.05s`, `2.00m`) in milliseconds.
fn millis(latency: &str) -> Result<f64> {
    let digits = latency.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let value: f64 = digits
        .parse()
        .with_context(|| format!("latency {latency:?}"))?;
    let scale = match &latency[digits.len()..] {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        unit => bail!("unknown latency unit {unit:?} in {latency:?}"),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 3s test @ http://127.0.0.1:18081/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    50.99us  431.11us  36.35ms   99.66%
    Req/Sec    24.13k     8.64k   38.26k    66.67%
  Latency Distribution
     50%   26.00us
     75%   33.00us
     90%   63.00us
     99%    1.32s
  143780 requests in 3.01s, 10.83MB read
  Socket errors: connect 0, read 12, write 1, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:  47718.87
Transfer/sec:      3.60MB
";

    #[test]
    fn reads_rate_latencies_and_errors() {
        let run = parse(REPORT).unwrap();
        assert_eq!(run.requests, 143_780);
        assert!((run.rps - 47_718.87).abs() < 1e-6);
        assert!((run.p50_ms - 0.026).abs() < 1e-9);
        assert!((run.p99_ms - 1320.0).abs() < 1e-9);
        assert_eq!(
            run.errors,
            SocketErrors {
                connect: 0,
                read: 12,
                write: 1,
                timeout: 3
            }
        );
        assert_eq!(run.errors.total(), 16);
        assert_eq!(run.non_2xx, 5);
    }

    #[test]
    fn a_clean_run_has_no_errors() {
        let clean: String = REPORT
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let run = parse(&clean).unwrap();
        assert_eq!(run.errors, SocketErrors::default());
        assert_eq!(run.non_2xx, 0);
    }

    #[test]
    fn a_report_without_a_rate_is_refused() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn latency_units() {
        assert_eq!(millis("4.20ms").unwrap(), 4.2);
        assert_eq!(millis("2.00m").unwrap(), 120_000.0);
        assert!(millis("3.0parsecs").is_err());
    }
}
