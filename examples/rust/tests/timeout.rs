//! `--timeout` for a Rust app stuck in a request: it cannot be interrupted safely, so SIGABRT's
//! default action ends the worker; the log still names the request and the worker is replaced.

use std::io::Write;
use std::path::PathBuf;

use ferrocorn_testkit::*;

/// The example built on `ferrocorn-flags` (`src/bin/rust_hello.rs`).
fn rust_example_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrocorn-rust-hello"))
}

#[test]
fn a_stuck_rust_app_is_killed_by_the_abort_and_the_log_names_its_request() {
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
    // Without a handler, SIGABRT's default action ends the worker at once.
    server.wait_for_log(
        &format!("Worker (pid:{first}) was sent SIGABRT!"),
        BOOT_TIMEOUT,
    );
    let bytes = read_until_closed(&mut conn);
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert_replaced_and_serving(&mut server, first);
}
