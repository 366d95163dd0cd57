//! The pre-fork process model seen from outside: the real binary, real sockets, real signals,
//! worker processes read from /proc.

use std::io::Write;
use std::time::Duration;

use ferrocorn_testkit::*;

fn examples_dir() -> std::path::PathBuf {
    repo_root().join("examples")
}

#[test]
fn wsgi_example_answers_get_and_post_exactly() {
    let mut server = start_hello(&["-w", "2"]);
    server.wait_for_workers(2);
    let addr = server.addr();

    let resp = get(addr, "/");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"Hello, World!\n");
    assert_eq!(resp.header("content-length"), Some("14"));
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(resp.header("date").is_some());
    assert!(resp.header("server").unwrap().starts_with("ferrocorn"));

    let resp = post(addr, "/echo", "application/x-test", b"posted bytes\x00\xff");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"posted bytes\x00\xff");
    assert_eq!(resp.header("content-type"), Some("application/x-test"));
    assert_eq!(resp.header("content-length"), Some("14"));
}

#[test]
fn a_killed_worker_is_replaced_and_requests_keep_succeeding() {
    let mut server = start_hello(&["-w", "2"]);
    let booted = server.wait_for_workers(2);
    let before = server.wait_worker_count(2, BOOT_TIMEOUT);
    assert_eq!(before, {
        let mut b = booted.clone();
        b.sort();
        b
    });

    let victim = before[0];
    signal(victim, libc::SIGKILL);
    server.wait_for_log(
        &format!("Worker (pid:{victim}) was sent SIGKILL"),
        BOOT_TIMEOUT,
    );
    let replacement = server.wait_for_workers(1)[0];
    assert!(!before.contains(&replacement));
    let after = server.wait_worker_count(2, BOOT_TIMEOUT);
    assert!(!after.contains(&victim), "{after:?}");
    assert!(after.contains(&replacement), "{after:?}");

    for _ in 0..10 {
        assert_eq!(get(server.addr(), "/").status, 200);
    }
}

#[test]
fn term_lets_the_request_in_hand_finish_then_everything_exits() {
    let mut server = start_hello(&["-w", "1"]);
    server.wait_for_workers(1);
    let workers = server.wait_worker_count(1, BOOT_TIMEOUT);
    // Make sure the worker has loaded the app, so the slow request is in the app when TERM lands.
    assert_eq!(get(server.addr(), "/").status, 200);

    let addr = server.addr();
    let mut slow = connect(addr);
    slow.write_all(b"GET /sleep?s=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    server.wait_for_log("sleeping", BOOT_TIMEOUT);
    server.signal(libc::SIGTERM);

    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut slow, &mut bytes).unwrap();
    let (resp, _) = parse_response(&bytes, false).expect("a complete response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"slept 1.0s\n");

    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
    for pid in workers {
        assert!(!pid_alive(pid), "worker {pid} outlived the master");
    }
}

#[test]
fn ttin_and_ttou_scale_workers_up_and_down() {
    let mut server = start_hello(&["-w", "2"]);
    server.wait_for_workers(2);
    server.wait_worker_count(2, BOOT_TIMEOUT);

    server.signal(libc::SIGTTIN);
    server.wait_for_workers(1);
    server.wait_worker_count(3, BOOT_TIMEOUT);

    server.signal(libc::SIGTTOU);
    server.wait_worker_count(2, BOOT_TIMEOUT);
    assert_eq!(get(server.addr(), "/").status, 200);
}

#[test]
fn an_app_that_raises_on_import_stops_the_master_with_its_error() {
    let dir = TempDir::new("broken");
    std::fs::write(
        dir.path().join("broken_app.py"),
        "raise RuntimeError('broken_app refuses to import')\napp = None\n",
    )
    .unwrap();
    let dir_arg = dir.str();
    let mut server = Server::spawn(
        &[
            "-b",
            "127.0.0.1:0",
            "-w",
            "3",
            "--chdir",
            dir_arg,
            "broken_app:app",
        ],
        &repo_root(),
        &[],
    );
    let status = server.wait_exit(Duration::from_secs(20));
    let log = server.log_text();
    assert_eq!(status.code(), Some(4), "log:\n{log}");
    assert!(log.contains("broken_app refuses to import"), "log:\n{log}");
    assert!(log.contains("RuntimeError"), "log:\n{log}");
    // gunicorn's closing lines for a failed start, both at ERROR.
    assert!(
        log.contains("[ERROR] Shutting down: Master")
            && log.contains("[ERROR] Reason: App failed to load."),
        "log:\n{log}"
    );
    // Three workers at most were forked: no fork loop.
    let boots = log.matches("Booting worker with pid:").count();
    assert!((1..=3).contains(&boots), "{boots} boots; log:\n{log}");
}

#[test]
fn an_exception_in_a_request_gives_500_and_the_same_worker_serves_on() {
    let mut server = start_hello(&["-w", "1"]);
    server.wait_for_workers(1);
    let before = server.wait_worker_count(1, BOOT_TIMEOUT);

    let resp = get(server.addr(), "/error");
    assert_eq!(resp.status, 500);
    assert_eq!(resp.header("connection"), Some("close"));
    server.wait_for_log("Traceback", BOOT_TIMEOUT);
    server.wait_for_log("RuntimeError", BOOT_TIMEOUT);

    let resp = get(server.addr(), "/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"Hello, World!\n");
    assert_eq!(
        server.worker_pids(),
        before,
        "the worker must not have been replaced"
    );
}

#[test]
fn bad_flags_name_the_problem_and_exit_2() {
    let out = std::process::Command::new(ferrocorn_bin())
        .args(["--workers", "zero", "hello:app"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--workers") && err.contains("zero"), "{err}");

    let out = std::process::Command::new(ferrocorn_bin())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));

    let out = std::process::Command::new(ferrocorn_bin())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("<APP>"));

    let out = std::process::Command::new(ferrocorn_bin())
        .args(["-b", "nonsense:port:x", "hello:app"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense:port:x"));
}

#[test]
fn version_and_help() {
    let out = std::process::Command::new(ferrocorn_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    // Then the embedded Python (see observability.rs).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some(format!("ferrocorn {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    let out = std::process::Command::new(ferrocorn_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--bind",
        "--workers",
        "--timeout",
        "--graceful-timeout",
        "--log-level",
        "--max-requests",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn log_file_receives_the_log_and_python_tracebacks() {
    let log_path = unique_temp_path("log.log");
    let _ = std::fs::remove_file(&log_path);
    let mut server = Server::spawn(
        &[
            "-b",
            "127.0.0.1:0",
            "--chdir",
            "examples",
            "--log-file",
            log_path.to_str().unwrap(),
            "hello:app",
        ],
        &repo_root(),
        &[],
    );
    // Readiness: the log file says where it listens.
    let line = wait_for_file_line(&log_path, "Listening at: http://", BOOT_TIMEOUT);
    let rest = line.split("Listening at: http://").nth(1).unwrap();
    let addr: std::net::SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(get(addr, "/error").status, 500);
    assert_eq!(get(addr, "/").status, 200);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains("Booting worker with pid:"), "{text}");
    assert!(text.contains("Traceback"), "{text}");
    assert!(text.contains("Shutting down: Master"), "{text}");
    let _ = std::fs::remove_file(&log_path);
    let _ = examples_dir();
}

#[test]
fn a_worker_stuck_past_timeout_is_killed_and_replaced() {
    let mut server = start_hello(&["-w", "1", "--timeout", "1"]);
    let first = server.wait_for_workers(1)[0];
    assert_eq!(get(server.addr(), "/").status, 200);

    let mut stuck = connect(server.addr());
    stuck
        .write_all(b"GET /sleep?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    server.wait_for_log(&format!("WORKER TIMEOUT (pid:{first})"), BOOT_TIMEOUT);
    let replacement = server.wait_for_workers(1)[0];
    assert_ne!(replacement, first);
    // The app is interrupted in its sleep, so the stuck request is answered (see timeout.rs).
    let mut bytes = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stuck, &mut bytes);
    assert!(
        bytes.starts_with(b"HTTP/1.1 500 "),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(get(server.addr(), "/").status, 200);
}

#[test]
fn hup_replaces_every_worker() {
    let mut server = start_hello(&["-w", "2"]);
    server.wait_for_workers(2);
    let old = server.wait_worker_count(2, BOOT_TIMEOUT);
    server.signal(libc::SIGHUP);
    let mut new = server.wait_for_workers(2);
    new.sort();
    // The old workers leave in any order; the live workers become exactly the new ones.
    let now = server.wait_until_workers(&new, BOOT_TIMEOUT);
    assert!(
        old.iter().all(|pid| !now.contains(pid)),
        "{old:?} vs {now:?}"
    );
    assert_eq!(get(server.addr(), "/").status, 200);
}

#[test]
fn usr1_reopens_the_log_file_and_pid_file_is_written() {
    let dir = TempDir::new("usr1");
    let log_path = dir.path().join("app.log");
    let pid_path = dir.path().join("app.pid");
    let mut server = Server::spawn(
        &[
            "-b",
            "127.0.0.1:0",
            "--chdir",
            "examples",
            "--log-file",
            log_path.to_str().unwrap(),
            "--pid",
            pid_path.to_str().unwrap(),
            "hello:app",
        ],
        &repo_root(),
        &[],
    );
    let wait_for_file_line = |path: &std::path::Path, needle: &str| {
        wait_for_file_line(path, needle, BOOT_TIMEOUT);
        std::fs::read_to_string(path).unwrap()
    };
    wait_for_file_line(&log_path, "Booting worker with pid:");
    assert_eq!(
        std::fs::read_to_string(&pid_path).unwrap().trim(),
        server.pid().to_string()
    );

    // logrotate: move the file away, then USR1 makes the master write to a fresh file.
    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    server.signal(libc::SIGUSR1);
    wait_for_file_line(&rotated, "Handling signal: usr1");
    // Workers reopen too: an app exception's traceback lands in the new file.
    let addr = {
        let text = std::fs::read_to_string(&rotated).unwrap();
        let rest = text
            .split("Listening at: http://")
            .nth(1)
            .unwrap()
            .to_string();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    wait_for_file_line(&log_path, "Worker reopened its log file");
    assert_eq!(get(addr, "/error").status, 500);
    wait_for_file_line(&log_path, "Traceback (most recent call last)");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let fresh = wait_for_file_line(&log_path, "Shutting down: Master");
    assert!(
        !fresh.contains("Booting worker"),
        "old lines went to the new file: {fresh}"
    );
    assert!(!pid_path.exists(), "the pid file is removed at exit");
}

#[test]
fn serves_on_a_unix_socket_and_removes_it_at_exit() {
    let dir = TempDir::new("unix");
    let sock = dir.path().join("app.sock");
    let bind = format!("unix:{}", sock.display());
    let mut server = Server::spawn(
        &["-b", &bind, "--chdir", "examples", "hello:app"],
        &repo_root(),
        &[],
    );
    server.wait_for_log(&format!("Listening at: {bind}"), BOOT_TIMEOUT);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut bytes).unwrap();
    let (resp, _) = parse_response(&bytes, false).unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"Hello, World!\n"[..])
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        !sock.exists(),
        "the socket file is removed when the master exits"
    );
}
