//! `--timeout` for a worker stuck in the app: a Python app interrupted in a sleep answers its
//! client 500 and logs its stack and request; one stuck in C (or a Rust app) cannot be
//! interrupted, so the worker answers 500 for it and exits without it, and the log still names
//! the request. The worker is replaced either way.

use std::io::Write;
use std::net::TcpStream;

use ferrocorn_testkit::*;

/// A WSGI app that gets stuck on request: in `time.sleep` (interruptible: Python's signal
/// handler runs), or in C (a self-deadlocked pthread mutex: the lock call never returns, EINTR
/// or not). It swallows `Exception` around the sleep, as apps do, which must not swallow the abort.
const STUCK_APP: &str = r#"import ctypes
import time


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        environ["wsgi.errors"].write("going to sleep\n")
        try:
            time.sleep(60)  # STUCK HERE
        except Exception:
            pass
    elif path == "/stuck-in-c":
        libc = ctypes.CDLL(None)
        mutex = ctypes.create_string_buffer(64)
        libc.pthread_mutex_lock(mutex)
        environ["wsgi.errors"].write("going into C\n")
        libc.pthread_mutex_lock(mutex)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]
"#;

/// The line of `STUCK_APP` holding `needle`, 1-based, as tracebacks count.
fn line_of(needle: &str) -> usize {
    STUCK_APP.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// Start ferrocorn with `--timeout 2` on the stuck app written to a fresh directory.
fn start_stuck_app(dir: &TempDir, extra: &[&str]) -> Server {
    std::fs::write(dir.path().join("stuck_app.py"), STUCK_APP).unwrap();
    let mut args = vec!["-w", "1", "--timeout", "2", "--chdir", dir.str()];
    args.extend_from_slice(extra);
    args.push("stuck_app:app");
    Server::start(&args)
}

/// Send `GET path` and wait until the app says (on wsgi.errors) it is about to get stuck.
fn stuck_request(server: &mut Server, path: &str, said: &str) -> TcpStream {
    let mut conn = connect(server.addr());
    write!(conn, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    server.wait_for_log(said, BOOT_TIMEOUT);
    conn
}

/// Whether process `pid` has a handler for SIGABRT (its `SigCgt` mask in /proc).
fn catches_sigabrt(pid: i32) -> bool {
    let mask = proc_status(pid, "SigCgt").expect("process alive");
    let mask = u64::from_str_radix(mask.trim(), 16).unwrap();
    mask & (1 << (libc::SIGABRT - 1)) != 0
}

/// The stuck request got gunicorn's 500, with `Connection: close`, and the log holds the
/// traceback (the app's sleeping line) and the request's method and path.
fn assert_sleeping_request_answered(server: &mut Server, dir: &TempDir) -> i32 {
    let first = server.wait_for_workers(1)[0];
    let mut conn = stuck_request(server, "/slow?x=1", "going to sleep");
    server.wait_for_log(
        &format!("WORKER TIMEOUT (pid:{first}) serving GET /slow for "),
        BOOT_TIMEOUT,
    );
    let bytes = read_until_closed(&mut conn);
    let (resp, _) = parse_response(&bytes, false)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(resp.status, 500, "{}", server.log_text());
    assert_eq!(resp.header("connection"), Some("close"));
    server.wait_for_log("aborted after the worker timed out", BOOT_TIMEOUT);
    let replacement = assert_replaced_and_serving(server, first);
    let log = server.log_text();
    assert!(
        log.contains(&format!(
            "[{first}] [ERROR] Worker timed out serving GET /slow"
        )),
        "{log}"
    );
    let frame = format!(
        "File \"{}\", line {} in app",
        dir.path().join("stuck_app.py").display(),
        line_of("STUCK HERE")
    );
    assert!(log.contains(&frame), "no {frame:?} in:\n{log}");
    assert!(log.contains("Current thread 0x"), "{log}");
    assert!(
        log.contains("Request GET /slow?x=1 aborted after the worker timed out"),
        "{log}"
    );
    assert!(
        !log.contains(&format!("Worker (pid:{first}) was sent")),
        "it exited by itself: {log}"
    );
    replacement
}

#[test]
fn a_request_stuck_in_python_past_the_timeout_gets_a_500_and_its_traceback_is_logged() {
    let dir = TempDir::new("timeout-sleep");
    let mut server = start_stuck_app(&dir, &[]);
    assert_sleeping_request_answered(&mut server, &dir);
}

#[test]
fn with_preload_the_worker_still_answers_500_and_logs_the_traceback() {
    let dir = TempDir::new("timeout-preload");
    let mut server = start_stuck_app(&dir, &["--preload"]);
    let worker = assert_sleeping_request_answered(&mut server, &dir);
    // Only workers handle SIGABRT, though the master runs Python too.
    assert!(catches_sigabrt(worker));
    assert!(
        !catches_sigabrt(server.pid()),
        "the master must not own SIGABRT"
    );
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_exit(BOOT_TIMEOUT).success(),
        "{}",
        server.log_text()
    );
}

#[test]
fn a_python_app_stuck_in_c_is_abandoned_with_a_500_and_the_log_names_its_request() {
    let dir = TempDir::new("timeout-c");
    let mut server = start_stuck_app(&dir, &[]);
    let first = server.wait_for_workers(1)[0];
    let mut conn = stuck_request(&mut server, "/stuck-in-c", "going into C");
    server.wait_for_log(
        &format!("WORKER TIMEOUT (pid:{first}) serving GET /stuck-in-c for "),
        BOOT_TIMEOUT,
    );
    let gave_up = server.wait_for_log("did not end 2s after it was interrupted", BOOT_TIMEOUT);
    assert!(gave_up.contains("GET /stuck-in-c"), "{gave_up}");
    let bytes = read_until_closed(&mut conn);
    let (resp, _) = parse_response(&bytes, false)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(resp.status, 500, "{}", server.log_text());
    server.wait_for_log("still stuck in the application", BOOT_TIMEOUT);
    assert_replaced_and_serving(&mut server, first);
    let log = server.log_text();
    assert!(
        !log.contains(&format!("Worker (pid:{first}) was sent")),
        "it exited by itself: {log}"
    );
}
