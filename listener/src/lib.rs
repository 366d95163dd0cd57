//! Listening sockets for ferrocorn: TCP (IPv4/IPv6), `unix:PATH`, `fd://N` and systemd's
//! `LISTEN_FDS`, with the socket options a pre-fork server needs.
//!
//! INTERFACE STUB — the listener helper owns this crate and replaces the `todo!()`s. Keep the public
//! names and signatures (adding is fine).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

/// One `--bind` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindSpec {
    /// `HOST:PORT`, `[V6]:PORT`, `HOST` (port 8000) or `:PORT`; host names are resolved when binding.
    Tcp { host: String, port: u16 },
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `fd://N`: an already-listening socket we inherited.
    Fd(RawFd),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid bind address {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: &'static str },
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("fd://{fd} is not a listening socket: {reason}")]
    BadFd { fd: RawFd, reason: String },
    #[error("systemd socket activation: {0}")]
    Systemd(String),
}

impl std::str::FromStr for BindSpec {
    type Err = Error;
    fn from_str(_s: &str) -> Result<Self, Error> {
        todo!()
    }
}

impl BindSpec {
    /// gunicorn's default: `127.0.0.1:8000`, or `0.0.0.0:$PORT` when `port_env` (the value of `$PORT`) is set.
    pub fn default_for(_port_env: Option<&str>) -> Result<BindSpec, Error> {
        todo!()
    }
}

/// Options applied to every socket we create (inherited ones are left as they are).
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// `--backlog`, default 2048.
    pub backlog: i32,
    /// Mode for unix socket files (`--umask`-style), `None` = leave the default.
    pub unix_mode: Option<u32>,
    /// SO_REUSEPORT (`--reuse-port`).
    pub reuse_port: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions { backlog: 2048, unix_mode: None, reuse_port: false }
    }
}

/// A bound, listening socket. Blocking by default; workers may switch it to non-blocking.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix { listener: std::os::unix::net::UnixListener, path: Option<PathBuf> },
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    Tcp(SocketAddr),
    Unix,
}

/// An accepted connection.
#[derive(Debug)]
pub enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Listener {
    /// Accept one connection (honours the socket's blocking mode).
    pub fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        todo!()
    }
    pub fn set_nonblocking(&self, _nonblocking: bool) -> io::Result<()> {
        todo!()
    }
    /// `http://127.0.0.1:8000` / `unix:/run/app.sock`, for log lines.
    pub fn describe(&self) -> String {
        todo!()
    }
    /// The local address as (SERVER_NAME, SERVER_PORT) for WSGI; unix sockets give the path and "".
    pub fn server_name_port(&self) -> (String, String) {
        todo!()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        todo!()
    }
}

impl Stream {
    pub fn set_read_timeout(&self, _t: Option<Duration>) -> io::Result<()> {
        todo!()
    }
    pub fn set_write_timeout(&self, _t: Option<Duration>) -> io::Result<()> {
        todo!()
    }
    pub fn set_nodelay(&self) -> io::Result<()> {
        todo!()
    }
    pub fn shutdown_write(&self) -> io::Result<()> {
        todo!()
    }
}

impl io::Read for Stream {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        todo!()
    }
}

impl io::Write for Stream {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        todo!()
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        todo!()
    }
}

/// Bind every spec (in order). Unix socket files left over from a dead server are removed first.
pub fn bind_all(_specs: &[BindSpec], _opts: &ListenOptions) -> Result<Vec<Listener>, Error> {
    todo!()
}

/// Sockets passed by systemd (`LISTEN_PID` must be ours; `LISTEN_FDS` from fd 3). Empty if not
/// socket-activated. Clears the variables so children do not re-read them.
pub fn systemd_listeners() -> Result<Vec<Listener>, Error> {
    todo!()
}
