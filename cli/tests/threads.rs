//! `--threads N` (and gunicorn's `-k gthread`, `threads = N` in gunicorn.conf.py): N app threads
//! per worker run requests at once, each with its own environ and body, and `--timeout` finds a
//! stuck one while the others finish. The real binary serving `tests/apps/threads_app.py`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use ferrocorn_testkit::*;

const APP: &str = "threads_app:app";

/// `ferrocorn -w 1 ARGS threads_app:app`, its worker booted; returns it and the worker's pid
/// (which also means the app was imported).
fn start_one_worker(args: &[&str]) -> (Server, String) {
    let mut all = vec!["-w", "1"];
    all.extend_from_slice(args);
    let mut server = start_test_app(APP, &all);
    server.wait_for_workers(1);
    let pid = get(server.addr(), "/pid");
    assert_eq!(pid.status, 200, "{pid:?}");
    (server, pid.text())
}

/// `n` requests for `/overlap?until=until` sent at once: each answer is "MAX PID", MAX the most
/// requests the app saw in it at once.
fn overlapping_requests(addr: SocketAddr, n: usize, until: usize) -> Vec<(usize, String)> {
    let requests: Vec<JoinHandle<Resp>> = (0..n)
        .map(|_| std::thread::spawn(move || get(addr, &format!("/overlap?until={until}"))))
        .collect();
    requests
        .into_iter()
        .map(|r| {
            let resp = r.join().unwrap();
            assert_eq!(resp.status, 200, "{resp:?}");
            let text = resp.text();
            let (max, pid) = text.trim().split_once(' ').expect("MAX PID");
            (max.parse().unwrap(), format!("{pid}\n"))
        })
        .collect()
}

/// `n` app threads on the one worker `pid`: `n + 2` requests sent at once saw `n` of them in the
/// app together, never more.
fn assert_app_threads(server: &Server, pid: &str, n: usize) {
    let seen = overlapping_requests(server.addr(), n + 2, n);
    for (max, served_by) in &seen {
        assert_eq!(served_by, pid, "all on the one worker");
        assert_eq!(*max, n, "requests in the app at once: {seen:?}");
    }
}

#[test]
fn eight_threads_run_eight_requests_of_one_worker_at_once() {
    let (server, pid) = start_one_worker(&["--threads", "8"]);
    assert_app_threads(&server, &pid, 8);
    let flags = get(server.addr(), "/multithread").text();
    assert!(flags.starts_with("True "), "wsgi.multithread: {flags}");
}

/// Upload `i`'s body: its own bytes and length, a few small enough for the worker to read
/// before the app runs, the others streamed to the app thread.
fn upload_body(i: usize) -> Vec<u8> {
    let len = if i % 2 == 0 {
        1000 * (i + 1)
    } else {
        300_000 + i
    };
    (0..len)
        .map(|j| (j * 7 + i * 31 + (j >> 10)) as u8)
        .collect()
}

#[test]
fn each_of_eight_threads_reads_its_own_upload() {
    const UPLOADS: usize = 8;
    let (server, _) = start_one_worker(&["--threads", "8"]);
    let addr = server.addr();
    let uploads: Vec<JoinHandle<(Vec<u8>, Resp)>> = (0..UPLOADS)
        .map(|i| {
            std::thread::spawn(move || {
                let body = upload_body(i);
                let path = format!("/sha256?until={UPLOADS}");
                let resp = post(addr, &path, "application/octet-stream", &body);
                (body, resp)
            })
        })
        .collect();
    for (i, upload) in uploads.into_iter().enumerate() {
        let (body, resp) = upload.join().unwrap();
        assert_eq!(resp.status, 200, "upload #{i}: {resp:?}");
        let expected = format!("{} {} {UPLOADS}\n", body.len(), sha256_hex(&body));
        assert_eq!(
            resp.text(),
            expected,
            "upload #{i} (length, sha256, at once)"
        );
    }
}

#[test]
fn gunicorns_gthread_worker_class_runs_threads() {
    let (server, pid) = start_one_worker(&["-k", "gthread", "--threads", "2"]);
    assert_app_threads(&server, &pid, 2);
}

#[test]
fn a_config_file_with_threads_and_the_gthread_class_runs_threads() {
    let dir = TempDir::new("threads-config");
    std::fs::copy(
        repo_root().join("tests/apps/threads_app.py"),
        dir.path().join("threads_app.py"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gunicorn.conf.py"),
        "threads = 4\nworker_class = \"gthread\"\nworkers = 1\n",
    )
    .unwrap();
    let mut server = Server::start_in(&[APP], dir.path(), &[]);
    server.wait_for_workers(1);
    let pid = get(server.addr(), "/pid").text();
    assert_app_threads(&server, &pid, 4);
}

// ---- --timeout with threads ------------------------------------------------------------------

/// `--timeout` of these tests: longer than the slow-ish requests, short enough to stay quick.
const TIMEOUT: &str = "3";
/// How long each slow-ish request sleeps in the app, well under [`TIMEOUT`].
const SLOWISH_MS: u64 = 1000;
/// The slow-ish clients beside the stuck request: with it, one per app thread.
const SLOWISH_CLIENTS: usize = 3;

/// One slow-ish request as its client saw it.
#[derive(Debug)]
struct Slowish {
    sent: Instant,
    answered: Instant,
    /// The status and the serving worker's pid, or what went wrong.
    outcome: Result<(u16, String), String>,
}

/// Clients sending slow-ish requests one after another (each on a new connection) until told to
/// stop: at any moment one of each is in the app or about to be.
struct SlowishLoad {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Slowish>>>,
    clients: Vec<JoinHandle<()>>,
}

impl SlowishLoad {
    fn start(addr: SocketAddr) -> SlowishLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..SLOWISH_CLIENTS)
            .map(|_| {
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let one = slowish_request(addr);
                        seen.lock().unwrap().push(one);
                    }
                })
            })
            .collect();
        SlowishLoad {
            stop,
            seen,
            clients,
        }
    }

    /// Wait until some slow-ish request was answered by a worker other than `old`.
    fn wait_served_by_another(&self, old: &str) {
        wait_until("a slow-ish request served by the replacement", || {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .any(|s| matches!(&s.outcome, Ok((200, pid)) if pid != old))
        });
    }

    fn finish(self) -> Vec<Slowish> {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            client.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn slowish_request(addr: SocketAddr) -> Slowish {
    let sent = Instant::now();
    let bytes = raw_exchange(
        addr,
        format!("GET /slowish?ms={SLOWISH_MS} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let outcome = parse_response(&bytes, false)
        .map(|(resp, _)| (resp.status, resp.text()))
        .ok_or_else(|| format!("no response: {:?}", String::from_utf8_lossy(&bytes)));
    Slowish {
        sent,
        answered: Instant::now(),
        outcome,
    }
}

/// The line of threads_app.py holding `needle`, 1-based, as tracebacks count.
fn app_line_of(needle: &str) -> usize {
    let source = std::fs::read_to_string(repo_root().join("tests/apps/threads_app.py")).unwrap();
    source.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// `GET path` gets stuck (the app says `said` first) on a worker with 4 threads and `--timeout`,
/// while slow-ish requests keep the other 3 threads busy: the stuck one gets a 500 and its
/// traceback (the line `stuck_line` marks) is logged, every slow-ish request gets its 200 (those
/// in the app when the 500 went out too), and a new worker serves.
fn stuck_request_among_busy_threads(path: &str, said: &str, stuck_line: &str) {
    let (mut server, first) = start_one_worker(&["--threads", "4", "--timeout", TIMEOUT]);
    let addr = server.addr();
    let mut stuck = connect(addr);
    write!(stuck, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    server.wait_for_log(said, BOOT_TIMEOUT);
    let load = SlowishLoad::start(addr);

    let bytes = read_until_closed(&mut stuck);
    let answered = Instant::now();
    let (resp, _) = parse_response(&bytes, false)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(resp.status, 500, "{}", server.log_text());
    assert_eq!(resp.header("connection"), Some("close"));

    let replacement = server.wait_for_workers(1)[0];
    load.wait_served_by_another(&first);
    let seen = load.finish();
    let log = server.log_text();
    assert_ne!(format!("{replacement}\n"), first);
    assert_eq!(get(addr, "/pid").text(), format!("{replacement}\n"));

    let failed: Vec<&Slowish> = seen
        .iter()
        .filter(|s| !matches!(&s.outcome, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "slow-ish requests failed: {failed:?}\nlog:\n{log}"
    );
    let in_app_meanwhile = seen
        .iter()
        .filter(|s| s.sent < answered && s.answered > answered)
        .filter(|s| matches!(&s.outcome, Ok((200, pid)) if *pid == first))
        .count();
    eprintln!(
        "{} slow-ish requests, {in_app_meanwhile} of them in the old worker when the stuck one \
         got its 500",
        seen.len()
    );
    assert!(
        in_app_meanwhile >= 1,
        "no slow-ish request was in the worker when the stuck one was answered: {seen:?}"
    );

    let worker = first.trim();
    assert!(
        log.contains(&format!(
            "[{worker}] [ERROR] Worker timed out serving GET {path}"
        )),
        "{log}"
    );
    let frame = format!("threads_app.py\", line {} in ", app_line_of(stuck_line));
    assert!(
        log.contains(&frame),
        "no traceback frame {frame:?} in:\n{log}"
    );
}

#[test]
fn with_four_threads_a_request_stuck_in_a_python_loop_times_out_while_the_others_finish() {
    stuck_request_among_busy_threads("/spin", "spinning", "STUCK SPINNING");
}

#[test]
fn with_four_threads_a_request_stuck_in_time_sleep_times_out_while_the_others_finish() {
    stuck_request_among_busy_threads("/sleep", "sleeping", "STUCK SLEEPING");
}

/// A worker whose threads are all busy leaves new clients in the listen queue and sleeps until a
/// thread is free: it does not spin on its poll while they wait (it once did, a core's worth).
#[test]
fn a_worker_with_every_thread_busy_sleeps_while_new_clients_wait() {
    let (server, pid) = start_one_worker(&["--threads", "2"]);
    let worker: i32 = pid.trim().parse().unwrap();
    let addr = server.addr();
    // Two requests hold both threads; two more clients wait in the queue behind them.
    let request = b"GET /slowish?ms=3000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let clients: Vec<JoinHandle<Vec<u8>>> = (0..4)
        .map(|_| std::thread::spawn(move || raw_exchange(addr, request)))
        .collect();
    wait_until("two clients queued behind the busy threads", || {
        accept_queue_len(addr).is_some_and(|n| n >= 2)
    });
    let cpu = || ferrocorn_sizing::process_cpu_seconds(worker).unwrap();
    let (before, since) = (cpu(), Instant::now());
    // An interval to observe, not a readiness wait: the requests in the app last longer.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = cpu() - before;
    let window = since.elapsed().as_secs_f64();
    assert!(
        accept_queue_len(addr).is_some_and(|n| n >= 2),
        "the clients were still queued"
    );
    assert!(
        used < window / 4.0,
        "the worker used {used:.2} s of CPU in {window:.2} s with nothing it could do"
    );
    for client in clients {
        let bytes = client.join().unwrap();
        let (resp, _) = parse_response(&bytes, false).expect("a response");
        assert_eq!(resp.status, 200, "{resp:?}");
    }
}
