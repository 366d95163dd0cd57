//! Shared test support: a worker loop in a thread on a real TCP listener, a stop trigger, and a raw
//! HTTP/1.1 client that reads responses byte by byte off the socket.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ferrocorn_listener::{bind, BindSpec, ListenOptions, Listener};
use ferrocorn_worker::{fn_app, run_with, App, Control, Exit, WorkerConfig, WorkerState};

/// A stop trigger standing in for the signal handlers: a state plus a socketpair as wake fd.
#[derive(Debug)]
pub struct TestControl {
    state: AtomicU8,
    wake_rx: UnixStream,
    wake_tx: UnixStream,
    /// How many times the worker drained the wake fd, i.e. looked at a new state.
    noticed: Mutex<u64>,
    noticed_changed: Condvar,
}

impl TestControl {
    pub fn new() -> Self {
        let (wake_rx, wake_tx) = UnixStream::pair().unwrap();
        wake_rx.set_nonblocking(true).unwrap();
        TestControl {
            state: AtomicU8::new(0),
            wake_rx,
            wake_tx,
            noticed: Mutex::new(0),
            noticed_changed: Condvar::new(),
        }
    }

    /// [`TestControl::set`], then wait until the worker has drained the wake fd (so it has seen
    /// the new state) or `timeout` passes; false on timeout.
    pub fn set_and_wait_noticed(&self, state: WorkerState, timeout: Duration) -> bool {
        let before = *self.noticed.lock().unwrap();
        self.set(state);
        let guard = self.noticed.lock().unwrap();
        let (_guard, waited) = self
            .noticed_changed
            .wait_timeout_while(guard, timeout, |n| *n == before)
            .unwrap();
        !waited.timed_out()
    }

    /// What a signal handler does: record the state, then make the wake fd readable.
    pub fn set(&self, state: WorkerState) {
        let v = match state {
            WorkerState::Running => 0,
            WorkerState::Stopping => 1,
            WorkerState::Exit => 2,
        };
        self.state.store(v, Ordering::SeqCst);
        (&self.wake_tx).write_all(b"x").unwrap();
    }
}

impl Control for TestControl {
    fn state(&self) -> WorkerState {
        match self.state.load(Ordering::SeqCst) {
            0 => WorkerState::Running,
            1 => WorkerState::Stopping,
            _ => WorkerState::Exit,
        }
    }
    fn wake_fd(&self) -> RawFd {
        self.wake_rx.as_raw_fd()
    }
    fn clear_wake(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
        *self.noticed.lock().unwrap() += 1;
        self.noticed_changed.notify_all();
    }
}

/// An app that reports each call on `entered` and then waits for a `release` before it reads the
/// body and answers `finished BODY`: a request held "in hand" while a test acts.
pub fn gated_app() -> (impl App + Send, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let app = fn_app(move |req, res| {
        // Started before the wait: whether the connection persists must still be decided when
        // the head leaves, after whatever the test did meanwhile.
        res.start(200, "OK", vec![])?;
        entered_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        let mut body = Vec::new();
        req.read_body_to_end(&mut body)?;
        res.write(b"finished ")?;
        res.write(&body)
    });
    (app, entered, release)
}

pub fn tcp_listener() -> (Listener, SocketAddr) {
    let spec = BindSpec::Tcp {
        host: "127.0.0.1".to_string(),
        port: 0,
    };
    let l = bind(&spec, &ListenOptions::default()).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Clients connected to the TCP listener on `addr` and not accepted yet: the accept queue of the
/// listening socket, which /proc/net/tcp shows as its rx_queue.
pub fn accept_queue_len(addr: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = format!(":{:04X}", addr.port());
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // fields: sl, local_address, rem_address, st, tx_queue:rx_queue, ...; 0A is LISTEN.
        if fields.len() > 4 && fields[1].ends_with(&port) && fields[3] == "0A" {
            u32::from_str_radix(fields[4].split(':').nth(1)?, 16).ok()
        } else {
            None
        }
    })
}

/// Wait (polling /proc, up to `timeout`) until no client is queued on `addr`: every connection
/// made so far was accepted by a worker. False on timeout.
pub fn wait_all_accepted(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if accept_queue_len(addr) == Some(0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A worker loop running in a thread.
pub struct Server {
    pub addr: SocketAddr,
    pub control: Arc<TestControl>,
    pub beats: mpsc::Receiver<()>,
    handle: Option<JoinHandle<io::Result<Exit>>>,
}

impl Server {
    pub fn start<A: App + Send + 'static>(app: A, config: WorkerConfig) -> Server {
        let (listener, addr) = tcp_listener();
        Self::start_on(app, config, vec![listener], addr)
    }

    pub fn start_on<A: App + Send + 'static>(
        mut app: A,
        config: WorkerConfig,
        listeners: Vec<Listener>,
        addr: SocketAddr,
    ) -> Server {
        let control = Arc::new(TestControl::new());
        let c = Arc::clone(&control);
        let (beat_tx, beats) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut heartbeat = move || {
                let _ = beat_tx.send(());
            };
            run_with(&mut app, &listeners, &config, &*c, &mut heartbeat)
        });
        Server {
            addr,
            control,
            beats,
            handle: Some(handle),
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Wait for `run` to return.
    pub fn join(mut self) -> io::Result<Exit> {
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("worker thread panicked")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            if !std::thread::panicking() {
                self.control.set(WorkerState::Exit);
                let _ = h.join();
            }
        }
    }
}

pub fn config() -> WorkerConfig {
    WorkerConfig {
        // Generous: tests wait on events, these only bound a broken run.
        io_timeout: Duration::from_secs(10),
        keepalive: Duration::from_secs(10),
        header_timeout: Duration::from_secs(10),
        ..WorkerConfig::default()
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How the body was framed: "length", "chunked", "close" or "none".
    pub framing: &'static str,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client that reads exactly what the server sends.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        // Only a guard against a hung test; every wait below ends on data or a close.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn take_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Read one response head (interim 1xx included), without its body.
    pub fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        let status_line = self.take_line()?;
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.take_line()?;
            if line.is_empty() {
                return Ok((status, headers));
            }
            let (n, v) = line.split_once(':').expect("header line");
            headers.push((n.to_string(), v.trim().to_string()));
        }
    }

    /// Read one complete final response; `head_request` means no body follows whatever it says.
    pub fn read_response_for(&mut self, head_request: bool) -> io::Result<Resp> {
        let (status, headers) = self.read_head()?;
        assert!(status >= 200, "unexpected interim response {status}");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let (body, framing) = if head_request || status == 204 || status == 304 {
            (Vec::new(), "none")
        } else if let Some(len) = get("content-length") {
            (self.take(len.parse().unwrap())?, "length")
        } else if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let size = usize::from_str_radix(self.take_line()?.trim(), 16).unwrap();
                if size == 0 {
                    assert_eq!(self.take_line()?, "", "trailer after last chunk");
                    break;
                }
                body.extend(self.take(size)?);
                assert_eq!(self.take(2)?, b"\r\n");
            }
            (body, "chunked")
        } else {
            while self.fill()? > 0 {}
            (std::mem::take(&mut self.buf), "close")
        };
        Ok(Resp {
            status,
            headers,
            body,
            framing,
        })
    }

    pub fn read_response(&mut self) -> Resp {
        self.read_response_for(false).unwrap()
    }

    /// True once the server has closed: EOF (or a reset) with no bytes left unread.
    pub fn at_eof(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match self.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }

    /// Everything until the server closes, including bytes already buffered.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().unwrap() > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// One request, one response.
    pub fn request(&mut self, raw: &[u8]) -> Resp {
        self.send(raw);
        self.read_response()
    }
}
