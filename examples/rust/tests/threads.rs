//! `--threads` as the master sees it: the scoreboard has a lane per app thread, so `--stats`
//! counts busy threads of all threads, and requests waiting in a worker for a free thread.

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
