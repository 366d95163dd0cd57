//! The ferrocorn sync worker: accept a connection, read requests through `ferrocorn-http`, hand each
//! to an [`App`], write the response; keep-alive, pipelining, timeouts, `--max-requests`.
//!
//! Knows nothing of Python: the WSGI adapter and Rust apps both implement [`App`].
//!
//! INTERFACE STUB — the worker helper owns this crate and replaces the `todo!()`s. Keep the public
//! names and signatures (adding is fine).

use std::fs::File;
use std::io;
use std::time::Duration;

pub use ferrocorn_http::{Limits, RequestHead, Version};
pub use ferrocorn_listener::PeerAddr;

/// An application the worker serves. Rust apps implement it directly; `ferrocorn-wsgi` implements it
/// for a Python callable.
pub trait App {
    /// Handle one request. Call [`Response::start`] then [`Response::write`] (or
    /// [`Response::sendfile`]). Returning `Err` before the head was sent makes the worker answer 500;
    /// after, it closes the connection. The worker keeps serving either way.
    fn call(&mut self, req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError>;
}

/// Why an app call failed. The app has already logged details (e.g. a Python traceback).
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
    Io(#[from] io::Error),
}

/// Where the request arrived, for SERVER_NAME / SERVER_PORT / wsgi.url_scheme.
#[derive(Debug, Clone)]
pub struct ServerAddr {
    pub name: String,
    pub port: String,
    pub scheme: &'static str,
}

/// One request as the app sees it. The body is read on demand (sending `100 Continue` first if the
/// client asked for it) and never past its end.
#[derive(Debug)]
pub struct Request<'a> {
    pub head: &'a RequestHead,
    pub peer: &'a PeerAddr,
    pub server: &'a ServerAddr,
    _todo: std::marker::PhantomData<&'a mut ()>,
}

impl Request<'_> {
    /// Read body bytes; `Ok(0)` at the end of the body. A body cut short by the client is an error.
    pub fn read_body(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        todo!()
    }
}

impl io::Read for Request<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_body(buf)
    }
}

/// The response being written. The head is sent with the first non-empty body write (or at the end).
#[derive(Debug)]
pub struct Response<'a> {
    _todo: std::marker::PhantomData<&'a mut ()>,
}

impl Response<'_> {
    /// Set status and headers. May be called again to replace them until the head has been sent.
    /// Header names/values are bytes (WSGI gives latin-1 strings).
    pub fn start(
        &mut self,
        _status: u16,
        _reason: &str,
        _headers: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), AppError> {
        todo!()
    }
    pub fn is_started(&self) -> bool {
        todo!()
    }
    pub fn head_sent(&self) -> bool {
        todo!()
    }
    /// Write body bytes (the head goes first). Bytes past a declared Content-Length are dropped.
    pub fn write(&mut self, _data: &[u8]) -> Result<(), AppError> {
        todo!()
    }
    /// Send `len` bytes (or to EOF) of `file` from `offset`, with sendfile(2) when the framing
    /// allows it, otherwise by reading and writing.
    pub fn sendfile(&mut self, _file: &File, _offset: u64, _len: Option<u64>) -> Result<(), AppError> {
        todo!()
    }
}

/// Worker settings (from the command line).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub limits: Limits,
    /// `--keep-alive`: how long an idle keep-alive connection may wait for its next request.
    pub keepalive: Duration,
    /// `--header-timeout`: the whole request head must arrive within this.
    pub header_timeout: Duration,
    /// Per read/write timeout once a request is under way.
    pub io_timeout: Duration,
    /// `--max-requests` (0 = never): exit after this many requests so the arbiter replaces us.
    pub max_requests: u64,
    /// `Server` header value.
    pub server_header: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            limits: Limits::default(),
            keepalive: Duration::from_secs(2),
            header_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            max_requests: 0,
            server_header: concat!("ferrocorn/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Why the worker loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (signal) and finished the request in hand.
    Stopped,
    /// Served `max_requests`.
    MaxRequests,
}

/// Serve until stopped. `heartbeat` is called at least once a second while idle and around each
/// request, so the arbiter can tell a hung worker from a busy one.
pub fn run(
    _app: &mut dyn App,
    _listeners: &[ferrocorn_listener::Listener],
    _config: &WorkerConfig,
    _signals: &ferrocorn_signals::WorkerSignals,
    _heartbeat: &mut dyn FnMut(),
) -> io::Result<Exit> {
    todo!()
}
