//! `cargo xtask bench --threads-only` (also part of the full bench): issue 12's rows — the
//! event-loop worker and `--threads` against the servers that already hold connections off the
//! Python thread, each row ending in a table of its ratios against the targets:
//! - keep-alive hello, 2 workers, 64 connections (wrk): ≥ 1.2× Granian, ≥ 2× uWSGI (against the
//!   uWSGI configuration that answers all 64: one thread per connection);
//! - an I/O-bound Django view (50 ms wait), 16 slots each: ferrocorn 2 × 8 threads against
//!   gunicorn gthread 2 × 8 and gunicorn sync × 16: throughput ≥ 1.0× both, total PSS ≤ 0.7×
//!   gthread's and ≤ 0.25× sync's;
//! - slowloris (see `slowloris.rs`): normal-request p99 under attack ≤ 2× without;
//! - `Connection: close` hello (the nginx case): not below the sync-worker-only ferrocorn.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::baseline::{baseline_ferrocorn, SYNC_WORKER_REV};
use crate::bench::{hello_target, load, Load};
use crate::servers::{start_with, venv_script, Env, Running, ServerKind, Target, SERVERS};
use crate::slowloris;
use crate::wrk::{self, WrkRun};

/// Every row of the section; returns the targets missed.
pub(crate) fn threads(env: &Env, duration: Duration) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    let has_wrk = wrk::available();
    if has_wrk {
        failures.extend(keepalive_hello(env, duration)?);
    } else {
        failures
            .push("wrk is not on PATH: the keep-alive and Connection: close rows need it".into());
    }
    failures.extend(io_bound(env, duration)?);
    failures.extend(slowloris::slowloris(env, duration)?);
    if has_wrk {
        failures.extend(close_hello(env, duration)?);
    }
    Ok(failures)
}

/// One of the bench's servers by name.
pub(crate) fn server(name: &str) -> Result<&'static ServerKind> {
    SERVERS
        .iter()
        .find(|k| k.name == name)
        .with_context(|| format!("no {name} in SERVERS"))
}

/// Which way a ratio must lie from its target.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bound {
    AtLeast(f64),
    AtMost(f64),
    /// Shown for comparison, no target.
    None,
}

impl Bound {
    fn holds(self, ratio: f64) -> bool {
        match self {
            Bound::AtLeast(target) => ratio >= target,
            Bound::AtMost(target) => ratio <= target,
            Bound::None => true,
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::AtLeast(target) => write!(f, "≥ {target:.2}"),
            Bound::AtMost(target) => write!(f, "≤ {target:.2}"),
            Bound::None => write!(f, "—"),
        }
    }
}

/// A ratio of the section and its target; `ratio` is `None` when a side did not run.
#[derive(Debug)]
pub(crate) struct Check {
    pub what: String,
    pub ratio: Option<f64>,
    pub bound: Bound,
}

/// `a / b` when both were measured.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?).filter(|r| r.is_finite())
}

/// Print the checks as a table (ratio, target, pass/miss); returns the missed ones.
pub(crate) fn print_checks(checks: &[Check]) -> Vec<String> {
    println!("\n| ratio | measured | target | result |");
    println!("| --- | ---: | ---: | --- |");
    let mut failures = Vec::new();
    for check in checks {
        let bound = check.bound;
        let (measured, result) = match (check.ratio, bound) {
            (Some(r), Bound::None) => (format!("×{r:.3}"), ""),
            (Some(r), _) if bound.holds(r) => (format!("×{r:.3}"), "pass"),
            (Some(r), _) => (format!("×{r:.3}"), "miss"),
            (None, Bound::None) => ("not measured".to_string(), ""),
            (None, _) => ("not measured".to_string(), "miss"),
        };
        println!("| {} | {measured} | {bound} | {result} |", check.what);
        if result == "miss" {
            failures.push(format!("{} {measured} (target {bound})", check.what));
        }
    }
    failures
}

/// Granian with its own default threading for WSGI (the bench's other rows pin one blocking
/// thread per worker, to match one-request-at-a-time servers).
fn granian_default_threads(env: &Env, t: &Target, port: u16, workers: usize, _: bool) -> Command {
    let mut cmd = venv_script(env, "granian");
    cmd.args(["--interface", "wsgi", "--host", "127.0.0.1"])
        .args([
            "--port",
            &port.to_string(),
            "--workers",
            &workers.to_string(),
        ])
        .args(["--no-ws", "--log-level", "warning", "--working-dir"])
        .arg(&t.dir)
        .arg(t.spec);
    cmd
}

/// uWSGI speaking HTTP/1.1 with keep-alive on its own socket (`--http11-socket`; plain
/// `--http-socket` answers HTTP/1.0-style and closes).
fn uwsgi_keepalive(env: &Env, t: &Target, port: u16, workers: usize, _: bool) -> Command {
    let (module, callable) = t.spec.split_once(':').unwrap_or((t.spec, "application"));
    let mut cmd = Command::new(env.venv.join("bin/uwsgi"));
    cmd.args(["--http11-socket", &format!("127.0.0.1:{port}"), "--master"])
        .args(["--processes", &workers.to_string(), "--module", module])
        .args(["--callable", callable, "--disable-logging", "--die-on-term"])
        .arg("--lazy-apps")
        .arg("--chdir")
        .arg(&t.dir)
        .arg("--virtualenv")
        .arg(&env.venv);
    cmd
}

const GRANIAN_THREADED: ServerKind = ServerKind {
    name: "granian",
    command: granian_default_threads,
};

const UWSGI_KEEPALIVE: ServerKind = ServerKind {
    name: "uwsgi",
    command: uwsgi_keepalive,
};

/// Threads per uWSGI process for the keep-alive row: enough for each process to hold its share
/// of the 64 connections (one connection per thread is how uWSGI holds them).
const UWSGI_THREADS: usize = KEEPALIVE_CONNECTIONS / KEEPALIVE_WORKERS;

/// uWSGI as above, with enough threads to answer every connection.
fn uwsgi_keepalive_threads(env: &Env, t: &Target, port: u16, workers: usize, _: bool) -> Command {
    let mut cmd = uwsgi_keepalive(env, t, port, workers, false);
    cmd.args(["--threads", &UWSGI_THREADS.to_string()]);
    cmd
}

const UWSGI_KEEPALIVE_THREADS: ServerKind = ServerKind {
    name: "uwsgi --threads 32",
    command: uwsgi_keepalive_threads,
};

/// Interleaved rounds of the wrk rows.
const ROUNDS: u32 = 3;
const KEEPALIVE_WORKERS: usize = 2;
const KEEPALIVE_CONNECTIONS: usize = 64;

/// hello.py on 64 keep-alive connections, 2 workers: ferrocorn against Granian and uWSGI, all
/// three running at once and loaded in turns. After the load, one request is sent on each of 64
/// fresh connections at once and the ones answered within a second are counted: a server that
/// holds one connection per process serves a few and leaves the rest waiting, which wrk's rate
/// does not show.
fn keepalive_hello(env: &Env, duration: Duration) -> Result<Vec<String>> {
    let hello = hello_target(env);
    println!(
        "\n## Keep-alive: examples/hello.py, {KEEPALIVE_WORKERS} workers, \
         {KEEPALIVE_CONNECTIONS} keep-alive connections (wrk), best of {ROUNDS} interleaved \
         rounds in {:.0} s\n",
        duration.as_secs_f64()
    );
    let mut servers = Vec::new();
    let kinds = [
        server("ferrocorn")?,
        &GRANIAN_THREADED,
        &UWSGI_KEEPALIVE,
        &UWSGI_KEEPALIVE_THREADS,
    ];
    for kind in kinds {
        let log_name = format!("{}-keepalive", kind.name.replace([' ', '-'], "_"));
        match start_with(kind, env, &hello, KEEPALIVE_WORKERS, false, &[], &log_name) {
            Ok(running) => servers.push((kind.name.to_string(), running)),
            Err(e) => println!("{}: skipped: {e:#}", kind.name),
        }
    }
    let keepalive = WrkLoad {
        path: hello.path,
        connections: KEEPALIVE_CONNECTIONS,
        headers: &[],
    };
    let best = best_of_rounds(&mut servers, &keepalive, duration);
    println!("| server | best req/s | p50 ms | p99 ms | server CPU µs/request | socket errors c/r/w/t | non-2xx | answered of {KEEPALIVE_CONNECTIONS} at once |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut answered = Vec::new();
    for ((name, running), run) in servers.iter().zip(&best) {
        let within = Duration::from_secs(1);
        let count = answered_at_once(running.addr, hello.path, KEEPALIVE_CONNECTIONS, within)?;
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {count} |",
            run.rps,
            run.p50_ms,
            run.p99_ms,
            cpu_us(run),
            run.errors,
            run.non_2xx
        );
        answered.push(count);
    }
    Ok(keepalive_failures(&servers, &best, &answered))
}

/// The keep-alive row's ratios, and ferrocorn's own failures (errors, connections unanswered).
fn keepalive_failures(
    servers: &[(String, Running)],
    runs: &[WrkRun],
    answered: &[usize],
) -> Vec<String> {
    let answered_all = |name: &str| {
        servers
            .iter()
            .position(|(n, _)| n == name)
            .is_some_and(|i| answered[i] == KEEPALIVE_CONNECTIONS)
    };
    let mut failures = print_checks(&keepalive_checks(servers, runs, answered_all));
    if !answered_all(UWSGI_KEEPALIVE.name) && !answered_all(UWSGI_KEEPALIVE_THREADS.name) {
        failures.push("no uWSGI configuration answered every keep-alive connection".into());
    }
    let ferrocorn = servers.iter().position(|(name, _)| name == "ferrocorn");
    if let Some((run, answered)) = ferrocorn.map(|i| (&runs[i], answered[i])) {
        if run.errors.total() + run.non_2xx > 0 {
            failures.push(format!(
                "ferrocorn keep-alive: socket errors {} (connect/read/write/timeout), {} non-2xx",
                run.errors, run.non_2xx
            ));
        }
        if answered < KEEPALIVE_CONNECTIONS {
            failures.push(format!(
                "ferrocorn answered {answered} of {KEEPALIVE_CONNECTIONS} keep-alive connections at once"
            ));
        }
    }
    failures
}

/// Against Granian, and against each uWSGI configuration. A rate earned on the few connections
/// a server answers, while it leaves the rest waiting, is not a rate for 64 connections: the
/// uWSGI target holds against a configuration that answers all of them.
fn keepalive_checks(
    servers: &[(String, Running)],
    runs: &[WrkRun],
    answered_all: impl Fn(&str) -> bool,
) -> Vec<Check> {
    let rps = |name: &str| run_of(servers, runs, name).map(|r| r.rps);
    let cpu = |name: &str| run_of(servers, runs, name).and_then(|r| r.server_cpu_us);
    let mut checks = vec![
        Check {
            what: "keep-alive req/s ferrocorn/granian".into(),
            ratio: ratio(rps("ferrocorn"), rps("granian")),
            bound: Bound::AtLeast(1.2),
        },
        Check {
            what: "keep-alive server CPU per request ferrocorn/granian".into(),
            ratio: ratio(cpu("ferrocorn"), cpu("granian")),
            bound: Bound::None,
        },
    ];
    for name in [UWSGI_KEEPALIVE.name, UWSGI_KEEPALIVE_THREADS.name] {
        let (what, bound) = if answered_all(name) {
            (
                format!("keep-alive req/s ferrocorn/{name}"),
                Bound::AtLeast(2.0),
            )
        } else {
            (
                format!("keep-alive req/s ferrocorn/{name} (it leaves connections unanswered)"),
                Bound::None,
            )
        };
        let measured = ratio(rps("ferrocorn"), rps(name));
        checks.push(Check {
            what,
            ratio: measured,
            bound,
        });
        checks.push(Check {
            what: format!("keep-alive server CPU per request ferrocorn/{name}"),
            ratio: ratio(cpu("ferrocorn"), cpu(name)),
            bound: Bound::None,
        });
    }
    checks
}

/// Open `connections` keep-alive connections, send one request on each, and count the ones
/// answered within `within`.
fn answered_at_once(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    within: Duration,
) -> Result<usize> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = TcpStream::connect_timeout(&addr, within).context("connecting")?;
        stream.write_all(request.as_bytes())?;
        streams.push(stream);
    }
    let deadline = Instant::now() + within;
    let mut answered = 0;
    let mut buf = [0u8; 1024];
    // Every connection stays open until all are read: a server that serves one connection per
    // process must not get the next one because an earlier one was closed.
    for stream in &mut streams {
        let left = deadline.saturating_duration_since(Instant::now());
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
            answered += 1;
        }
    }
    Ok(answered)
}

/// A server configuration of a row: which server, how many workers, which extra flags.
struct Contender {
    label: &'static str,
    server: &'static str,
    workers: usize,
    args: &'static [&'static str],
    preload: bool,
}

/// 16 slots each: 2 workers × 8 threads, and 16 one-request-at-a-time workers; the threaded
/// ones also with `--preload` (the app loaded once, before the fork), memory's like for like.
const IO_CONTENDERS: [Contender; 5] = [
    Contender {
        label: "ferrocorn -w 2 --threads 8",
        server: "ferrocorn",
        workers: 2,
        args: &["--threads", "8"],
        preload: false,
    },
    Contender {
        label: "gunicorn -k gthread -w 2 --threads 8",
        server: "gunicorn",
        workers: 2,
        args: &["-k", "gthread", "--threads", "8"],
        preload: false,
    },
    Contender {
        label: "gunicorn -w 16 (sync)",
        server: "gunicorn",
        workers: 16,
        args: &[],
        preload: false,
    },
    Contender {
        label: "ferrocorn -w 2 --threads 8 --preload",
        server: "ferrocorn",
        workers: 2,
        args: &["--threads", "8"],
        preload: true,
    },
    Contender {
        label: "gunicorn -k gthread -w 2 --threads 8 --preload",
        server: "gunicorn",
        workers: 2,
        args: &["-k", "gthread", "--threads", "8"],
        preload: true,
    },
];

/// Twice the slots, so every server always has requests waiting.
const IO_CONNECTIONS: usize = 32;

/// What one I/O-bound contender served and weighed.
struct IoRow {
    rps: f64,
    errors: u64,
    total_pss: u64,
}

/// The Django demo's `/pid?sleep=0.05` (a 50 ms wait, as on a database, behind Django's
/// middleware and URL routing) under each contender: throughput and total PSS. The three run
/// at once and are loaded in interleaved rounds (each one's best counts); each is weighed
/// after its last round.
fn io_bound(env: &Env, duration: Duration) -> Result<Vec<String>> {
    let django = Target {
        dir: env.root.join("tests/apps/django_demo"),
        spec: "mysite.wsgi:application",
        path: "/pid?sleep=0.05",
    };
    println!(
        "\n## I/O-bound: Django demo /pid?sleep=0.05 (50 ms wait), 16 slots each, \
         {IO_CONNECTIONS} connections (Connection: close), best of {ROUNDS} interleaved rounds \
         in {:.0} s\n",
        duration.as_secs_f64()
    );
    let mut servers = Vec::new();
    for contender in &IO_CONTENDERS {
        servers.push(start_io(env, &django, contender)?);
    }
    let best = best_io_rounds(&servers, &django, duration);
    println!("| server | best req/s | p50 ms | p99 ms | errors | processes | master PSS MiB | mean worker PSS MiB | total PSS MiB |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rows = Vec::new();
    for ((contender, running), best) in IO_CONTENDERS.iter().zip(&servers).zip(best) {
        rows.push(match (running, best) {
            (Some(running), Some(best)) => Some(weigh_io(contender, running, &best)?),
            _ => None,
        });
    }
    Ok(io_failures(&rows))
}

/// One contender serving the view, or `None` (said) when it does not start.
fn start_io(env: &Env, django: &Target, contender: &Contender) -> Result<Option<Running>> {
    let kind = server(contender.server)?;
    let args: Vec<String> = contender.args.iter().map(|a| a.to_string()).collect();
    let log_name = format!("{}-io", contender.label.replace([' ', '(', ')'], "_"));
    let workers = contender.workers;
    let preload = contender.preload;
    match start_with(kind, env, django, workers, preload, &args, &log_name) {
        Ok(running) => Ok(Some(running)),
        Err(e) => {
            println!("{}: skipped: {e:#}", contender.label);
            Ok(None)
        }
    }
}

/// Each running contender's best of [`ROUNDS`] loads sharing `duration`, in turns, after a
/// second's warm-up each that reaches every worker.
fn best_io_rounds(
    servers: &[Option<Running>],
    django: &Target,
    duration: Duration,
) -> Vec<Option<Load>> {
    let path = django.path;
    for running in servers.iter().flatten() {
        load(running.addr, path, IO_CONNECTIONS, Duration::from_secs(1));
    }
    let mut best: Vec<Option<Load>> = vec![None; servers.len()];
    for r in 0..ROUNDS as usize {
        // Each round starts with another server, so none always follows the same one.
        for i in (0..servers.len()).map(|k| (k + r) % servers.len()) {
            let Some(running) = &servers[i] else { continue };
            let result = load(running.addr, path, IO_CONNECTIONS, duration / ROUNDS);
            if best[i].as_ref().is_none_or(|b| result.rps > b.rps) {
                best[i] = Some(result);
            }
        }
    }
    best
}

/// Weigh the whole process tree, master and workers, the same way for every server; print
/// the contender's row.
fn weigh_io(contender: &Contender, running: &Running, best: &Load) -> Result<IoRow> {
    let tree = ferrocorn_sizing::tree_memory(running.child.id() as i32)?;
    // The root comes first: the master (or the server's only process).
    let master_pss = tree.processes.first().map_or(0, |(_, m)| m.pss);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let workers = tree.processes.len().saturating_sub(1).max(1);
    let worker_pss = (tree.total.pss - master_pss) / workers as u64;
    println!(
        "| {} | {:.0} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} |",
        contender.label,
        best.rps,
        best.p50_ms,
        best.p99_ms,
        best.errors,
        tree.processes.len(),
        mib(master_pss),
        mib(worker_pss),
        mib(tree.total.pss)
    );
    Ok(IoRow {
        rps: best.rps,
        errors: best.errors,
        total_pss: tree.total.pss,
    })
}

/// The I/O row's ratios, in [`IO_CONTENDERS`]' order: ferrocorn, gthread, sync-16, then
/// ferrocorn and gthread with `--preload`.
fn io_failures(rows: &[Option<IoRow>]) -> Vec<String> {
    let [ferrocorn, gthread, sync, ferrocorn_preload, gthread_preload] =
        [0, 1, 2, 3, 4].map(|i| rows[i].as_ref());
    let rps = |row: Option<&IoRow>| row.map(|r| r.rps);
    let pss = |row: Option<&IoRow>| row.map(|r| r.total_pss as f64);
    let mut failures = print_checks(&[
        Check {
            what: "I/O req/s ferrocorn/gthread".into(),
            ratio: ratio(rps(ferrocorn), rps(gthread)),
            bound: Bound::AtLeast(1.0),
        },
        Check {
            what: "I/O req/s ferrocorn/sync-16".into(),
            ratio: ratio(rps(ferrocorn), rps(sync)),
            bound: Bound::AtLeast(1.0),
        },
        Check {
            what: "total PSS ferrocorn/gthread".into(),
            ratio: ratio(pss(ferrocorn), pss(gthread)),
            bound: Bound::AtMost(0.7),
        },
        Check {
            what: "total PSS ferrocorn/sync-16".into(),
            ratio: ratio(pss(ferrocorn), pss(sync)),
            bound: Bound::AtMost(0.25),
        },
        Check {
            what: "total PSS, both --preload: ferrocorn/gthread".into(),
            ratio: ratio(pss(ferrocorn_preload), pss(gthread_preload)),
            bound: Bound::AtMost(0.7),
        },
        Check {
            what: "total PSS ferrocorn --preload/gthread (without)".into(),
            ratio: ratio(pss(ferrocorn_preload), pss(gthread)),
            bound: Bound::None,
        },
    ]);
    if let Some(f) = ferrocorn.filter(|f| f.errors > 0) {
        failures.push(format!("ferrocorn I/O-bound: {} failed requests", f.errors));
    }
    failures
}

const CLOSE_CONNECTIONS: usize = 16;

/// hello.py with `Connection: close` on every request (how nginx talks to an upstream by
/// default), 2 workers: ferrocorn now against the sync-worker-only ferrocorn and gunicorn. The
/// three run at once and take turns, several rounds, each one's best counting.
fn close_hello(env: &Env, duration: Duration) -> Result<Vec<String>> {
    let hello = hello_target(env);
    println!(
        "\n## Connection: close: examples/hello.py, 2 workers, {CLOSE_CONNECTIONS} connections \
         (wrk), best of {ROUNDS} interleaved rounds in {:.0} s\n",
        duration.as_secs_f64()
    );
    let old_label = format!("ferrocorn {SYNC_WORKER_REV} (sync worker)");
    let mut servers = start_close_contenders(env, &hello, &old_label)?;
    let close = WrkLoad {
        path: hello.path,
        connections: CLOSE_CONNECTIONS,
        headers: &["Connection: close"],
    };
    let best = best_of_rounds(&mut servers, &close, duration);
    println!("| server | best req/s | p99 ms | server CPU µs/request | socket errors c/r/w/t | non-2xx |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for ((label, _), run) in servers.iter().zip(&best) {
        println!(
            "| {label} | {:.0} | {:.2} | {} | {} | {} |",
            run.rps,
            run.p99_ms,
            cpu_us(run),
            run.errors,
            run.non_2xx
        );
    }
    let rps = |label: &str| run_of(&servers, &best, label).map(|r| r.rps);
    let cpu = |label: &str| run_of(&servers, &best, label).and_then(|r| r.server_cpu_us);
    Ok(print_checks(&[
        Check {
            what: format!("Connection: close req/s now/{SYNC_WORKER_REV}"),
            ratio: ratio(rps("ferrocorn now"), rps(&old_label)),
            bound: Bound::AtLeast(1.0),
        },
        Check {
            what: format!("Connection: close server CPU per request now/{SYNC_WORKER_REV}"),
            ratio: ratio(cpu("ferrocorn now"), cpu(&old_label)),
            bound: Bound::None,
        },
        Check {
            what: "Connection: close req/s now/gunicorn".into(),
            ratio: ratio(rps("ferrocorn now"), rps("gunicorn")),
            bound: Bound::None,
        },
    ]))
}

/// ferrocorn now, ferrocorn at [`SYNC_WORKER_REV`] (labelled `old_label`, built first) and
/// gunicorn, each serving hello.py with 2 workers; the ones that failed to build or start are
/// reported and left out.
fn start_close_contenders(
    env: &Env,
    hello: &Target,
    old_label: &str,
) -> Result<Vec<(String, Running)>> {
    let baseline = match baseline_ferrocorn(env, SYNC_WORKER_REV) {
        Ok(binary) => Some(Env {
            root: env.root.clone(),
            venv: env.venv.clone(),
            ferrocorn: binary,
        }),
        Err(e) => {
            println!("{old_label}: not built: {e:#}");
            None
        }
    };
    let candidates = [
        ("ferrocorn now", "ferrocorn", Some(env)),
        (old_label, "ferrocorn", baseline.as_ref()),
        ("gunicorn", "gunicorn", Some(env)),
    ];
    let mut servers = Vec::new();
    for (label, name, env) in candidates {
        let Some(env) = env else { continue };
        let log_name = format!("{}-close", label.replace([' ', '(', ')'], "_"));
        match start_with(server(name)?, env, hello, 2, false, &[], &log_name) {
            Ok(running) => servers.push((label.to_string(), running)),
            Err(e) => println!("{label}: skipped: {e:#}"),
        }
    }
    Ok(servers)
}

/// How one wrk load is run on each server of a row.
struct WrkLoad<'a> {
    path: &'a str,
    connections: usize,
    headers: &'a [&'a str],
}

/// Each server's best of [`ROUNDS`] wrk runs sharing `duration`, taken in turns after a
/// second's warm-up each, so a change in the machine's other load hits every server alike. A
/// server wrk fails on (it died, it refuses) is reported and removed from `servers`; the runs
/// returned are those of the servers left, in order.
fn best_of_rounds(
    servers: &mut Vec<(String, Running)>,
    load: &WrkLoad,
    duration: Duration,
) -> Vec<WrkRun> {
    let mut failed: Vec<Option<String>> = vec![None; servers.len()];
    for ((_, running), failed) in servers.iter().zip(failed.iter_mut()) {
        try_wrk(running, load, Duration::from_secs(1), failed);
    }
    let round = (duration / ROUNDS).max(Duration::from_secs(1));
    let mut best: Vec<Option<WrkRun>> = vec![None; servers.len()];
    for r in 0..ROUNDS as usize {
        // Each round starts with another server, so none always follows the same one.
        for i in (0..servers.len()).map(|k| (k + r) % servers.len()) {
            let Some(result) = try_wrk(&servers[i].1, load, round, &mut failed[i]) else {
                continue;
            };
            if best[i].as_ref().is_none_or(|b| result.rps > b.rps) {
                best[i] = Some(result);
            }
        }
    }
    let mut runs = Vec::new();
    let mut kept = Vec::new();
    for ((server, best), failed) in servers.drain(..).zip(best).zip(failed) {
        match (best, failed) {
            (Some(best), None) => {
                runs.push(best);
                kept.push(server);
            }
            (_, why) => println!("{}: left out: {}", server.0, why.unwrap_or_default()),
        }
    }
    *servers = kept;
    runs
}

/// One wrk run unless this server already failed one; a failure is kept in `failed`.
fn try_wrk(
    running: &Running,
    load: &WrkLoad,
    duration: Duration,
    failed: &mut Option<String>,
) -> Option<WrkRun> {
    if failed.is_some() {
        return None;
    }
    let pid = running.child.id() as i32;
    let cpu_before = tree_cpu_seconds(pid);
    let run = wrk::wrk(
        running.addr,
        load.path,
        load.connections,
        duration,
        load.headers,
    );
    let mut run = run.map_err(|e| *failed = Some(format!("{e:#}"))).ok()?;
    if let (Some(before), Some(after)) = (cpu_before, tree_cpu_seconds(pid)) {
        if run.requests > 0 {
            run.server_cpu_us = Some((after - before) * 1e6 / run.requests as f64);
        }
    }
    Some(run)
}

/// CPU seconds (user + system) the server's processes used so far: the master's and every
/// worker's. A worker that exited since the last look takes its time with it, so a round
/// where one was replaced reads low; the bench's servers keep their workers.
fn tree_cpu_seconds(pid: i32) -> Option<f64> {
    let pids = ferrocorn_sizing::process_tree(pid).ok()?;
    Some(
        pids.iter()
            .filter_map(|&p| ferrocorn_sizing::process_cpu_seconds(p).ok())
            .sum(),
    )
}

/// "12.3" µs, or "?" when it could not be read.
fn cpu_us(run: &WrkRun) -> String {
    run.server_cpu_us
        .map_or_else(|| "?".to_string(), |us| format!("{us:.1}"))
}

/// `label`'s result, when it ran.
fn run_of<'a>(
    servers: &[(String, Running)],
    runs: &'a [WrkRun],
    label: &str,
) -> Option<&'a WrkRun> {
    servers
        .iter()
        .zip(runs)
        .find(|((l, _), _)| l == label)
        .map(|(_, run)| run)
}
