//! `--stats`: the master's read-only JSON and Prometheus endpoint, and `ferrocorn top` reading it
//! (`--once`, and live in a real pseudo-terminal).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrocorn_testkit::*;
use serde_json::Value;

/// `/sleep` blocks (until the test's server is killed); `/missing` answers 404; `/exit` ends the
/// worker with code 7, `/exit?N` with code N.
const APP: &str = r#"import os
import time


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(120)
    if path == "/exit":
        os._exit(int(environ.get("QUERY_STRING") or 7))
    status = "404 Not Found" if path == "/missing" else "200 OK"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]
"#;

const DEADLINE: Duration = Duration::from_secs(30);

/// ferrocorn serving [`APP`] with `-w workers` and `--stats unix:DIR/stats.sock`.
fn start(dir: &TempDir, workers: &str, extra: &[&str]) -> (Server, PathBuf) {
    std::fs::write(dir.path().join("stats_app.py"), APP).unwrap();
    let socket = dir.path().join("stats.sock");
    let stats = format!("unix:{}", socket.display());
    let mut args = vec!["-w", workers, "--stats", &stats, "--chdir", dir.str()];
    args.extend_from_slice(extra);
    args.push("stats_app:app");
    let mut server = Server::start(&args);
    server.wait_for_log("Stats at unix:", BOOT_TIMEOUT);
    (server, socket)
}

/// `request` to the stats socket; the whole response, read until the server closes.
fn stats_exchange(socket: &Path, request: &str) -> Resp {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes).unwrap();
    parse_response(&bytes, false)
        .unwrap_or_else(|| panic!("not a response: {:?}", String::from_utf8_lossy(&bytes)))
        .0
}

fn stats_json(socket: &Path) -> Value {
    let resp = stats_exchange(socket, "GET / HTTP/1.1\r\nHost: s\r\n\r\n");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    serde_json::from_slice(&resp.body).expect("JSON")
}

/// Poll the JSON until `ready` holds; panics with the last one on timeout.
fn json_until(socket: &Path, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    poll(DEADLINE, || {
        last = stats_json(socket);
        ready(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("never {what}: {last:#}"))
}

fn workers(json: &Value) -> &Vec<Value> {
    json["workers"].as_array().expect("workers array")
}

fn all_idle(json: &Value, n: usize) -> bool {
    workers(json).len() == n && workers(json).iter().all(|w| w["state"] == "idle")
}

#[test]
fn after_n_requests_the_counts_are_n_and_a_sleeping_request_shows_busy_with_its_path() {
    let dir = TempDir::new("stats-counts");
    let (server, socket) = start(&dir, "2", &[]);
    json_until(&socket, "two idle workers", |j| all_idle(j, 2));
    for _ in 0..7 {
        assert_eq!(get(server.addr(), "/").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(server.addr(), "/missing").status, 404);
    }
    // A worker counts a request just after its response left: wait for the last one.
    let json = json_until(&socket, "10 requests counted", |j| {
        j["totals"]["requests"].as_u64() >= Some(10)
    });
    assert_eq!(json["totals"]["requests"], 10, "{json:#}");
    let responses = &json["totals"]["responses"];
    assert_eq!(
        (&responses["2xx"], &responses["4xx"], &responses["5xx"]),
        (&Value::from(7), &Value::from(3), &Value::from(0)),
        "{json:#}"
    );
    let per_worker: u64 = workers(&json)
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_worker, 10);
    assert_eq!(json["master"]["pid"], server.pid());
    assert_eq!(json["master"]["workers_target"], 2);

    let mut sleeper = connect(server.addr());
    write!(sleeper, "GET /sleep?x=1 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // The worker reports heads waiting for its thread from its I/O loop: the sleeper's head
    // counts until the loop next looks (at the latest on its next beat).
    let json = json_until(&socket, "a busy worker, nothing waiting", |j| {
        workers(j).iter().any(|w| w["state"] == "busy") && j["totals"]["waiting_requests"] == 0
    });
    let busy: Vec<&Value> = workers(&json)
        .iter()
        .filter(|w| w["state"] == "busy")
        .collect();
    assert_eq!(busy.len(), 1, "{json:#}");
    let current = &busy[0]["current_request"];
    assert_eq!(
        (&current["method"], &current["path"]),
        (&Value::from("GET"), &Value::from("/sleep")),
        "{json:#}"
    );
    assert!(current["seconds"].as_f64().unwrap() >= 0.0);
    // One app thread each (the default --threads 1): the busy worker's one thread is busy.
    assert_eq!(
        (
            &busy[0]["threads"],
            &busy[0]["busy_threads"],
            &busy[0]["waiting_requests"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(0)),
        "{json:#}"
    );
    let threads = busy[0]["current_requests"].as_array().unwrap();
    assert_eq!(threads.len(), 1, "{json:#}");
    assert_eq!(
        (&threads[0]["thread"], &threads[0]["path"]),
        (&Value::from(0), &Value::from("/sleep"))
    );
    let totals = &json["totals"];
    assert_eq!(
        (
            &totals["threads"],
            &totals["busy_threads"],
            &totals["waiting_requests"]
        ),
        (&Value::from(2), &Value::from(1), &Value::from(0)),
        "{json:#}"
    );
    let idle = workers(&json)
        .iter()
        .find(|w| w["state"] == "idle")
        .unwrap();
    assert_eq!(idle["current_request"], Value::Null);
    assert_eq!(idle["busy_threads"], 0);
    assert_eq!(idle["current_requests"], Value::Array(vec![]));
}

/// `Pss` and `Private_*` of `pid` in bytes, as /proc says now.
fn proc_pss_uss(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kib = |field: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {field} in {text}"))
            * 1024
    };
    (kib("Pss:"), kib("Private_Clean:") + kib("Private_Dirty:"))
}

/// /proc's (PSS, USS) of idle worker `pid`, read between two stats readings that agree, and the
/// second reading. The worker holds still, but its PSS moves whenever the master writes to a
/// page they share (building a stats answer does), so a reading is taken once that settled.
fn settled_memory(socket: &Path, pid: i32) -> ((u64, u64), Value) {
    let find = |json: &Value| {
        workers(json)
            .iter()
            .find(|w| w["pid"] == pid)
            .cloned()
            .unwrap()
    };
    let mut before = find(&stats_json(socket));
    for _ in 0..20 {
        let proc = proc_pss_uss(pid);
        let after = find(&stats_json(socket));
        if after["pss_bytes"] == before["pss_bytes"] && after["uss_bytes"] == before["uss_bytes"] {
            return (proc, after);
        }
        before = after;
    }
    panic!("the memory of {pid} never settled: {before:#}");
}

#[test]
fn worker_memory_and_cpu_agree_with_proc() {
    let dir = TempDir::new("stats-memory");
    let (_server, socket) = start(&dir, "2", &[]);
    let json = json_until(&socket, "two idle workers", |j| all_idle(j, 2));
    let page = 4096;
    for w in workers(&json) {
        let pid = w["pid"].as_i64().unwrap() as i32;
        let ((pss, uss), w) = settled_memory(&socket, pid);
        let (stats_pss, stats_uss) = (
            w["pss_bytes"].as_u64().unwrap(),
            w["uss_bytes"].as_u64().unwrap(),
        );
        assert!(
            stats_pss.abs_diff(pss) <= 2 * page,
            "pid {pid}: PSS {stats_pss} vs /proc {pss}"
        );
        assert!(
            stats_uss.abs_diff(uss) <= 2 * page,
            "pid {pid}: USS {stats_uss} vs /proc {uss}"
        );
        assert!(w["rss_bytes"].as_u64().unwrap() >= stats_pss);
        assert!(
            w["cpu_seconds"].as_f64().unwrap() > 0.0,
            "loading Python took some CPU"
        );
        assert_eq!(w["predecessor_exit"], Value::Null);
    }
    let used = json["memory"]["used_pss_bytes"].as_u64().unwrap();
    assert!(used > 0 && json["memory"]["budget_bytes"].as_u64().unwrap() > used);
    assert!(
        json["recommendation"]["workers"].as_u64().unwrap() >= 1,
        "{json:#}"
    );
}

#[test]
fn a_crashed_worker_is_counted_and_its_replacement_names_why() {
    let dir = TempDir::new("stats-exits");
    let (server, socket) = start(&dir, "1", &[]);
    let json = json_until(&socket, "one idle worker", |j| all_idle(j, 1));
    let first = workers(&json)[0]["pid"].clone();
    let _ = raw_exchange(server.addr(), b"GET /exit HTTP/1.1\r\nHost: t\r\n\r\n");
    let json = json_until(&socket, "a replacement", |j| {
        workers(j).len() == 1 && workers(j)[0]["pid"] != first
    });
    assert_eq!(json["totals"]["worker_exits"]["crash"], 1, "{json:#}");
    assert_eq!(workers(&json)[0]["predecessor_exit"], "crash");
    drop(server);
}

/// Exit codes 3 and 4 mean "could not boot" and "could not load the app" (gunicorn's), but an
/// app that exits with them while serving had booted: a crash, not a boot failure.
#[test]
fn a_booted_worker_exiting_with_a_boot_error_code_is_a_crash() {
    let dir = TempDir::new("stats-exit-codes");
    let (mut server, socket) = start(&dir, "1", &[]);
    for code in ["3", "4"] {
        let json = json_until(&socket, "one idle worker", |j| all_idle(j, 1));
        let pid = workers(&json)[0]["pid"].clone();
        let request = format!("GET /exit?{code} HTTP/1.1\r\nHost: t\r\n\r\n");
        let _ = raw_exchange(server.addr(), request.as_bytes());
        server.wait_for_log(&format!("exited with code {code}."), DEADLINE);
        json_until(&socket, "a replacement", |j| {
            workers(j).len() == 1 && workers(j)[0]["pid"] != pid
        });
    }
    let json = json_until(&socket, "one idle worker", |j| all_idle(j, 1));
    assert_eq!(json["totals"]["worker_exits"]["crash"], 2, "{json:#}");
    assert_eq!(
        json["totals"]["worker_exits"]["boot_failure"], 0,
        "{json:#}"
    );
    assert_eq!(workers(&json)[0]["predecessor_exit"], "crash");
    assert_eq!(get(server.addr(), "/").status, 200);
    let log = server.log_text();
    assert!(!log.contains("could not load the app"), "{log}");
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_the_json() {
    let dir = TempDir::new("stats-metrics");
    let port = free_port();
    std::fs::write(dir.path().join("stats_app.py"), APP).unwrap();
    let stats = format!("127.0.0.1:{port}");
    let mut server = Server::start(&[
        "-w",
        "2",
        "--stats",
        &stats,
        "--chdir",
        dir.str(),
        "stats_app:app",
    ]);
    server.wait_for_log("Stats at http://127.0.0.1:", BOOT_TIMEOUT);
    let stats_addr = stats.parse().unwrap();
    for _ in 0..4 {
        get(server.addr(), "/");
    }
    let scrape = wait_for("requests_total 4", DEADLINE, || {
        let resp = get(stats_addr, "/metrics");
        assert_eq!(resp.status, 200);
        assert!(resp
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"));
        let lines = resp
            .text()
            .lines()
            .map(|l| Ok(l.to_string()))
            .collect::<Vec<_>>();
        let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("Prometheus text");
        (sample(&scrape, "ferrocorn_requests_total", None) == Some(4.0)).then_some(scrape)
    });
    assert!(scrape
        .samples
        .iter()
        .all(|s| s.metric.starts_with("ferrocorn_")));
    assert_eq!(sample(&scrape, "ferrocorn_workers", None), Some(2.0));
    assert_eq!(sample(&scrape, "ferrocorn_threads", None), Some(2.0));
    assert_eq!(sample(&scrape, "ferrocorn_busy_threads", None), Some(0.0));
    // Present; its value is checked where requests are made to wait (examples/rust/tests).
    assert!(sample(&scrape, "ferrocorn_waiting_requests", None).is_some());
    let per_worker_threads = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ferrocorn_worker_threads")
        .count();
    assert_eq!(per_worker_threads, 2, "one thread count per worker");
    assert_eq!(
        sample(&scrape, "ferrocorn_responses_total", Some(("class", "2xx"))),
        Some(4.0)
    );
    let uss = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ferrocorn_worker_uss_bytes")
        .count();
    assert_eq!(uss, 2, "one USS per worker");
    let limit = sample(
        &scrape,
        "ferrocorn_listener_accept_queue_limit",
        Some(("listener", &format!("http://{}", server.addr()))),
    );
    assert_eq!(limit, Some(2048.0), "the default --backlog");
    // Read-only: other methods and paths are refused.
    let post = request(
        stats_addr,
        b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
    assert_eq!(get(stats_addr, "/nope").status, 404);
}

fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<f64> {
    use prometheus_parse::Value as V;
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))?;
    match s.value {
        V::Counter(v) | V::Gauge(v) | V::Untyped(v) => Some(v),
        _ => None,
    }
}

#[test]
fn a_stalled_stats_client_does_not_stop_the_master() {
    let dir = TempDir::new("stats-stall");
    let (server, socket) = start(&dir, "1", &[]);
    // Half a request head, never finished: the master must serve others meanwhile.
    let mut stalled = UnixStream::connect(&socket).unwrap();
    stalled.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    json_until(&socket, "one idle worker", |j| all_idle(j, 1));
    signal(server.pid(), libc::SIGTTIN);
    json_until(&socket, "two idle workers after TTIN", |j| all_idle(j, 2));
    // Dropped after its time (5 s): the read ends.
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        stalled.read_to_end(&mut rest).unwrap(),
        0,
        "closed without an answer"
    );
    // The stats socket's file goes with the server.
    let mut server = server;
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
    assert!(!socket.exists(), "{} left behind", socket.display());
}

fn ferrocorn_top(args: &[&str]) -> std::process::Output {
    std::process::Command::new(ferrocorn_bin())
        .arg("top")
        .args(args)
        .output()
        .unwrap()
}

/// Lines of `text` that start with one of `pids`.
fn rows_for(text: &str, pids: &[i64]) -> usize {
    text.lines()
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            pids.iter().any(|p| first == p.to_string())
        })
        .count()
}

fn pids(json: &Value) -> Vec<i64> {
    workers(json)
        .iter()
        .map(|w| w["pid"].as_i64().unwrap())
        .collect()
}

#[test]
fn top_once_prints_one_row_per_worker_from_stats_or_proc() {
    let dir = TempDir::new("top-once");
    let pidfile = dir.path().join("master.pid");
    let (server, socket) = start(&dir, "3", &["-p", pidfile.to_str().unwrap()]);
    let json = json_until(&socket, "three idle workers", |j| all_idle(j, 3));
    let stats = format!("unix:{}", socket.display());
    let out = ferrocorn_top(&["--stats", &stats, "--once"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert_eq!(rows_for(&text, &pids(&json)), 3, "{text}");
    assert!(text.contains(&format!("master {}", server.pid())), "{text}");
    assert!(
        text.contains("PID") && text.contains("USS") && text.contains("idle"),
        "{text}"
    );
    assert!(text.contains("recommended workers"), "{text}");
    // No stats address: the pid file's master and /proc.
    let out = ferrocorn_top(&["--pid", pidfile.to_str().unwrap(), "--once"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert_eq!(rows_for(&text, &pids(&json)), 3, "{text}");
    // Neither: a clear error.
    let out = ferrocorn_top(&["--once"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stats ADDRESS or --pid PIDFILE"));
}

/// `ferrocorn top` in a pseudo-terminal, its screen kept by a terminal emulator.
struct Tty {
    screen: Arc<Mutex<vt100::Parser>>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
}

impl Tty {
    fn spawn(args: &[&str]) -> Tty {
        use portable_pty::{native_pty_system, CommandBuilder, PtySize};
        let size = PtySize {
            rows: 30,
            cols: 120,
            pixel_width: 0,
            pixel_height: 0,
        };
        let pair = native_pty_system().openpty(size).unwrap();
        let mut cmd = CommandBuilder::new(ferrocorn_bin());
        cmd.arg("top");
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(30, 120, 0)));
        let mut reader = pair.master.try_clone_reader().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().process(&buf[..n]);
            }
        });
        let writer = pair.master.take_writer().unwrap();
        // The master end must stay open while the child runs: keep it with the writer's owner.
        std::mem::forget(pair.master);
        Tty {
            screen,
            writer,
            child,
        }
    }

    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        poll(DEADLINE, || {
            let text = self.text();
            ready(&text).then_some(text)
        })
        .unwrap_or_else(|| panic!("screen never showed {what}:\n{}", self.text()))
    }

    fn press(&mut self, key: &str) {
        self.writer.write_all(key.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn top_in_a_terminal_shows_a_row_per_worker_and_plus_adds_one() {
    let dir = TempDir::new("top-live");
    let (server, socket) = start(&dir, "2", &[]);
    let json = json_until(&socket, "two idle workers", |j| all_idle(j, 2));
    let stats = format!("unix:{}", socket.display());
    let mut tty = Tty::spawn(&["--stats", &stats, "--interval", "0.2"]);
    let first = pids(&json);
    tty.wait_for("two worker rows", |t| rows_for(t, &first) == 2);
    tty.press("+");
    let json = json_until(&socket, "a third worker", |j| workers(j).len() == 3);
    let all = pids(&json);
    let text = tty.wait_for("three worker rows", |t| rows_for(t, &all) == 3);
    assert!(text.contains(&format!("master {}", server.pid())), "{text}");
    tty.press("q");
    let status = poll(DEADLINE, || tty.child.try_wait().unwrap())
        .unwrap_or_else(|| panic!("q did not quit:\n{}", tty.text()));
    assert!(status.success());
}

#[test]
fn after_usr2_the_new_master_takes_the_stats_over_once_the_old_one_exits() {
    let dir = TempDir::new("stats-usr2");
    let (mut server, socket) = start(&dir, "1", &[]);
    json_until(&socket, "one idle worker", |j| all_idle(j, 1));
    let new_master = server.reexec();
    let _cleanup = KillOnDrop(new_master);
    server.wait_for_log("no stats in this re-executed master", BOOT_TIMEOUT);
    // Meanwhile the old master still answers.
    assert_eq!(stats_json(&socket)["master"]["pid"], server.pid());
    server.signal(libc::SIGTERM);
    server.wait_for_log("Master has been promoted.", BOOT_TIMEOUT);
    server.wait_for_log("Stats at unix:", BOOT_TIMEOUT);
    let json = json_until(&socket, "the new master's worker", |j| all_idle(j, 1));
    assert_eq!(json["master"]["pid"], new_master);
}

/// With `--threads 2` on one worker: two sleeping requests take both threads; a keep-alive
/// client's next request then waits in the worker for a thread. The JSON, /metrics and `top` say
/// so.
#[test]
fn with_threads_busy_threads_of_all_and_requests_waiting_for_one_are_shown() {
    let dir = TempDir::new("stats-threads");
    let (server, socket) = start(&dir, "1", &["--threads", "2"]);
    json_until(&socket, "one idle worker", |j| all_idle(j, 1));
    let mut parked = Client::connect(server.addr());
    let first = parked.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(first.status, 200);
    let sleepers: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut conn = connect(server.addr());
            write!(conn, "GET /sleep?n={i} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            conn
        })
        .collect();
    // Both with a sleeper: the first request's thread may still be finishing it.
    let json = json_until(&socket, "both threads busy sleeping", |j| {
        let w = &workers(j)[0];
        w["busy_threads"] == 2
            && w["current_requests"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["path"] == "/sleep"))
    });
    let worker = &workers(&json)[0];
    assert_eq!(
        (&worker["threads"], &worker["state"]),
        (&Value::from(2), &Value::from("busy"))
    );
    let mut threads: Vec<u64> = worker["current_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["path"], "/sleep", "{json:#}");
            r["thread"].as_u64().unwrap()
        })
        .collect();
    threads.sort();
    assert_eq!(threads, [0, 1], "{json:#}");
    // The parked connection's next request has no thread to go to.
    parked.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let json = json_until(&socket, "a request waiting for a thread", |j| {
        j["totals"]["waiting_requests"] == 1
    });
    assert_eq!(workers(&json)[0]["waiting_requests"], 1, "{json:#}");
    assert_eq!(json["totals"]["busy_threads"], 2, "{json:#}");
    assert_eq!(json["totals"]["threads"], 2, "{json:#}");
    let stats = format!("unix:{}", socket.display());
    let out = ferrocorn_top(&["--stats", &stats, "--once"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("busy 2 of 2 threads  waiting 1"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&workers(&json)[0]["pid"].to_string()))
        .unwrap_or_else(|| panic!("no row: {text}"));
    assert!(row.contains(" 2/2 "), "{row}");
    let metrics = stats_exchange(&socket, "GET /metrics HTTP/1.1\r\nHost: s\r\n\r\n").text();
    assert!(
        metrics.lines().any(|l| l == "ferrocorn_busy_threads 2"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "ferrocorn_waiting_requests 1"),
        "{metrics}"
    );
    drop(sleepers);
    drop(server);
}
