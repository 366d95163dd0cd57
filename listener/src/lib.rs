//! Listening sockets for ferrocorn: TCP (IPv4/IPv6), `unix:PATH`, `fd://N` and systemd's
//! `LISTEN_FDS`, with the socket options a pre-fork server needs.
//!
//! The `--bind` syntax follows gunicorn: `HOST:PORT`, `[V6]:PORT`, `HOST` (port 8000), `:PORT`,
//! `tcp://…`, `unix:PATH` / `unix://PATH` and `fd://N`. Sockets are created close-on-exec (the
//! workers are forked, not exec'ed, so they still inherit them); call
//! [`Listener::set_inheritable`] before re-exec'ing the binary.
#![warn(missing_docs)]

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod unix_diag;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// gunicorn's port when `--bind` names only a host.
pub const DEFAULT_PORT: u16 = 8000;

/// One `--bind` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindSpec {
    /// `HOST:PORT`, `[V6]:PORT`, `HOST` (port 8000) or `:PORT`; host names are resolved when binding.
    Tcp {
        /// A name, an IPv4 address or an IPv6 address (without brackets).
        host: String,
        /// 0 for any free port.
        port: u16,
    },
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `fd://N`: an already-listening socket we inherited.
    Fd(RawFd),
}

/// Each message is complete on its own (it names the OS error), so no variant also exposes that
/// error as its `source()`: printed as a chain (anyhow's `{:#}`) it would appear twice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--bind` value that is no address.
    #[error("invalid bind address {spec:?}: {reason}")]
    InvalidSpec {
        /// The value as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The OS refused to bind or listen (in use, no permission, no such address).
    #[error("cannot bind {addr}: {cause}")]
    Bind {
        /// The address, as the user wrote it or resolved.
        addr: String,
        /// The OS error.
        cause: io::Error,
    },
    /// An `fd://N` that is not an open listening stream socket.
    #[error("fd://{fd} is not a listening socket: {reason}")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead.
        reason: String,
    },
    /// `LISTEN_FDS` / `LISTEN_PID` / `NOTIFY_SOCKET` are set but unusable.
    #[error("systemd socket activation: {0}")]
    Systemd(String),
}

fn invalid(spec: &str, reason: &'static str) -> Error {
    Error::InvalidSpec {
        spec: spec.to_string(),
        reason,
    }
}

fn parse_port(spec: &str, port: &str) -> Result<u16, Error> {
    if port.is_empty() {
        return Err(invalid(spec, "empty port"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(spec, "port is not a number"));
    }
    port.parse::<u16>()
        .map_err(|_| invalid(spec, "port out of range (0-65535)"))
}

impl std::str::FromStr for BindSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let spec = s.trim();
        if spec.is_empty() {
            return Err(invalid(s, "empty address"));
        }
        if let Some(rest) = spec.strip_prefix("unix:") {
            return parse_unix(s, rest.strip_prefix("//").unwrap_or(rest));
        }
        if let Some(fd) = spec.strip_prefix("fd://") {
            return parse_fd(s, fd);
        }
        parse_tcp(s, spec.strip_prefix("tcp://").unwrap_or(spec))
    }
}

/// `unix:PATH`. Errors name `spec`, the address as given.
fn parse_unix(spec: &str, path: &str) -> Result<BindSpec, Error> {
    if path.is_empty() {
        return Err(invalid(spec, "empty unix socket path"));
    }
    if path.contains('\0') {
        return Err(invalid(spec, "unix socket path contains a NUL byte"));
    }
    Ok(BindSpec::Unix(PathBuf::from(path)))
}

/// `fd://N`, a socket inherited already bound.
fn parse_fd(spec: &str, fd: &str) -> Result<BindSpec, Error> {
    let fd: RawFd = fd
        .parse()
        .map_err(|_| invalid(spec, "not a valid file descriptor number"))?;
    if fd < 0 {
        return Err(invalid(spec, "not a valid file descriptor number"));
    }
    Ok(BindSpec::Fd(fd))
}

/// `HOST`, `HOST:PORT`, `:PORT` or `[IPV6]:PORT` (the port defaults as in gunicorn).
fn parse_tcp(spec: &str, netloc: &str) -> Result<BindSpec, Error> {
    if netloc.contains('/') {
        return Err(invalid(
            spec,
            "unexpected '/' (use unix:PATH for unix sockets)",
        ));
    }
    let (host, port) = if let Some(rest) = netloc.strip_prefix('[') {
        split_bracketed(spec, rest)?
    } else {
        match netloc.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(invalid(
                    spec,
                    "IPv6 addresses must be written in brackets, e.g. [::1]:8000",
                ))
            }
            Some((h, p)) => (h.to_string(), parse_port(spec, p)?),
            None => (netloc.to_string(), DEFAULT_PORT),
        }
    };
    // gunicorn binds an empty host (":8000") on every IPv4 interface.
    let host = if host.is_empty() {
        "0.0.0.0".to_string()
    } else {
        host.to_ascii_lowercase()
    };
    Ok(BindSpec::Tcp { host, port })
}

/// `IPV6]` or `IPV6]:PORT`, what follows the `[` of a bracketed IPv6 address.
fn split_bracketed(spec: &str, rest: &str) -> Result<(String, u16), Error> {
    let (host, after) = rest
        .split_once(']')
        .ok_or_else(|| invalid(spec, "missing ']' after IPv6 address"))?;
    if host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(invalid(spec, "not a valid IPv6 address inside [...]"));
    }
    let port = match after {
        "" => DEFAULT_PORT,
        p => parse_port(
            spec,
            p.strip_prefix(':')
                .ok_or_else(|| invalid(spec, "expected ':PORT' after ']'"))?,
        )?,
    };
    Ok((host.to_string(), port))
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindSpec::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            BindSpec::Tcp { host, port } => write!(f, "{host}:{port}"),
            BindSpec::Unix(path) => write!(f, "unix:{}", path.display()),
            BindSpec::Fd(fd) => write!(f, "fd://{fd}"),
        }
    }
}

impl BindSpec {
    /// gunicorn's default: `127.0.0.1:8000`, or `0.0.0.0:$PORT` when `port_env` (the value of `$PORT`) is set.
    pub fn default_for(port_env: Option<&str>) -> Result<BindSpec, Error> {
        match port_env {
            None => Ok(BindSpec::Tcp {
                host: "127.0.0.1".into(),
                port: DEFAULT_PORT,
            }),
            Some(p) => {
                let port = p.trim().parse::<u16>().map_err(|_| Error::InvalidSpec {
                    spec: format!("$PORT={p}"),
                    reason: "$PORT is not a port number (0-65535)",
                })?;
                Ok(BindSpec::Tcp {
                    host: "0.0.0.0".into(),
                    port,
                })
            }
        }
    }

    /// Resolve a TCP spec to the address we bind. Literal IPv6 gives an IPv6 socket; anything
    /// else is IPv4 (names resolved to their first IPv4 address), as gunicorn does.
    pub fn resolve(&self) -> Result<SocketAddr, Error> {
        let BindSpec::Tcp { host, port } = self else {
            return Err(invalid(&self.to_string(), "not a TCP address"));
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, *port));
        }
        let addrs = (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| Error::Bind {
                addr: self.to_string(),
                cause: e,
            })?;
        addrs
            .into_iter()
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| Error::Bind {
                addr: self.to_string(),
                cause: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host:?} has no IPv4 address"),
                ),
            })
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
        ListenOptions {
            backlog: 2048,
            unix_mode: None,
            reuse_port: false,
        }
    }
}

/// A bound, listening socket. Blocking by default; workers may switch it to non-blocking.
///
/// Dropping a unix listener does not remove its file (forked workers drop their copies); the
/// arbiter calls [`Listener::remove_socket_file`] when it shuts down.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket (IPv4 or IPv6).
    Tcp(std::net::TcpListener),
    /// A unix stream socket.
    Unix {
        /// The socket.
        listener: std::os::unix::net::UnixListener,
        /// Its file, when we created it (an inherited one has none we own).
        path: Option<PathBuf>,
    },
}

/// A listening socket's accept queue: [`Listener::accept_queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptQueue {
    /// Connections the kernel completed that no process has accepted yet.
    pub queued: u32,
    /// The backlog they may reach.
    pub limit: u32,
}

fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, so all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are live and `len` is the size of `info`, as getsockopt requires.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(info)
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP client's address and port.
    Tcp(SocketAddr),
    /// A unix-socket client (no address).
    Unix,
}

/// An accepted connection.
#[derive(Debug)]
pub enum Stream {
    /// Accepted on a TCP listener.
    Tcp(std::net::TcpStream),
    /// Accepted on a unix listener.
    Unix(std::os::unix::net::UnixStream),
}

impl Listener {
    /// Accept one connection (honours the socket's blocking mode). The accepted stream is always
    /// blocking and close-on-exec, whatever the listener's mode (Linux does not inherit O_NONBLOCK).
    pub fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), PeerAddr::Tcp(a))),
            Listener::Unix { listener, .. } => listener
                .accept()
                .map(|(s, _)| (Stream::Unix(s), PeerAddr::Unix)),
        }
    }

    /// [`Listener::accept`], with the new connection non-blocking from the start (accept4's
    /// `SOCK_NONBLOCK`: an event loop saves a syscall per connection).
    pub fn accept_nonblocking(&self) -> io::Result<(Stream, PeerAddr)> {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        match self {
            Listener::Tcp(l) => {
                let (socket, addr) = SockRef::from(l).accept4(flags)?;
                let peer = addr.as_socket().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "a TCP peer without an address")
                })?;
                Ok((Stream::Tcp(socket.into()), PeerAddr::Tcp(peer)))
            }
            Listener::Unix { listener, .. } => {
                let (socket, _) = SockRef::from(listener).accept4(flags)?;
                Ok((
                    Stream::Unix(UnixStream::from(OwnedFd::from(socket))),
                    PeerAddr::Unix,
                ))
            }
        }
    }

    /// Make `accept` return `WouldBlock` instead of waiting (or wait again).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(nonblocking),
            Listener::Unix { listener, .. } => listener.set_nonblocking(nonblocking),
        }
    }

    /// Connections waiting to be accepted and the most the kernel queues. TCP: `TCP_INFO` on
    /// the listening socket (for a listener Linux reports the queue in `tcpi_unacked` and the
    /// backlog in `tcpi_sacked`). Unix: sock_diag (as `ss -xl`). `None` on error, e.g. a kernel
    /// without unix sock_diag.
    pub fn accept_queue(&self) -> Option<AcceptQueue> {
        match self {
            Listener::Tcp(l) => tcp_info(l.as_raw_fd()).map(|info| AcceptQueue {
                queued: info.tcpi_unacked,
                limit: info.tcpi_sacked,
            }),
            Listener::Unix { listener, .. } => unix_diag::accept_queue(listener.as_raw_fd()),
        }
    }

    /// `http://127.0.0.1:8000` / `unix:/run/app.sock`, for log lines.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(_) => match self.local_addr() {
                Some(SocketAddr::V4(a)) => format!("http://{a}"),
                Some(SocketAddr::V6(a)) => format!("http://[{}]:{}", a.ip(), a.port()),
                None => "http://?".to_string(),
            },
            Listener::Unix { .. } => match self.unix_path() {
                Some(p) => format!("unix:{}", p.display()),
                None => "unix:(unnamed)".to_string(),
            },
        }
    }

    /// The bound TCP address (with the real port when bound to port 0); `None` for unix sockets.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    /// The unix socket's path: the one we bound, or the one an inherited socket reports.
    pub fn unix_path(&self) -> Option<PathBuf> {
        match self {
            Listener::Tcp(_) => None,
            Listener::Unix { path: Some(p), .. } => Some(p.clone()),
            Listener::Unix {
                listener,
                path: None,
            } => listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf)),
        }
    }

    /// The local address as (SERVER_NAME, SERVER_PORT) for WSGI; unix sockets give the path and "".
    pub fn server_name_port(&self) -> (String, String) {
        match self {
            Listener::Tcp(_) => match self.local_addr() {
                Some(a) => (a.ip().to_string(), a.port().to_string()),
                None => (String::new(), String::new()),
            },
            Listener::Unix { .. } => (
                self.unix_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                String::new(),
            ),
        }
    }

    /// A second descriptor for the same socket (close-on-exec, like the first). A clone never
    /// removes the unix socket file: the original's owner does.
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix { listener, .. } => Listener::Unix {
                listener: listener.try_clone()?,
                path: None,
            },
        })
    }

    /// Clear (`true`) or set (`false`) close-on-exec, e.g. before re-exec'ing on SIGUSR2.
    pub fn set_inheritable(&self, inheritable: bool) -> io::Result<()> {
        SockRef::from(self).set_cloexec(!inheritable)
    }

    /// Remove the unix socket file we created (no-op for TCP and inherited sockets).
    pub fn remove_socket_file(&self) -> io::Result<()> {
        match self {
            Listener::Unix { path: Some(p), .. } => match std::fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Stop the kernel from completing new TCP handshakes on this socket, while connections
    /// already in its accept queue (and handshakes whose final ACK is on its way) stay
    /// acceptable: a server going away for good drains its queue instead of resetting what is
    /// in it, and a new client sees its connect time out rather than a reset after connecting.
    /// It works through a socket filter that drops every segment with SYN set: on a listening
    /// socket the kernel runs the filter on each incoming segment, the TCP header first.
    /// Child sockets accepted later inherit the filter, which is harmless once established.
    ///
    /// Unix sockets are left alone: removing the socket file (see
    /// [`Listener::remove_socket_file`]) is what refuses their new clients, and those already
    /// queued stay acceptable.
    pub fn refuse_new_connections(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(_) => attach_syn_filter(SockRef::from(self)),
            Listener::Unix { .. } => Ok(()),
        }
    }
}

/// Classic BPF: load the TCP flags byte (offset 13 of the header); SYN set → keep 0 bytes (drop),
/// else keep the whole segment.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn attach_syn_filter(sock: SockRef<'_>) -> io::Result<()> {
    use socket2::SockFilter;
    const TCP_FLAGS_OFFSET: u32 = 13;
    const SYN: u32 = 0x02;
    let op = |code: u32| code as u16;
    let program = [
        SockFilter::new(
            op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS),
            0,
            0,
            TCP_FLAGS_OFFSET,
        ),
        // SYN set: fall through to the drop; else jump over it.
        SockFilter::new(op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K), 0, 1, SYN),
        SockFilter::new(op(libc::BPF_RET | libc::BPF_K), 0, 0, 0),
        SockFilter::new(op(libc::BPF_RET | libc::BPF_K), 0, 0, u32::MAX),
    ];
    sock.attach_filter(&program)
}

/// Elsewhere there are no classic socket filters: new handshakes keep completing.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn attach_syn_filter(_sock: SockRef<'_>) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix { listener, .. } => listener.as_raw_fd(),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix { listener, .. } => listener.as_fd(),
        }
    }
}

impl Stream {
    /// As [`std::net::TcpStream::set_read_timeout`].
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    /// As [`std::net::TcpStream::set_write_timeout`].
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
    /// TCP_NODELAY on TCP; unix sockets have no Nagle, so this is a no-op for them.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
        }
    }
    /// Half-close: send FIN, keep reading.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => io::Read::read(s, buf),
            Stream::Unix(s) => io::Read::read(s, buf),
        }
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => io::Write::write(s, buf),
            Stream::Unix(s) => io::Write::write(s, buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => io::Write::write_vectored(s, bufs),
            Stream::Unix(s) => io::Write::write_vectored(s, bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// Bind every spec (in order). Unix socket files left over from a dead server are removed first.
pub fn bind_all(specs: &[BindSpec], opts: &ListenOptions) -> Result<Vec<Listener>, Error> {
    specs.iter().map(|spec| bind(spec, opts)).collect()
}

/// Bind (or adopt, for `fd://N`) one spec.
pub fn bind(spec: &BindSpec, opts: &ListenOptions) -> Result<Listener, Error> {
    match spec {
        BindSpec::Tcp { .. } => bind_tcp(spec.resolve()?, opts),
        BindSpec::Unix(path) => bind_unix(path, opts),
        BindSpec::Fd(fd) => adopt_fd(*fd),
    }
}

fn bind_tcp(addr: SocketAddr, opts: &ListenOptions) -> Result<Listener, Error> {
    let err = |cause: io::Error| Error::Bind {
        addr: addr.to_string(),
        cause,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    // Restarting the server must not wait for TIME_WAIT connections of the old one.
    socket.set_reuse_address(true).map_err(err)?;
    if opts.reuse_port {
        socket.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        // As gunicorn: [::]:PORT means IPv6 only, so a separate 0.0.0.0:PORT bind can coexist.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(opts.backlog).map_err(err)?;
    log::debug!("bound tcp {addr}");
    Ok(Listener::Tcp(socket.into()))
}

fn bind_unix(path: &Path, opts: &ListenOptions) -> Result<Listener, Error> {
    let err = |cause: io::Error| Error::Bind {
        addr: format!("unix:{}", path.display()),
        cause,
    };
    remove_stale_socket(path).map_err(err)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
    socket
        .bind(&SockAddr::unix(path).map_err(err)?)
        .map_err(err)?;
    if let Some(mode) = opts.unix_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    socket.listen(opts.backlog).map_err(err)?;
    log::debug!("bound unix socket {}", path.display());
    let listener = UnixListener::from(OwnedFd::from(socket));
    Ok(Listener::Unix {
        listener,
        path: Some(path.to_path_buf()),
    })
}

/// Remove a socket file left by a dead server. Refuses anything that is not a socket, and a
/// socket some live process still accepts on.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; refusing to remove it",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening on this socket",
        )),
        // Nobody accepts on it: a leftover of a server that died.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale unix socket {}", path.display());
            std::fs::remove_file(path)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot tell whether the existing socket is in use: {e}"),
        )),
    }
}

/// Check that `fd` is an open, listening stream socket of a family we serve.
fn check_listening_fd(fd: RawFd) -> Result<Domain, String> {
    // SAFETY: F_GETFD only reads the descriptor flags; it is harmless on any integer.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(format!(
            "not an open file descriptor ({})",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: fcntl above proved `fd` is open; the borrow does not outlive this function and we
    // never close it here.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    let domain = sock.domain().map_err(|e| format!("not a socket ({e})"))?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 && domain != Domain::UNIX {
        return Err(format!("unsupported socket family {domain:?}"));
    }
    match sock.r#type() {
        Ok(t) if t == Type::STREAM => {}
        Ok(t) => return Err(format!("not a stream socket ({t:?})")),
        Err(e) => return Err(e.to_string()),
    }
    if !sock.is_listener().map_err(|e| e.to_string())? {
        return Err("the socket is not listening (SO_ACCEPTCONN is 0)".to_string());
    }
    Ok(domain)
}

/// Take ownership of an inherited listening socket.
fn adopt_fd(fd: RawFd) -> Result<Listener, Error> {
    let domain = check_listening_fd(fd).map_err(|reason| Error::BadFd { fd, reason })?;
    // SAFETY: `fd` is an open listening socket (checked above) that was handed to us to own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Inherited descriptors may lack close-on-exec; make them like our own.
    SockRef::from(&owned)
        .set_cloexec(true)
        .map_err(|e| Error::BadFd {
            fd,
            reason: e.to_string(),
        })?;
    Ok(if domain == Domain::UNIX {
        Listener::Unix {
            listener: UnixListener::from(owned),
            path: None,
        }
    } else {
        Listener::Tcp(std::net::TcpListener::from(owned))
    })
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const SD_LISTEN_FDS_START: RawFd = 3;

/// Sockets passed by systemd (`LISTEN_PID` must be ours; `LISTEN_FDS` from fd 3). Empty if not
/// socket-activated. Clears the variables so children do not re-read them.
pub fn systemd_listeners() -> Result<Vec<Listener>, Error> {
    let fds = match std::env::var("LISTEN_FDS") {
        Err(std::env::VarError::NotPresent) => return Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(Error::Systemd(format!("LISTEN_FDS={v:?} is not a number")))
        }
        Ok(v) => v,
    };
    let pid = std::env::var("LISTEN_PID").ok();
    let Some(count) = systemd_fd_count(pid.as_deref(), &fds, std::process::id())? else {
        return Ok(Vec::new());
    };
    // Removing them before adopting means a failure below cannot make a child re-adopt.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    (0..count)
        .map(|i| {
            let fd = SD_LISTEN_FDS_START + i;
            adopt_fd(fd).map_err(|e| Error::Systemd(format!("LISTEN_FDS descriptor {fd}: {e}")))
        })
        .collect()
}

/// Validate `LISTEN_PID` / `LISTEN_FDS`. `Ok(None)` when the variables are meant for another
/// process (sd_listen_fds semantics); an error when they are malformed.
pub fn systemd_fd_count(
    listen_pid: Option<&str>,
    fds: &str,
    our_pid: u32,
) -> Result<Option<i32>, Error> {
    let pid = listen_pid
        .ok_or_else(|| Error::Systemd("LISTEN_FDS is set but LISTEN_PID is not".into()))?;
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| Error::Systemd(format!("LISTEN_PID={pid:?} is not a process id")))?;
    if pid != our_pid {
        log::debug!("LISTEN_PID={pid} is not us ({our_pid}); ignoring LISTEN_FDS");
        return Ok(None);
    }
    let count: i32 = fds
        .trim()
        .parse()
        .map_err(|_| Error::Systemd(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if !(0..=1024).contains(&count) {
        return Err(Error::Systemd(format!(
            "LISTEN_FDS={count} is out of range"
        )));
    }
    Ok(Some(count))
}

impl From<Listener> for OwnedFd {
    fn from(l: Listener) -> OwnedFd {
        match l {
            Listener::Tcp(l) => l.into(),
            Listener::Unix { listener, .. } => listener.into(),
        }
    }
}

impl IntoRawFd for Listener {
    fn into_raw_fd(self) -> RawFd {
        OwnedFd::from(self).into_raw_fd()
    }
}

/// systemd's `sd_notify`: send `state` (e.g. `"READY=1"`) to the datagram socket named by
/// `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), as a `Type=notify` unit expects
/// (gunicorn's own unit examples use it). `Ok(false)` when not started that way.
pub fn sd_notify(state: &str) -> Result<bool, Error> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

    let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let fail = |e: io::Error| Error::Systemd(format!("NOTIFY_SOCKET={name:?}: {e}"));
    let bytes = name.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => UnixAddr::from_abstract_name(abstract_name),
        None => UnixAddr::from_pathname(Path::new(&name)),
    }
    .map_err(fail)?;
    let sock = UnixDatagram::unbound().map_err(fail)?;
    sock.send_to_addr(state.as_bytes(), &addr).map_err(fail)?;
    Ok(true)
}
