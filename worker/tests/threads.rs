//! The I/O loop and its app threads: slow clients hold no thread, several threads serve at once,
//! a request stuck past the timeout is interrupted or abandoned while the others finish.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{config, Client, Server};
use ferrocorn_worker::{fn_app, App, AppError, Exit, Interrupter, Request, Response, ThreadApp};

/// The slow reader's response: more than the kernel buffers, less than the output bound.
const BIG: usize = 12 << 20;

fn ok(res: &mut Response<'_>) -> Result<(), AppError> {
    res.text(200, "ok")
}

/// A client whose receive buffer is tiny, so the server's writes back up at once.
fn slow_reader(addr: SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

fn read_all(mut stream: std::net::TcpStream, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    while got.len() < len {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn a_slow_reader_within_the_output_bound_does_not_hold_the_app_thread() {
    let (done_tx, done) = mpsc::channel();
    let app = fn_app(move |req, res| {
        if req.head.path() == "/big" {
            res.respond(200, vec![], &vec![b'x'; BIG])?;
            done_tx.send(()).unwrap();
            return Ok(());
        }
        ok(res)
    });
    // Bigger than what the kernel's socket buffers take on loopback (a few MiB at most).
    let mut cfg = config();
    cfg.output_buffer = 16 << 20;
    let server = Server::start(app, cfg);
    let mut big = slow_reader(server.addr);
    std::io::Write::write_all(&mut big, b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // The app is done with it although the client has read nothing yet...
    done.recv_timeout(Duration::from_secs(10))
        .expect("the app thread is free before the client read the response");
    // ...and the worker's only thread serves someone else meanwhile.
    assert_eq!(
        server
            .connect()
            .request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .text(),
        "ok"
    );
    let got = read_all(big, BIG);
    assert!(
        got.ends_with(&[b'x'; 1024]),
        "the whole body arrived: {} bytes",
        got.len()
    );
    assert!(got.len() >= BIG);
}

#[test]
fn a_small_body_is_read_before_the_app_is_called_and_a_stalled_one_gets_408() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = fn_app(move |req, res| {
        counted.fetch_add(1, Ordering::SeqCst);
        let mut body = Vec::new();
        req.read_body_to_end(&mut body)?;
        res.text(200, format!("{}", body.len()))
    });
    let mut cfg = config();
    cfg.io_timeout = Duration::from_secs(1);
    let server = Server::start(app, cfg);
    let mut stalled = server.connect();
    stalled.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    // The worker's only thread is free for others while the body does not come.
    let r = server
        .connect()
        .request(b"POST /y HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd");
    assert_eq!(r.text(), "4");
    let r = stalled.read_response();
    assert_eq!(r.status, 408);
    assert!(stalled.at_eof());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the app never saw the stalled request"
    );
}

/// Counts requests in flight and remembers the most it saw at once; each request waits until
/// `want` are in flight (or a bound passes).
struct Overlap {
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    want: usize,
}

impl App for Overlap {
    fn call(&mut self, _req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(5); // tidy: not a wait
        while self.most.load(Ordering::SeqCst) < self.want && Instant::now() < until {
            std::thread::yield_now();
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        ok(res)
    }
}

#[test]
fn each_app_thread_serves_a_request_at_the_same_time() {
    let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let apps: Vec<ThreadApp> = (0..4)
        .map(|_| {
            Box::new(Overlap {
                in_flight: Arc::clone(&in_flight),
                most: Arc::clone(&most),
                want: 4,
            }) as ThreadApp
        })
        .collect();
    let server = Server::start_threads(apps, config());
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                Client::connect(addr)
                    .request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .status
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    assert_eq!(most.load(Ordering::SeqCst), 4);
}

/// `/stuck` runs until interrupted (then reports the abort), or until `release` when its
/// interrupter does nothing; anything else answers at once.
struct Stuckable {
    interrupted: Arc<AtomicBool>,
    interruptible: bool,
    release: Arc<AtomicBool>,
}

impl App for Stuckable {
    fn call(&mut self, req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError> {
        if req.head.path() != "/stuck" {
            return ok(res);
        }
        let until = Instant::now() + Duration::from_secs(30); // tidy: not a wait
        while Instant::now() < until {
            if self.interrupted.load(Ordering::SeqCst) && self.interruptible {
                return Err(AppError::Aborted("interrupted".into()));
            }
            if self.release.load(Ordering::SeqCst) {
                return ok(res);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        ok(res)
    }

    fn interrupter(&mut self) -> Option<Interrupter> {
        let flag = Arc::clone(&self.interrupted);
        Some(Box::new(move |_request: &str| {
            flag.store(true, Ordering::SeqCst)
        }))
    }
}

fn stuck_server(interruptible: bool) -> (Server, Arc<AtomicBool>) {
    let release = Arc::new(AtomicBool::new(false));
    let apps: Vec<ThreadApp> = (0..2)
        .map(|_| {
            Box::new(Stuckable {
                interrupted: Arc::new(AtomicBool::new(false)),
                interruptible,
                release: Arc::clone(&release),
            }) as ThreadApp
        })
        .collect();
    let mut cfg = config();
    cfg.timeout = Some(Duration::from_secs(1));
    (Server::start_threads(apps, cfg), release)
}

#[test]
fn a_request_past_the_timeout_is_interrupted_while_the_other_thread_serves() {
    let (server, _release) = stuck_server(true);
    let mut stuck = server.connect();
    stuck.send(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut other = server.connect();
    let r = other.request(b"GET /fine HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    let r = stuck.read_response();
    assert_eq!((r.status, r.header("Connection")), (500, Some("close")));
    // The worker retires: it takes no more requests and returns once the rest is done.
    assert_eq!(server.join().unwrap(), Exit::Aborted);
}

#[test]
fn a_request_that_ignores_the_interrupt_is_abandoned_with_a_500() {
    let (server, release) = stuck_server(false);
    let mut stuck = server.connect();
    stuck.send(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    let started = Instant::now();
    let r = stuck.read_response();
    assert_eq!(r.status, 500);
    assert!(stuck.at_eof());
    // The timeout, then the grace after the interrupt.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The thread comes back late: its response goes nowhere, and the worker ends normally.
    release.store(true, Ordering::SeqCst);
    assert_eq!(server.join().unwrap(), Exit::Aborted);
}
