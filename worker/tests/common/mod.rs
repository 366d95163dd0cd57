//! Shared test support: a worker loop in a thread on a real TCP listener, a stop trigger, and a raw
//! HTTP/1.1 client that reads responses byte by byte off the socket.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ferrocorn_listener::{bind, BindSpec, ListenOptions, Listener};
use ferrocorn_worker::{
    fn_app, run_with, App, Control, Exit, ThreadApp, WorkerConfig, WorkerState,
};

/// One app thread serving `app`.
pub fn apps<A: App + Send + 'static>(app: A) -> Vec<ThreadApp> {
    vec![Box::new(app)]
}

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

pub use ferrocorn_testkit::Client;

/// Wait (polling /proc, up to `timeout`) until no client is queued on `addr`: every connection
/// made so far was accepted by a worker. False on timeout.
pub fn wait_all_accepted(addr: SocketAddr, timeout: Duration) -> bool {
    ferrocorn_testkit::poll(timeout, || {
        (ferrocorn_testkit::accept_queue_len(addr) == Some(0)).then_some(())
    })
    .is_some()
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
        app: A,
        config: WorkerConfig,
        listeners: Vec<Listener>,
        addr: SocketAddr,
    ) -> Server {
        Self::start_apps(apps(app), config, listeners, addr)
    }

    /// A worker with one app thread per app.
    pub fn start_threads(apps: Vec<ThreadApp>, config: WorkerConfig) -> Server {
        let (listener, addr) = tcp_listener();
        Self::start_apps(apps, config, vec![listener], addr)
    }

    fn start_apps(
        mut apps: Vec<ThreadApp>,
        config: WorkerConfig,
        listeners: Vec<Listener>,
        addr: SocketAddr,
    ) -> Server {
        let control = Arc::new(TestControl::new());
        let c = Arc::clone(&control);
        let (beat_tx, beats) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let heartbeat = move || {
                let _ = beat_tx.send(());
            };
            run_with(&mut apps, &listeners, &config, &*c, &heartbeat)
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
