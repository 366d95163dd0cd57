//! `--threads` as the master sees it: the scoreboard has a lane per app thread, so `--stats`
//! counts busy threads of all threads and requests waiting in a worker for a free thread, and
//! `--timeout` times out one thread's request while the others serve.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use ferrocorn_testkit::*;

/// The example built on `ferrocorn-flags` (`src/bin/rust_hello.rs`).
fn rust_example_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrocorn-rust-hello"))
}

/// The value of the sample `series` (name and labels, as written) in one scrape of `/metrics`.
fn metric(stats: SocketAddr, series: &str) -> Option<f64> {
    let resp = get(stats, "/metrics");
    assert_eq!(resp.status, 200);
    resp.text().lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// Wait until `series` reads `value`.
fn wait_metric(stats: SocketAddr, series: &str, value: f64) {
    wait_for(&format!("{series} {value}"), BOOT_TIMEOUT, || {
        (metric(stats, series) == Some(value)).then_some(())
    });
}

#[test]
fn with_threads_the_stats_count_busy_threads_and_requests_waiting_for_one() {
    let stats = format!("127.0.0.1:{}", free_port());
    let args = ["-w", "1", "--threads", "2", "--stats", &stats];
    let mut server = Server::start_bin(&rust_example_bin(), &args, &repo_root(), &[]);
    server.wait_for_log("Stats at http://127.0.0.1:", BOOT_TIMEOUT);
    let stats: SocketAddr = stats.parse().unwrap();
    let worker = server.wait_for_workers(1)[0];
    wait_metric(stats, "ferrocorn_threads", 2.0);
    assert_eq!(metric(stats, "ferrocorn_busy_threads"), Some(0.0));
    // A keep-alive client, idle between its requests.
    let mut parked = Client::connect(server.addr());
    assert_eq!(
        parked.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
    let _sleepers: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut conn = connect(server.addr());
            conn.write_all(b"GET /sleep?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            conn
        })
        .collect();
    wait_metric(stats, "ferrocorn_busy_threads", 2.0);
    let per_worker = |name: &str| format!("{name}{{pid=\"{worker}\"}}");
    assert_eq!(
        metric(stats, &per_worker("ferrocorn_worker_busy_threads")),
        Some(2.0)
    );
    assert_eq!(
        metric(stats, &per_worker("ferrocorn_worker_threads")),
        Some(2.0)
    );
    // Both sleepers' heads were handed to threads: none waits (the worker reports the count
    // from its I/O loop, at the latest on its next beat).
    wait_metric(stats, "ferrocorn_waiting_requests", 0.0);
    // Its next request finds both threads taken: it waits in the worker.
    parked.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_metric(stats, "ferrocorn_waiting_requests", 1.0);
    assert_eq!(
        metric(stats, &per_worker("ferrocorn_worker_waiting_requests")),
        Some(1.0)
    );
    assert_eq!(metric(stats, "ferrocorn_busy_threads"), Some(2.0));
}

#[test]
fn with_threads_a_stuck_request_leaves_the_other_thread_serving_until_the_worker_is_replaced() {
    let stats = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start_bin(
        &rust_example_bin(),
        &[
            "-w",
            "1",
            "--threads",
            "2",
            "--timeout",
            "5",
            "--stats",
            &stats,
        ],
        &repo_root(),
        &[],
    );
    server.wait_for_log("Stats at http://127.0.0.1:", BOOT_TIMEOUT);
    let stats: SocketAddr = stats.parse().unwrap();
    let first = server.wait_for_workers(1)[0];
    let mut stuck = connect(server.addr());
    stuck
        .write_all(b"GET /sleep?s=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The other thread of the same worker answers meanwhile.
    let resp = get(server.addr(), "/pid");
    assert_eq!((resp.status, resp.text()), (200, first.to_string()));
    server.wait_for_log(
        &format!("WORKER TIMEOUT (pid:{first}) serving GET /sleep for "),
        BOOT_TIMEOUT,
    );
    let bytes = read_until_closed(&mut stuck);
    assert!(
        bytes.starts_with(b"HTTP/1.1 500 "),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert_replaced_and_serving(&mut server, first);
    let log = server.log_text();
    assert_eq!(server.count_log("WORKER TIMEOUT"), 1, "named once: {log}");
    assert!(!log.contains("SIGABRT"), "{log}");
    // It stopped by itself after the timeout: its exit counts as one.
    wait_metric(
        stats,
        "ferrocorn_worker_exits_total{cause=\"timeout\"}",
        1.0,
    );
}
