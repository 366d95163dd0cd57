//! `--timeout` for a Rust app stuck in a request: it cannot be interrupted, so the worker gives
//! up on it (answers 500 itself) and stops to be replaced; the master names the request once and
//! sends no signal, since the worker keeps beating and deals with it.

use std::io::Write;
use std::path::PathBuf;

use ferrocorn_testkit::*;

/// The example built on `ferrocorn-flags` (`src/bin/rust_hello.rs`).
fn rust_example_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrocorn-rust-hello"))
}

#[test]
fn a_stuck_rust_app_is_answered_500_and_the_worker_replaced_without_a_signal() {
    let mut server = Server::start_bin(
        &rust_example_bin(),
        &["-w", "1", "--timeout", "2"],
        &repo_root(),
        &[],
    );
    let first = server.wait_for_workers(1)[0];
    assert_eq!(get(server.addr(), "/").status, 200);
    let mut conn = connect(server.addr());
    conn.write_all(b"GET /sleep?s=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    server.wait_for_log(
        &format!("WORKER TIMEOUT (pid:{first}) serving GET /sleep for "),
        BOOT_TIMEOUT,
    );
    let bytes = read_until_closed(&mut conn);
    let (resp, _) = parse_response(&bytes, false)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(resp.status, 500, "{}", server.log_text());
    assert_eq!(resp.header("connection"), Some("close"));
    assert_replaced_and_serving(&mut server, first);
    let log = server.log_text();
    assert_eq!(server.count_log("WORKER TIMEOUT"), 1, "named once: {log}");
    assert!(!log.contains("SIGABRT"), "{log}");
    assert!(
        !log.contains(&format!("Worker (pid:{first}) was sent")),
        "{log}"
    );
}
