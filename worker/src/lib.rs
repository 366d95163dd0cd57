//! The ferrocorn worker: an I/O loop that owns the connections and app threads that call an
//! [`App`]; HTTP/1.1 keep-alive, pipelining, timeouts, `--max-requests`, `--threads`.
//!
//! Knows nothing of Python: the WSGI adapter and Rust apps both implement [`App`] (closures do too,
//! see [`fn_app`]). Every framing decision (request bodies, response heads and bodies, error
//! responses) is `ferrocorn-http`'s; this crate moves the bytes. [`MemoryConn`] runs the real
//! [`Request`] and [`Response`] in memory, for an app's unit tests.
//!
//! The thread that calls [`run`] runs the I/O loop (epoll, through mio): it accepts, reads request
//! heads (and `Content-Length` bodies up to 64 KiB) against `--header-timeout`, parks idle
//! keep-alive connections (up to `--worker-connections`), flushes what a slow reader left unsent,
//! and lingers on closing connections. Each app (one per `--threads`) gets a thread of its own
//! that only ever sees a complete request head: it calls the app, reads a bigger body from the
//! socket itself (`100 Continue` only when the app reads it, a minimum average rate), and writes
//! the response (`sendfile(2)` for files) until the socket is full, then up to 256 KiB more into a
//! buffer the I/O loop sends, so a slow client holds neither a thread nor the worker. A worker
//! accepts only while an app thread is free for the connection, so a busy worker leaves new
//! clients in the listen queue for an idle sibling.
//!
//! A graceful stop (SIGTERM) ends accepting at once (unless the whole server stops: then the
//! connections queued on the listeners are accepted and served first, see
//! [`Monitor::drain_on_stop`]), but every connection already accepted is served: a new one's first
//! request is waited for (up to the header timeout, within the graceful timeout) and answered with
//! `Connection: close`, and an idle keep-alive one is closed unless a request follows its last
//! response at once. A quick stop (SIGINT/SIGQUIT) ends every wait; requests being served finish.
//! A request running past [`WorkerConfig::timeout`] is interrupted ([`App::interrupter`]), then
//! abandoned with a 500 if it does not end; the worker then retires like at `--max-requests`.
#![warn(missing_docs)]

mod app_thread;
mod event;
mod headers;
mod memory;
mod pool;
mod request;
mod response;
mod serve;
mod sock;
mod watchdog;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

pub use ferrocorn_http::{Limits, RequestHead, Version};
pub use ferrocorn_listener::PeerAddr;
pub use ferrocorn_signals::WorkerState;
pub use headers::Headers;
pub use memory::{MemoryConn, Recorded};
pub use request::Request;
pub use response::Response;

/// An application the worker serves. Rust apps implement it directly; `ferrocorn-wsgi` implements it
/// for a Python callable. With `--threads N` the worker calls N of them, one per app thread (see
/// [`run`]).
pub trait App {
    /// Handle one request. Call [`Response::text`] or [`Response::respond`] for a whole response,
    /// or [`Response::start`] then [`Response::write`] (or [`Response::sendfile`]) to stream one. Returning `Err` before the head was sent makes the worker answer 500;
    /// after, it closes the connection. The worker keeps serving either way.
    fn call(&mut self, req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError>;

    /// A value of the request just served that only the app knows, by name (a WSGI app's environ
    /// variable, for the access log's `%({NAME}e)s`). `None` by default.
    fn log_var(&self, _name: &str) -> Option<String> {
        None
    }

    /// Called once on the thread that will call this app, before its first request: how the
    /// worker interrupts a request of this thread that runs past [`WorkerConfig::timeout`] (it
    /// calls the function from another thread with the request's `METHOD path`; the app's call
    /// should then return [`AppError::Aborted`] soon). `None` (the default): such a request is abandoned instead
    /// (the client gets a 500) and the worker exits once its other requests are done.
    fn interrupter(&mut self) -> Option<Interrupter> {
        None
    }
}

/// See [`App::interrupter`].
pub type Interrupter = Box<dyn Fn(&str) + Send + Sync>;

/// An app one of the worker's threads can own.
pub type ThreadApp = Box<dyn App + Send>;

/// What a finished request was, for the access log and metrics: the request head, the response's
/// status, headers and body size, and timing.
pub struct Completed<'a> {
    /// The request's head (method, target, version, headers).
    pub head: &'a RequestHead,
    /// Who sent it.
    pub peer: &'a PeerAddr,
    /// The status sent (`None` when nothing was: the client went away first).
    pub status: Option<u16>,
    /// The app's response headers as it gave them.
    pub response_headers: &'a [(Vec<u8>, Vec<u8>)],
    /// Body bytes sent (without framing).
    pub body_bytes: u64,
    /// Which of the worker's app threads served it (0 to `--threads` - 1).
    pub thread: usize,
    /// Wall-clock time the request head was complete.
    pub started_at: std::time::SystemTime,
    /// From the complete head to the end of the response.
    pub duration: Duration,
    pub(crate) app: &'a dyn App,
}

impl Completed<'_> {
    /// See [`App::log_var`].
    pub fn log_var(&self, name: &str) -> Option<String> {
        self.app.log_var(name)
    }
}

impl std::fmt::Debug for Completed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completed")
            .field("target", &self.head.target())
            .field("status", &self.status)
            .field("body_bytes", &self.body_bytes)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

/// Why an app call failed. The app has already logged details (e.g. a Python traceback), so the
/// worker logs `Failed` only at debug level; `BadResponse` and panics it logs as errors.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The app raised / panicked / returned an error.
    #[error("application error: {0}")]
    Failed(String),
    /// The app produced an invalid response (bad status, bad header, no start).
    #[error("invalid response from application: {0}")]
    BadResponse(String),
    /// Reading the request or writing the response failed (client went away, timeout).
    #[error("connection error: {0}")]
    Io(io::Error),
    /// The app was interrupted because the worker timed out (the arbiter's SIGABRT); the app has
    /// logged where it was. The client gets a 500 and the worker exits ([`Exit::Aborted`]).
    #[error("aborted: {0}")]
    Aborted(String),
}

/// By hand rather than `#[from]`, which would also expose the error as `source()`: the message
/// names it already, and a chain printer (anyhow's `{:#}`) would repeat it.
impl From<io::Error> for AppError {
    fn from(e: io::Error) -> Self {
        AppError::Io(e)
    }
}

/// Where the request arrived, for SERVER_NAME / SERVER_PORT / wsgi.url_scheme.
#[derive(Debug, Clone)]
pub struct ServerAddr {
    /// The listener's host, or a unix socket's path (SERVER_NAME).
    pub name: String,
    /// The listener's port, as text (SERVER_PORT); empty for a unix socket.
    pub port: String,
    /// The URL scheme (wsgi.url_scheme): `http`, as TLS ends at the proxy in front.
    pub scheme: &'static str,
}

/// Worker settings (from the command line).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The `--limit-request-*` sizes and `--header-map`.
    pub limits: Limits,
    /// `--keep-alive`: how long an idle keep-alive connection may wait for its next request
    /// (zero: every response says `Connection: close`).
    pub keepalive: Duration,
    /// `--header-timeout`: the whole request head must arrive within this, counted from the
    /// connection's start or, on a kept-alive connection, from the request's first byte.
    pub header_timeout: Duration,
    /// Longest wait for a single read or write once a request is under way. A request body must
    /// also keep up an average of 1 KiB/s over the time spent waiting for it, after this much
    /// grace, so a body trickled in a byte at a time cannot hold the worker either.
    pub io_timeout: Duration,
    /// `--max-requests` (0 = never): exit after this many requests so the arbiter replaces us.
    pub max_requests: u64,
    /// `--graceful-timeout`: after a graceful stop, the longest the worker waits for the first
    /// request of a connection it has already accepted (the arbiter kills it after this long).
    pub graceful_timeout: Duration,
    /// `Server` header value.
    pub server_header: String,
    /// `--timeout` (`None`: never): a request still running after this long is interrupted (see
    /// [`App::interrupter`]) and the worker exits after its other requests, to be replaced.
    pub timeout: Option<Duration>,
    /// `--worker-connections`: most connections a worker holds at once (serving, reading a head,
    /// or idle between keep-alive requests); beyond it, it accepts no more until one closes.
    pub worker_connections: usize,
    /// Most response bytes kept per connection for a client that reads slowly: up to this, the
    /// app thread goes on (and is free once its response is complete) while the I/O thread sends
    /// them; past it, the app thread waits for the client.
    pub output_buffer: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            limits: Limits::default(),
            keepalive: Duration::from_secs(2),
            header_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            max_requests: 0,
            graceful_timeout: Duration::from_secs(30),
            server_header: concat!("ferrocorn/", env!("CARGO_PKG_VERSION")).to_string(),
            timeout: None,
            worker_connections: 1000,
            output_buffer: 256 * 1024,
        }
    }
}

/// Why the worker loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop: gracefully (SIGTERM, after the request in hand) or at once (SIGINT/SIGQUIT,
    /// between requests).
    Stopped,
    /// Served `max_requests`.
    MaxRequests,
    /// The app was aborted after the worker timed out ([`AppError::Aborted`]); the arbiter is
    /// replacing this worker.
    Aborted,
}

/// What the worker tells the world about its progress (the arbiter's scoreboard, in ferrocorn).
/// It is called from every thread of the worker. Any `Fn() + Sync` is a monitor that only beats.
pub trait Monitor: Sync {
    /// Called at least once a second while the worker runs (also while every app thread is
    /// busy), so a hung worker can be told from a busy one.
    fn beat(&self);
    /// A complete request head arrived and app thread `thread` is about to serve it.
    fn request_started(&self, _thread: usize, _head: &RequestHead) {
        self.beat();
    }
    /// The request app thread `thread` started last is over (answered, failed or abandoned).
    fn request_finished(&self, _thread: usize, _done: &Completed<'_>) {
        self.beat();
    }
    /// How many complete request heads wait for a free app thread (told when it changes): they
    /// wait like connections in a listener's queue.
    fn waiting(&self, _heads: usize) {}
    /// The request app thread `thread` started last was abandoned after the worker timed out
    /// (the thread did not return from the app): it is over for the client, which got a 500,
    /// and the thread may never report it finished.
    fn request_abandoned(&self, _thread: usize) {}
    /// Asked when a graceful stop begins: `true` when the whole server is going away for good
    /// (not this worker being retired while others go on), so the worker serves every connection
    /// still queued on its listeners before exiting, since nobody else would.
    fn drain_on_stop(&self) -> bool {
        false
    }
}

impl<F: Fn() + Sync> Monitor for F {
    fn beat(&self) {
        self()
    }
}

/// Serve until stopped, telling `monitor` of beats and requests (see [`Monitor`]). `apps[0]` is
/// called on this thread, each other app on a thread of its own (`--threads`); connections are
/// handled apart from them, so a slow client never holds an app thread.
///
/// Errors are only those that make the loop itself impossible (the listeners cannot be polled,
/// no app was given); anything going wrong with one connection or one app call is logged and
/// serving goes on.
pub fn run(
    apps: &mut [ThreadApp],
    listeners: &[ferrocorn_listener::Listener],
    config: &WorkerConfig,
    signals: &ferrocorn_signals::WorkerSignals,
    monitor: &dyn Monitor,
) -> io::Result<Exit> {
    run_with(apps, listeners, config, signals, monitor)
}

/// [`run`] with any [`Control`] in place of the process's signal handlers (tests, embedding).
pub fn run_with(
    apps: &mut [ThreadApp],
    listeners: &[ferrocorn_listener::Listener],
    config: &WorkerConfig,
    control: &dyn Control,
    monitor: &dyn Monitor,
) -> io::Result<Exit> {
    if apps.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a worker needs at least one app thread",
        ));
    }
    serve::serve(apps, listeners, config, control, monitor)
}

/// Where the worker loop learns that it should stop. [`ferrocorn_signals::WorkerSignals`] is the
/// real one (SIGTERM → `Stopping`, SIGINT/SIGQUIT → `Exit`).
pub trait Control: Sync {
    /// Whether to keep serving, finish the request in hand and exit, or exit now.
    fn state(&self) -> WorkerState;
    /// Becomes readable when [`Control::state`] may have changed; polled beside the sockets. It
    /// must stay open for as long as the worker loop runs.
    fn wake_fd(&self) -> RawFd;
    /// Drain the wake fd after it was reported readable.
    fn clear_wake(&self);
}

impl Control for ferrocorn_signals::WorkerSignals {
    fn state(&self) -> WorkerState {
        ferrocorn_signals::WorkerSignals::state(self)
    }
    fn wake_fd(&self) -> RawFd {
        ferrocorn_signals::WorkerSignals::wake_fd(self)
    }
    fn clear_wake(&self) {
        ferrocorn_signals::WorkerSignals::clear_wake(self)
    }
}

/// Closures are apps: `fn_app(|req, res| res.text(200, "hi"))`.
impl<F> App for F
where
    F: FnMut(&mut Request<'_>, &mut Response<'_>) -> Result<(), AppError>,
{
    fn call(&mut self, req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError> {
        self(req, res)
    }
}

/// Pins a closure to the [`App`] signature so its argument types need no annotations.
pub fn fn_app<F>(f: F) -> F
where
    F: FnMut(&mut Request<'_>, &mut Response<'_>) -> Result<(), AppError>,
{
    f
}
