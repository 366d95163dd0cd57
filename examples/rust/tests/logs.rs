//! The error log file as logrotate meets it: moved away, then SIGUSR1 to the master.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use ferrocorn_testkit::*;

/// The example built on `ferrocorn-flags` (`src/bin/rust_hello.rs`).
fn rust_example_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrocorn-rust-hello"))
}

/// logrotate's sequence with workers running as `nobody`: the master re-creates the file as root,
/// so unless it hands the file over, the workers cannot open it ("Permission denied") and keep
/// writing into the rotated one.
#[test]
#[ignore = "needs root: chown to --user"]
fn after_logrotate_workers_running_as_user_write_to_the_new_log_file() {
    let (uid, gid) = passwd_ids("nobody").expect("a user nobody");
    let dir = TempDir::new("logrotate");
    let log = dir.path().join("error.log");
    let rotated = dir.path().join("error.log.1");
    let bind = format!("127.0.0.1:{}", free_port());
    // The Rust example: `nobody` may not read this machine's Python (it may live under /root).
    // Debug level for the worker's own "worker serving" line: its signal handlers are in place.
    let server = Server::spawn_bin(
        &rust_example_bin(),
        &[
            "-w",
            "2",
            "--user",
            "nobody",
            "-b",
            &bind,
            "--log-level",
            "debug",
            "--log-file",
            log.to_str().unwrap(),
        ],
        &repo_root(),
        &[],
    );
    wait_for_file_line(&log, "Listening at:", BOOT_TIMEOUT);
    let workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    for pid in &workers {
        wait_for_file_line(
            &log,
            &format!("[{pid}] [DEBUG] worker serving"),
            BOOT_TIMEOUT,
        );
    }
    let addr = bind.parse().unwrap();
    assert_eq!(get(addr, "/").status, 200);
    let owner = |path: &std::path::Path| {
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.gid())
    };
    assert_eq!(owner(&log), (uid, gid), "the workers' user owns the log");

    std::fs::rename(&log, &rotated).unwrap();
    server.signal(libc::SIGUSR1);
    for pid in &workers {
        wait_for_file_line(
            &log,
            &format!("[{pid}] [INFO] Worker reopened its log file"),
            BOOT_TIMEOUT,
        );
    }
    assert_eq!(
        owner(&log),
        (uid, gid),
        "the re-created log is handed over too"
    );
    assert_eq!(get(addr, "/").status, 200);
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(!old.contains("Permission denied"), "{old}");
    assert!(
        !old.contains("Worker reopened its log file"),
        "no worker stayed on the rotated file:\n{old}"
    );
    assert_eq!(
        server.worker_pids(),
        workers,
        "the same workers, none restarted"
    );
}

/// The access log, like the error log, belongs to the workers' user: after logrotate moved it
/// and USR1, the master re-creates it, hands it over, and the workers (as `nobody`) write on.
#[test]
#[ignore = "needs root: chown to --user"]
fn after_logrotate_workers_running_as_user_write_to_the_new_access_log() {
    let (uid, gid) = passwd_ids("nobody").expect("a user nobody");
    let dir = TempDir::new("access-logrotate");
    // `nobody` must be able to reach the directory to open the file in it.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let mut server = Server::start_bin(
        &rust_example_bin(),
        &[
            "-w",
            "2",
            "--user",
            "nobody",
            "--access-logfile",
            log.to_str().unwrap(),
        ],
        &repo_root(),
        &[],
    );
    let workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    let addr = server.addr();
    assert_eq!(get(addr, "/").status, 200);
    wait_for_file_line(&log, "\"GET / HTTP/1.1\" 200", BOOT_TIMEOUT);
    let owner = |path: &std::path::Path| {
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.gid())
    };
    assert_eq!(
        owner(&log),
        (uid, gid),
        "the workers' user owns the access log"
    );

    std::fs::rename(&log, &rotated).unwrap();
    server.signal(libc::SIGUSR1);
    let reopened: Vec<String> = (0..2)
        .map(|_| server.wait_for_log("Worker reopened its log file", BOOT_TIMEOUT))
        .collect();
    for pid in &workers {
        assert!(
            reopened.iter().any(|l| l.contains(&format!("[{pid}]"))),
            "{reopened:?}"
        );
    }
    assert_eq!(
        owner(&log),
        (uid, gid),
        "the re-created access log is handed over too"
    );
    for _ in 0..4 {
        assert_eq!(get(addr, "/").status, 200);
    }
    let lines = |path: &std::path::Path| std::fs::read_to_string(path).unwrap().lines().count();
    let _ = poll(BOOT_TIMEOUT, || (lines(&log) >= 4).then_some(()));
    assert_eq!(lines(&log), 4, "every later request in the new file");
    assert_eq!(lines(&rotated), 1, "none in the moved one");
    assert!(
        !server.log_text().contains("Permission denied"),
        "{}",
        server.log_text()
    );
}
