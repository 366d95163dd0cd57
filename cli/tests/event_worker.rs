//! The event-loop worker seen from outside (issue 12): connections are held by the worker's I/O
//! loop, not by its app thread, so idle keep-alive connections, clients trickling their heads and
//! slow readers never keep others waiting, and no keep-alive connection is closed to make room.
//! The real binary serving `tests/apps/threads_app.py`, raw bytes over loopback.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ferrocorn_testkit::*;

const APP: &str = "threads_app:app";
const GET_KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
const HELLO: &[u8] = b"Hello, World!\n";
/// How long a client that should be served at once may wait: far less than the server's
/// keep-alive and header timeouts in these tests, far more than a loaded machine needs.
const AT_ONCE: Duration = Duration::from_secs(10);

/// `ferrocorn -w 1 ARGS threads_app:app`, its worker booted and the app imported.
fn start_one_worker(args: &[&str]) -> Server {
    let mut all = vec!["-w", "1"];
    all.extend_from_slice(args);
    let mut server = start_test_app(APP, &all);
    server.wait_for_workers(1);
    assert_eq!(get(server.addr(), "/").body, HELLO);
    server
}

/// A client that must be answered within [`AT_ONCE`].
fn impatient_client(addr: SocketAddr) -> Client {
    let stream = connect(addr);
    stream.set_read_timeout(Some(AT_ONCE)).unwrap();
    Client::on(stream)
}

fn assert_hello_kept_alive(resp: &Resp, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {resp:?}");
    assert_eq!(resp.body, HELLO, "{what}: {resp:?}");
    assert_ne!(resp.header("connection"), Some("close"), "{what}: {resp:?}");
}

#[test]
fn two_hundred_idle_keep_alive_connections_neither_wait_nor_keep_a_new_client_waiting() {
    const IDLE: usize = 200;
    let server = start_one_worker(&["--threads", "1", "--keep-alive", "120"]);
    let addr = server.addr();
    assert!(
        get(addr, "/multithread").text().starts_with("False "),
        "one app thread is not multithreaded"
    );
    let mut idle: Vec<Client> = (0..IDLE)
        .map(|i| {
            let mut client = Client::connect(addr);
            assert_hello_kept_alive(&client.request(GET_KEEP_ALIVE), &format!("idle #{i}"));
            client
        })
        .collect();

    let mut fresh = impatient_client(addr);
    let resp = fresh
        .read_after_send(GET_KEEP_ALIVE)
        .unwrap_or_else(|e| panic!("a new client behind {IDLE} idle ones: {e}"));
    assert_hello_kept_alive(&resp, "the new client");
    let closed = idle.iter().filter(|c| peer_closed(&c.stream)).count();
    assert_eq!(
        closed, 0,
        "idle keep-alive connections closed for the new client"
    );

    // All of them send again at once: each gets its next response on the same connection.
    for client in &mut idle {
        client.send(GET_KEEP_ALIVE);
    }
    for (i, client) in idle.iter_mut().enumerate() {
        let resp = client
            .read_response_for(false)
            .unwrap_or_else(|e| panic!("idle #{i}'s second request: {e}"));
        assert_hello_kept_alive(&resp, &format!("idle #{i}, again"));
    }
    assert_hello_kept_alive(&fresh.request(GET_KEEP_ALIVE), "the new client, again");
}

/// An extension for what the tests here need of a client.
trait SendRead {
    /// Send `raw` and read one response, an error (EOF, reset, timeout) as it came.
    fn read_after_send(&mut self, raw: &[u8]) -> io::Result<Resp>;
}

impl SendRead for Client {
    fn read_after_send(&mut self, raw: &[u8]) -> io::Result<Resp> {
        self.stream.write_all(raw)?;
        self.read_response_for(false)
    }
}

// ---- slowloris -------------------------------------------------------------------------------

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after `--header-timeout` a trickling connection may still be open when it is looked
/// at: the attack's own tick, plus room for a loaded machine.
const CUT_SLACK: Duration = Duration::from_secs(8);
const TRICKLERS: usize = 300;
const TRICKLE_EVERY: Duration = Duration::from_millis(500);

/// A head that takes a minute at a byte per half second: never complete within the timeout.
fn trickled_head() -> Vec<u8> {
    format!(
        "GET /?slow HTTP/1.1\r\nHost: test\r\nX-Slow: {}\r\n\r\n",
        "s".repeat(100)
    )
    .into_bytes()
}

/// One attacking connection.
struct Trickler {
    stream: TcpStream,
    connected: Instant,
    sent: usize,
    got: Vec<u8>,
}

/// How the server ended one trickling connection.
#[derive(Debug)]
struct Cut {
    /// From the connection's handshake to when its end was seen.
    after: Duration,
    /// Head bytes sent before.
    sent: usize,
    /// What the server sent before closing.
    got: Vec<u8>,
}

impl Trickler {
    fn connect(addr: SocketAddr) -> Trickler {
        let stream = TcpStream::connect(addr).expect("connect a trickler");
        stream.set_nonblocking(true).unwrap();
        Trickler {
            stream,
            connected: Instant::now(),
            sent: 0,
            got: Vec::new(),
        }
    }

    /// Read what the server sent; true once it closed (EOF or reset).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Send the next byte of the head; false if the connection is gone.
    fn trickle(&mut self, head: &[u8]) -> bool {
        if self.sent >= head.len() {
            return true;
        }
        match self.stream.write(&head[self.sent..=self.sent]) {
            Ok(n) => {
                self.sent += n;
                true
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    fn cut(self) -> Cut {
        Cut {
            after: self.connected.elapsed(),
            sent: self.sent,
            got: self.got,
        }
    }
}

/// [`TRICKLERS`] connections, each sending a byte every [`TRICKLE_EVERY`]; a connection the
/// server ends is noted and replaced, as a slowloris attack does, until `stop`.
fn slowloris(
    addr: SocketAddr,
    stop: &AtomicBool,
    ready: mpsc::Sender<()>,
    cuts: &AtomicUsize,
) -> Vec<Cut> {
    let head = trickled_head();
    let mut conns: Vec<Trickler> = (0..TRICKLERS).map(|_| Trickler::connect(addr)).collect();
    let mut ended = Vec::new();
    let mut first_round = true;
    while !stop.load(Ordering::SeqCst) {
        for conn in &mut conns {
            if conn.closed() || !conn.trickle(&head) {
                let gone = std::mem::replace(conn, Trickler::connect(addr));
                ended.push(gone.cut());
                cuts.fetch_add(1, Ordering::SeqCst);
            }
        }
        if first_round {
            first_round = false;
            let _ = ready.send(());
        }
        // The attack's pace, not a wait for the server.
        std::thread::sleep(TRICKLE_EVERY);
    }
    ended
}

/// How long the normal client may take for all its requests: far more than it needs, a bound
/// on the test when they are held up.
const NORMAL_PATIENCE: Duration = Duration::from_secs(120);

/// Requests, each on a new connection, until `n` were sent and `done` holds (so they go on while
/// the attack's connections are cut and replaced); how many were sent and the failures,
/// described (not being done within [`NORMAL_PATIENCE`] too).
fn normal_requests(addr: SocketAddr, n: usize, done: impl Fn() -> bool) -> (usize, Vec<String>) {
    let deadline = Instant::now() + NORMAL_PATIENCE; // tidy: not a wait (a bound on the load)
    let mut failed = Vec::new();
    let mut sent = 0;
    let mut slowest = Duration::ZERO;
    while sent < n || !done() {
        if Instant::now() > deadline {
            failed.push(format!("not done within {NORMAL_PATIENCE:?} ({sent} sent)"));
            break;
        }
        let at = Instant::now();
        let bytes = raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        );
        slowest = slowest.max(at.elapsed());
        match parse_response(&bytes, false) {
            Some((resp, _)) if resp.status == 200 && resp.body == HELLO => {}
            _ => failed.push(format!(
                "request #{sent}: {:?}",
                String::from_utf8_lossy(&bytes)
            )),
        }
        sent += 1;
    }
    // For the record (the bench compares latencies): what the attack cost the normal client.
    eprintln!("the slowest of {sent} normal requests took {slowest:?}");
    (sent, failed)
}

fn assert_cut_at_the_header_timeout(cuts: &[Cut], head_len: usize) {
    for cut in cuts {
        let text = String::from_utf8_lossy(&cut.got);
        assert!(
            cut.got.is_empty() || text.starts_with("HTTP/1.1 408"),
            "a trickling head got {text:?}"
        );
        assert!(
            cut.sent < head_len,
            "a whole trickled head was taken: {cut:?}"
        );
        // The server's clock starts at its accept, after our handshake: never earlier.
        assert!(
            cut.after >= HEADER_TIMEOUT - Duration::from_millis(100),
            "cut before --header-timeout: {cut:?}"
        );
        assert!(
            cut.after <= HEADER_TIMEOUT + CUT_SLACK,
            "cut long after --header-timeout: {cut:?}"
        );
    }
}

#[test]
fn slowloris_does_not_delay_normal_requests_and_each_trickler_is_cut_at_the_header_timeout() {
    const NORMAL: usize = 1000;
    let server = start_one_worker(&["--header-timeout", "2"]);
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready) = mpsc::channel();
    let attack = {
        let (stop, cuts) = (stop.clone(), cuts.clone());
        std::thread::spawn(move || slowloris(addr, &stop, ready_tx, &cuts))
    };
    ready
        .recv_timeout(BOOT_TIMEOUT)
        .expect("the tricklers connect");
    let started = Instant::now();
    // On until every trickler of the first round was cut (and replaced).
    let (sent, failed) = normal_requests(addr, NORMAL, || cuts.load(Ordering::SeqCst) >= TRICKLERS);
    let normal_took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let ended = attack.join().unwrap();
    eprintln!(
        "{sent} normal requests took {normal_took:?} under {TRICKLERS} tricklers; {} cut",
        ended.len()
    );
    assert!(
        failed.is_empty(),
        "normal requests (of {sent}) failed: {:?}\nlog:\n{}",
        &failed[..failed.len().min(5)],
        server.log_text()
    );
    assert_cut_at_the_header_timeout(&ended, trickled_head().len());
    let with_408 = ended.iter().filter(|c| !c.got.is_empty()).count();
    eprintln!("{with_408} of {} cut tricklers got a 408", ended.len());
}

// ---- slow readers ----------------------------------------------------------------------------

/// The bytes `/big?bytes=N` answers.
fn big_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

/// Ask for `/big?bytes=N` on a connection that absorbs little (about 100 KB in the kernel's
/// buffers, see [`connect_unabsorbing`]) and read only the response head: the app thread has
/// started the response, and what the kernel does not take waits for this client.
fn slow_reader(addr: SocketAddr, n: usize) -> Client {
    let mut client = Client::on(connect_unabsorbing(addr));
    client.send(
        format!("GET /big?bytes={n} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let (status, headers) = client.read_head().expect("the big response's head");
    assert_eq!(status, 200, "{headers:?}");
    client
}

/// The rest of the slow reader's response: exactly the body `/big` sends, then the close.
fn assert_big_body_read_at_last(mut client: Client, n: usize) {
    let body = client.read_exact(n).expect("the whole big body");
    assert!(body == big_body(n), "the big body arrived altered");
    assert!(client.at_eof(), "bytes after the big body");
}

#[test]
fn a_slow_reader_of_a_buffered_response_does_not_hold_the_only_app_thread() {
    // About 100 KB more than the kernel takes, well within the worker's write buffer (~256 KiB).
    const SIZE: usize = 200_000;
    let server = start_one_worker(&["--threads", "1"]);
    let addr = server.addr();
    let reader = slow_reader(addr, SIZE);
    // The rest of its response fits in the write buffer: the only app thread is free.
    let mut other = impatient_client(addr);
    let resp = other
        .read_after_send(GET_KEEP_ALIVE)
        .unwrap_or_else(|e| panic!("a client behind a slow reader of {SIZE} bytes: {e}"));
    assert_hello_kept_alive(&resp, "the other client");
    assert_big_body_read_at_last(reader, SIZE);
}

#[test]
fn with_two_threads_a_slow_reader_of_ten_megabytes_does_not_block_the_worker() {
    const SIZE: usize = 10 << 20;
    let server = start_one_worker(&["--threads", "2"]);
    let addr = server.addr();
    let reader = slow_reader(addr, SIZE);
    let mut other = impatient_client(addr);
    let pid = other
        .request(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
        .text();
    for i in 0..20 {
        let resp = other
            .read_after_send(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap_or_else(|e| panic!("request #{i} beside a slow reader of 10 MB: {e}"));
        assert_eq!((resp.status, resp.text()), (200, pid.clone()), "one worker");
    }
    assert_big_body_read_at_last(reader, SIZE);
}

// ---- accepting ---------------------------------------------------------------------------------

#[test]
fn a_worker_whose_only_thread_is_busy_leaves_new_connections_to_its_idle_sibling() {
    const CLIENTS: usize = 20;
    let mut server = start_test_app(APP, &["-w", "2", "--threads", "1"]);
    server.wait_for_workers(2);
    let addr = server.addr();
    let mut busy = Client::connect(addr);
    busy.send(b"GET /slowish?ms=4000 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let line = server.wait_for_log("slowish 4000 ms in ", BOOT_TIMEOUT);
    let busy_pid = line.rsplit(' ').next().unwrap().to_string();
    // Each on a new connection, while the busy worker's request runs: none may be accepted (and
    // kept waiting) by the busy worker.
    for i in 0..CLIENTS {
        let pid = get(addr, "/pid").text();
        assert_ne!(
            pid.trim(),
            busy_pid,
            "client #{i} was taken by the busy worker"
        );
    }
    let resp = busy.read_response();
    assert_eq!((resp.status, resp.text().trim()), (200, busy_pid.as_str()));
}

/// A kept-alive client sends its next request while the one before is still in the app, many
/// times over. After a response the worker reads a connection again only when bytes may be
/// waiting that no event will report (its poll set watches the connection once the client made
/// it wait): the request sent meanwhile must be reported by the poll, whether the app ran on the
/// I/O thread (`threads` 1: the event is still pending) or on an app thread (the I/O loop saw
/// the event while the connection was away), and be answered at once.
fn each_request_sent_while_the_last_is_in_the_app_is_answered(threads: &str) {
    const ROUNDS: usize = 5;
    let mut server = start_one_worker(&["--threads", threads]);
    let mut client = impatient_client(server.addr());
    for round in 0..ROUNDS {
        client.send(b"GET /slowish?ms=200 HTTP/1.1\r\nHost: test\r\n\r\n");
        server.wait_for_log("slowish 200 ms in ", BOOT_TIMEOUT);
        client.send(GET_KEEP_ALIVE);
        let slow = client.read_response();
        assert_eq!(slow.status, 200, "round {round}: {slow:?}");
        let next = client.read_response_for(false);
        let next =
            next.unwrap_or_else(|e| panic!("round {round}: the request sent meanwhile: {e}"));
        assert_hello_kept_alive(&next, &format!("round {round}, the request sent meanwhile"));
    }
}

#[test]
fn with_the_app_on_the_io_thread_a_request_sent_while_the_last_is_in_the_app_is_answered() {
    each_request_sent_while_the_last_is_in_the_app_is_answered("1");
}

#[test]
fn with_two_threads_a_request_sent_while_the_last_is_in_the_app_is_answered() {
    each_request_sent_while_the_last_is_in_the_app_is_answered("2");
}

// ---- slow bodies -----------------------------------------------------------------------------

#[test]
fn a_small_body_sent_slowly_does_not_hold_the_only_app_thread() {
    let server = start_one_worker(&["--threads", "1"]);
    let addr = server.addr();
    let mut slow = Client::connect(addr);
    slow.send(b"POST /sha256 HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhalf.");
    // The worker reads a small body before it calls the app: the app thread is free meanwhile.
    let mut other = impatient_client(addr);
    let resp = other
        .read_after_send(GET_KEEP_ALIVE)
        .unwrap_or_else(|e| panic!("a client behind a slow 10-byte body: {e}"));
    assert_hello_kept_alive(&resp, "the other client");
    slow.send(b"rest!");
    let resp = slow.read_response();
    let expected = format!("10 {} 1\n", sha256_hex(b"half.rest!"));
    assert_eq!((resp.status, resp.text()), (200, expected));
}

/// The new form of wsgi_e2e's `python_threads_run_while_the_worker_waits_for_a_slow_body`: a
/// 10-byte body is now read before the app is called, so the app only waits in
/// `wsgi.input.read()` for a body too big for the worker to read first.
#[test]
fn python_threads_run_while_an_app_thread_waits_for_a_slow_big_body() {
    const SIZE: usize = 100_000;
    let mut server = start_test_app("ticker:app", &["-w", "1"]);
    server.wait_for_workers(1);
    let mut slow = Client::connect(server.addr());
    slow.send(
        format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\nhalf.")
            .as_bytes(),
    );
    server.wait_for_log("ticker reading the body", BOOT_TIMEOUT);
    // The app now blocks in wsgi.input.read(); the ticker thread must keep going meanwhile.
    let line = server.wait_for_log("ticker tick", BOOT_TIMEOUT);
    let first: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    server.wait_for_log(&format!("ticker tick {}", first + 5), BOOT_TIMEOUT);
    slow.send(&vec![b'x'; SIZE - 5]);
    let resp = slow.read_response();
    assert_eq!((resp.status, resp.text()), (200, format!("read {SIZE}\n")));
}

// ---- keep-alive under load -------------------------------------------------------------------

/// What one keep-alive client saw.
#[derive(Debug, Default)]
struct KeptAlive {
    ok: u64,
    /// Bad responses and failed sends or connects.
    failed: Vec<String>,
    /// Requests sent on a connection the server then closed without answering.
    closed_after_send: u64,
    /// Connections the server closed between requests (seen before sending), or ended with
    /// `Connection: close`.
    closed_between: u64,
}

impl KeptAlive {
    fn add(&mut self, other: KeptAlive) {
        self.ok += other.ok;
        self.failed.extend(other.failed);
        self.closed_after_send += other.closed_after_send;
        self.closed_between += other.closed_between;
    }
}

/// One client sending `GET /` on one keep-alive connection (a new one only if the server ended
/// it) until `until`.
fn keep_alive_client(addr: SocketAddr, until: Instant) -> KeptAlive {
    let mut seen = KeptAlive::default();
    let mut conn: Option<Client> = None;
    while Instant::now() < until {
        if conn.as_ref().is_some_and(|c| peer_closed(&c.stream)) {
            seen.closed_between += 1;
            conn = None;
        }
        let client = conn.get_or_insert_with(|| Client::connect(addr));
        match client.read_after_send(GET_KEEP_ALIVE) {
            Ok(resp) if resp.status == 200 && resp.body == HELLO => {
                seen.ok += 1;
                if resp.header("connection") == Some("close") {
                    seen.closed_between += 1;
                    conn = None;
                }
            }
            Ok(resp) => {
                seen.failed.push(format!("{resp:?}"));
                conn = None;
            }
            Err(e) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) {
                    seen.closed_after_send += 1;
                } else {
                    seen.failed.push(e.to_string());
                }
                conn = None;
            }
        }
    }
    seen
}

#[test]
fn sixteen_keep_alive_clients_on_two_workers_lose_no_request_and_no_connection() {
    const CLIENTS: usize = 16;
    const LOAD_TIME: Duration = Duration::from_secs(5);
    let mut server = start_test_app(APP, &["-w", "2"]);
    server.wait_for_workers(2);
    let addr = server.addr();
    let until = Instant::now() + LOAD_TIME; // tidy: not a wait (how long the load lasts)
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| std::thread::spawn(move || keep_alive_client(addr, until)))
        .collect();
    let mut seen = KeptAlive::default();
    for client in clients {
        seen.add(client.join().unwrap());
    }
    eprintln!(
        "{CLIENTS} keep-alive clients, 2 workers, {LOAD_TIME:?}: {} ok, {} failed, {} closed after \
         a request was sent, {} closed between requests",
        seen.ok,
        seen.failed.len(),
        seen.closed_after_send,
        seen.closed_between
    );
    assert!(
        seen.failed.is_empty(),
        "{:?}\nlog:\n{}",
        &seen.failed[..seen.failed.len().min(5)],
        server.log_text()
    );
    assert_eq!(seen.closed_after_send, 0, "{seen:?}");
    assert_eq!(seen.closed_between, 0, "{seen:?}");
    assert!(seen.ok >= 500, "too little load to tell: {seen:?}");
}
