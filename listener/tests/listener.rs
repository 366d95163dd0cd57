//! Real sockets: binding, accepting, unix socket files, inherited descriptors.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use ferrocorn_listener::{
    bind_all, systemd_fd_count, BindSpec, Error, ListenOptions, Listener, PeerAddr, Stream,
};
use socket2::{Domain, SockRef, Socket, Type};

fn spec(s: &str) -> BindSpec {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn tcp(host: &str, port: u16) -> BindSpec {
    BindSpec::Tcp {
        host: host.into(),
        port,
    }
}

fn bind_one(s: &BindSpec, opts: &ListenOptions) -> Listener {
    let mut v = bind_all(std::slice::from_ref(s), opts).unwrap_or_else(|e| panic!("bind {s}: {e}"));
    assert_eq!(v.len(), 1);
    v.pop().unwrap()
}

/// A fresh directory under the target tmp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("ferrocorn-listener-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Accept one connection from `client`, send a line each way, and return the peer address.
fn round_trip(listener: &Listener, mut client: impl Read + Write) -> PeerAddr {
    client.write_all(b"ping\n").unwrap();
    let (mut stream, peer) = listener.accept().unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping\n");
    stream.write_all(b"pong\n").unwrap();
    stream.shutdown_write().unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "pong\n");
    peer
}

fn cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads flags of a descriptor the caller keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert!(flags >= 0, "fcntl({fd}) failed");
    flags & libc::FD_CLOEXEC != 0
}

#[test]
fn parses_gunicorn_bind_syntax() {
    assert_eq!(spec("127.0.0.1:8000"), tcp("127.0.0.1", 8000));
    assert_eq!(spec("0.0.0.0:80"), tcp("0.0.0.0", 80));
    assert_eq!(spec("LocalHost:9000"), tcp("localhost", 9000));
    assert_eq!(spec("example.com"), tcp("example.com", 8000));
    assert_eq!(spec(":5000"), tcp("0.0.0.0", 5000));
    assert_eq!(spec("tcp://10.0.0.1:81"), tcp("10.0.0.1", 81));
    assert_eq!(spec("[::1]:8001"), tcp("::1", 8001));
    assert_eq!(spec("[::]"), tcp("::", 8000));
    assert_eq!(spec("[2001:DB8::1]:0"), tcp("2001:db8::1", 0));
    assert_eq!(
        spec("unix:/run/app.sock"),
        BindSpec::Unix("/run/app.sock".into())
    );
    assert_eq!(
        spec("unix:///run/app.sock"),
        BindSpec::Unix("/run/app.sock".into())
    );
    assert_eq!(
        spec("unix:relative.sock"),
        BindSpec::Unix("relative.sock".into())
    );
    assert_eq!(spec("fd://3"), BindSpec::Fd(3));
    // Display gives back something that parses to the same spec.
    for s in [
        "127.0.0.1:8000",
        "[::1]:8001",
        "unix:/run/app.sock",
        "fd://7",
    ] {
        assert_eq!(spec(&spec(s).to_string()), spec(s));
    }
}

#[test]
fn bad_specs_name_the_problem() {
    let cases = [
        ("", "empty address"),
        ("127.0.0.1:", "empty port"),
        ("127.0.0.1:http", "port is not a number"),
        ("127.0.0.1:-1", "port is not a number"),
        ("127.0.0.1:65536", "port out of range"),
        ("::1:8000", "IPv6 addresses must be written in brackets"),
        ("[::1", "missing ']'"),
        ("[::1]8000", "expected ':PORT' after ']'"),
        ("[not-v6]:80", "not a valid IPv6 address"),
        ("unix:", "empty unix socket path"),
        ("fd://", "not a valid file descriptor"),
        ("fd://x", "not a valid file descriptor"),
        ("fd://-2", "not a valid file descriptor"),
        ("http://example.com", "unexpected '/'"),
    ];
    for (input, reason) in cases {
        let err = input.parse::<BindSpec>().expect_err(input);
        assert!(
            matches!(err, Error::InvalidSpec { .. }),
            "{input:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(reason),
            "{input:?}: message {msg:?} lacks {reason:?}"
        );
        assert!(
            msg.contains(&format!("{input:?}")),
            "{input:?}: message {msg:?} does not quote the input"
        );
    }
}

#[test]
fn default_bind_follows_port_env() {
    assert_eq!(BindSpec::default_for(None).unwrap(), tcp("127.0.0.1", 8000));
    assert_eq!(
        BindSpec::default_for(Some("5000")).unwrap(),
        tcp("0.0.0.0", 5000)
    );
    let err = BindSpec::default_for(Some("fivethousand"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("$PORT"), "{err}");
}

#[test]
fn tcp_v4_port_zero_reports_real_port_and_serves() {
    let l = bind_one(&spec("127.0.0.1:0"), &ListenOptions::default());
    let addr = l.local_addr().expect("tcp has an address");
    assert_ne!(addr.port(), 0);
    assert_eq!(l.describe(), format!("http://127.0.0.1:{}", addr.port()));
    assert_eq!(
        l.server_name_port(),
        ("127.0.0.1".to_string(), addr.port().to_string())
    );
    let sock = SockRef::from(&l);
    assert!(sock.reuse_address().unwrap(), "SO_REUSEADDR must be set");
    assert!(sock.is_listener().unwrap());
    assert!(cloexec(l.as_raw_fd()));
    let client = TcpStream::connect(addr).unwrap();
    let client_addr = client.local_addr().unwrap();
    assert_eq!(round_trip(&l, client), PeerAddr::Tcp(client_addr));
}

#[test]
fn tcp_v6_is_v6_only_and_serves() {
    let l = bind_one(&spec("[::1]:0"), &ListenOptions::default());
    let addr = l.local_addr().unwrap();
    assert!(addr.is_ipv6());
    assert_eq!(l.describe(), format!("http://[::1]:{}", addr.port()));
    assert_eq!(
        l.server_name_port(),
        ("::1".to_string(), addr.port().to_string())
    );
    assert!(
        SockRef::from(&l).only_v6().unwrap(),
        "IPV6_V6ONLY must be set"
    );
    round_trip(&l, TcpStream::connect(addr).unwrap());
}

#[test]
fn host_names_resolve_to_ipv4() {
    let l = bind_one(&spec("localhost:0"), &ListenOptions::default());
    assert_eq!(l.local_addr().unwrap().ip().to_string(), "127.0.0.1");
}

#[test]
fn unresolvable_host_is_a_bind_error() {
    let err = bind_all(
        &[spec("no-such-host.invalid:80")],
        &ListenOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-host.invalid:80"), "{err}");
}

/// An error and its `source()` chain, joined by ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

#[test]
fn port_in_use_fails_unless_reuse_port() {
    let first = bind_one(&spec("127.0.0.1:0"), &ListenOptions::default());
    let again = tcp("127.0.0.1", first.local_addr().unwrap().port());
    let err = bind_all(std::slice::from_ref(&again), &ListenOptions::default()).unwrap_err();
    match &err {
        Error::Bind { addr, cause } => {
            assert_eq!(cause.kind(), std::io::ErrorKind::AddrInUse);
            assert_eq!(addr, &again.to_string());
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    // Printed with its causes (as anyhow's `{:#}` does), the OS error appears once.
    let chain = error_chain(&err);
    assert_eq!(
        chain.matches("Address already in use").count(),
        1,
        "{chain}"
    );

    let opts = ListenOptions {
        reuse_port: true,
        ..ListenOptions::default()
    };
    let a = bind_one(&spec("127.0.0.1:0"), &opts);
    let b = bind_one(&tcp("127.0.0.1", a.local_addr().unwrap().port()), &opts);
    assert!(SockRef::from(&b).reuse_port().unwrap());
    assert_eq!(a.local_addr(), b.local_addr());
}

#[test]
fn binds_several_specs_in_order() {
    let opts = ListenOptions {
        backlog: 16,
        ..ListenOptions::default()
    };
    let ls = bind_all(&[spec("127.0.0.1:0"), spec("[::1]:0")], &opts).unwrap();
    assert_eq!(ls.len(), 2);
    assert!(ls[0].local_addr().unwrap().is_ipv4());
    assert!(ls[1].local_addr().unwrap().is_ipv6());
}

#[test]
fn unix_socket_replaces_stale_file_and_applies_mode() {
    let dir = TempDir::new("stale");
    let path = dir.0.join("app.sock");
    // A server that died leaves its socket file behind.
    drop(UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());

    let opts = ListenOptions {
        unix_mode: Some(0o660),
        ..ListenOptions::default()
    };
    let l = bind_one(&BindSpec::Unix(path.clone()), &opts);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(l.describe(), format!("unix:{}", path.display()));
    assert_eq!(
        l.server_name_port(),
        (path.display().to_string(), String::new())
    );
    assert_eq!(l.local_addr(), None);
    assert_eq!(
        round_trip(&l, UnixStream::connect(&path).unwrap()),
        PeerAddr::Unix
    );

    l.remove_socket_file().unwrap();
    assert!(!path.exists());
}

#[test]
fn unix_socket_in_use_is_not_removed() {
    let dir = TempDir::new("live");
    let path = dir.0.join("app.sock");
    let live = UnixListener::bind(&path).unwrap();
    let err = bind_all(&[BindSpec::Unix(path.clone())], &ListenOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("another server is listening"), "{msg}");
    // The live server still gets connections.
    let _client = UnixStream::connect(&path).unwrap();
    live.accept().unwrap();
}

#[test]
fn unix_refuses_to_remove_a_regular_file() {
    let dir = TempDir::new("regular");
    let path = dir.0.join("important.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let err = bind_all(&[BindSpec::Unix(path.clone())], &ListenOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("is not a socket"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn unix_missing_directory_is_a_bind_error() {
    let err = bind_all(
        &[spec("unix:/nonexistent-dir-ferrocorn/app.sock")],
        &ListenOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Bind { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
}

fn listening_socket(domain: Domain, ty: Type) -> Socket {
    let s = Socket::new(domain, ty, None).unwrap();
    let addr: SocketAddr = if domain == Domain::IPV6 {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    }
    .parse()
    .unwrap();
    s.bind(&addr.into()).unwrap();
    s
}

#[test]
fn fd_adopts_an_inherited_tcp_listener() {
    let s = listening_socket(Domain::IPV4, Type::STREAM);
    s.listen(8).unwrap();
    s.set_cloexec(false).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let fd = s.into_raw_fd();
    let l = bind_one(&spec(&format!("fd://{fd}")), &ListenOptions::default());
    assert_eq!(l.as_raw_fd(), fd);
    assert!(matches!(l, Listener::Tcp(_)));
    assert_eq!(l.local_addr(), Some(addr));
    // Adopted descriptors get close-on-exec like our own; re-exec can turn it off again.
    assert!(cloexec(fd));
    l.set_inheritable(true).unwrap();
    assert!(!cloexec(fd));
    l.set_inheritable(false).unwrap();
    assert!(cloexec(fd));
    round_trip(&l, TcpStream::connect(addr).unwrap());
}

#[test]
fn fd_adopts_an_inherited_unix_listener() {
    let dir = TempDir::new("fd");
    let path = dir.0.join("inherited.sock");
    let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
    let l = bind_one(&BindSpec::Fd(fd), &ListenOptions::default());
    assert!(matches!(l, Listener::Unix { path: None, .. }));
    assert_eq!(l.describe(), format!("unix:{}", path.display()));
    round_trip(&l, UnixStream::connect(&path).unwrap());
    // We did not create the file, so we do not remove it.
    l.remove_socket_file().unwrap();
    assert!(path.exists());
}

fn bad_fd_reason(fd: RawFd) -> String {
    match bind_all(&[BindSpec::Fd(fd)], &ListenOptions::default()) {
        Err(Error::BadFd { fd: got, reason }) => {
            assert_eq!(got, fd);
            reason
        }
        other => panic!("fd://{fd}: expected BadFd, got {other:?}"),
    }
}

#[test]
fn fd_rejects_what_is_not_a_listening_stream_socket() {
    // Bound but never listen()ed.
    let not_listening = listening_socket(Domain::IPV4, Type::STREAM);
    let reason = bad_fd_reason(not_listening.as_raw_fd());
    assert!(reason.contains("SO_ACCEPTCONN"), "{reason}");
    // The socket was not taken over: it is still usable by its owner.
    not_listening.listen(1).unwrap();

    let udp = listening_socket(Domain::IPV6, Type::DGRAM);
    assert!(bad_fd_reason(udp.as_raw_fd()).contains("not a stream socket"));

    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert!(bad_fd_reason(file.as_raw_fd()).contains("not a socket"));

    // An fd number above any descriptor limit, so no concurrent test can have it open.
    assert!(bad_fd_reason(999_999).contains("not an open file descriptor"));

    let msg = Error::BadFd {
        fd: 9,
        reason: "x".into(),
    }
    .to_string();
    assert_eq!(msg, "fd://9 is not a listening socket: x");
}

#[test]
fn nonblocking_accept_would_block_and_streams_take_options() {
    let l = bind_one(&spec("127.0.0.1:0"), &ListenOptions::default());
    l.set_nonblocking(true).unwrap();
    let err = l.accept().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);

    let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    // The connection is queued by the kernel once connect() returns, so a retry loop is not needed.
    let (mut stream, _) = l.accept().unwrap();
    stream.set_nodelay().unwrap();
    let Stream::Tcp(ref inner) = stream else {
        panic!("tcp listener gave {stream:?}")
    };
    assert!(inner.nodelay().unwrap());
    // Accepted streams are blocking even from a non-blocking listener; a read timeout applies.
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let Stream::Tcp(ref inner) = stream else {
        unreachable!()
    };
    assert_eq!(
        inner.read_timeout().unwrap(),
        Some(Duration::from_millis(20))
    );
    assert_eq!(inner.write_timeout().unwrap(), Some(Duration::from_secs(5)));
    let err = stream.read(&mut [0u8; 1]).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err:?}"
    );
}

/// `accept_nonblocking` hands over connections that never block, and says who connected.
#[test]
fn accept_nonblocking_gives_nonblocking_streams_with_their_peer() {
    let l = bind_one(&spec("127.0.0.1:0"), &ListenOptions::default());
    l.set_nonblocking(true).unwrap();
    let err = l.accept_nonblocking().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut stream, peer) = l.accept_nonblocking().unwrap();
    assert_eq!(peer, PeerAddr::Tcp(client.local_addr().unwrap()));
    // Nothing sent yet: a blocking stream would wait here for good.
    let err = stream.read(&mut [0u8; 1]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err:?}");
    client.write_all(b"x").unwrap();
    let mut got = [0u8; 1];
    let fd = match &stream {
        Stream::Tcp(inner) => inner.as_raw_fd(),
        other => panic!("tcp listener gave {other:?}"),
    };
    let mut fds = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one live pollfd, as the count says.
    assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) }, 1);
    assert_eq!(stream.read(&mut got).unwrap(), 1);
    assert_eq!(&got, b"x");
    // The descriptor does not leak into programs the worker runs.
    // SAFETY: F_GETFD on a live descriptor.
    let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
}

#[test]
fn accept_nonblocking_on_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("ferrocorn-nb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let l = bind_one(
        &spec(&format!("unix:{}", path.display())),
        &ListenOptions::default(),
    );
    let _client = UnixStream::connect(&path).unwrap();
    let (mut stream, peer) = l.accept_nonblocking().unwrap();
    assert_eq!(peer, PeerAddr::Unix);
    let err = stream.read(&mut [0u8; 1]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err:?}");
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_env_validation() {
    assert_eq!(systemd_fd_count(Some("42"), "2", 42).unwrap(), Some(2));
    assert_eq!(systemd_fd_count(Some(" 42 "), "0", 42).unwrap(), Some(0));
    // Meant for another process (e.g. our parent): ignored.
    assert_eq!(systemd_fd_count(Some("41"), "2", 42).unwrap(), None);
    let err =
        |pid: Option<&str>, fds: &str| systemd_fd_count(pid, fds, 42).unwrap_err().to_string();
    assert!(err(None, "1").contains("LISTEN_PID is not"));
    assert!(err(Some("me"), "1").contains("LISTEN_PID=\"me\" is not a process id"));
    assert!(err(Some("42"), "two").contains("LISTEN_FDS=\"two\" is not a number"));
    assert!(err(Some("42"), "-1").contains("out of range"));
}

#[test]
fn a_clone_accepts_on_the_same_socket_and_never_removes_the_file() {
    let dir = TempDir::new("clone");
    let path = dir.0.join("app.sock");
    let l = bind_one(&BindSpec::Unix(path.clone()), &ListenOptions::default());
    let c = l.try_clone().unwrap();
    assert_ne!(c.as_raw_fd(), l.as_raw_fd());
    assert!(cloexec(c.as_raw_fd()));
    assert_eq!(c.describe(), l.describe());
    assert_eq!(
        round_trip(&c, UnixStream::connect(&path).unwrap()),
        PeerAddr::Unix
    );
    c.remove_socket_file().unwrap();
    assert!(path.exists(), "only the original removes the file");
    drop(c);
    assert_eq!(
        round_trip(&l, UnixStream::connect(&path).unwrap()),
        PeerAddr::Unix
    );

    let t = bind_one(&tcp("127.0.0.1", 0), &ListenOptions::default());
    let tc = t.try_clone().unwrap();
    assert_eq!(tc.local_addr(), t.local_addr());
}

#[test]
fn refusing_new_connections_keeps_queued_ones_acceptable() {
    let listener = bind_one(&tcp("127.0.0.1", 0), &ListenOptions::default());
    let addr = listener.local_addr().unwrap();
    // The kernel completes this handshake on its own: the connection waits in the accept queue.
    let queued = TcpStream::connect(addr).unwrap();
    listener.refuse_new_connections().unwrap();
    // Its SYNs are dropped, so a new connect neither completes nor is reset: it times out.
    let late = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    match late {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        Ok(s) => panic!("a new connection completed after refusing: {s:?}"),
    }
    assert!(matches!(round_trip(&listener, queued), PeerAddr::Tcp(_)));
}

#[test]
fn refusing_new_connections_leaves_a_unix_listener_serving_its_queue() {
    let dir = TempDir::new("refuse");
    let path = dir.0.join("s.sock");
    let listener = bind_one(&BindSpec::Unix(path.clone()), &ListenOptions::default());
    let queued = UnixStream::connect(&path).unwrap();
    listener.refuse_new_connections().unwrap();
    assert_eq!(round_trip(&listener, queued), PeerAddr::Unix);
}

#[test]
fn the_accept_queue_counts_clients_not_yet_accepted_against_the_backlog() {
    let opts = ListenOptions {
        backlog: 37,
        ..ListenOptions::default()
    };
    let listener = bind_one(&tcp("127.0.0.1", 0), &opts);
    let addr = listener.local_addr().unwrap();
    let empty = listener.accept_queue().expect("TCP_INFO on a TCP listener");
    assert_eq!((empty.queued, empty.limit), (0, 37));
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The handshake completes in the kernel; the queue fills as the clients connect.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listener.accept_queue().unwrap().queued < 3 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(listener.accept_queue().unwrap().queued, 3);
    listener.accept().unwrap();
    assert_eq!(listener.accept_queue().unwrap().queued, 2);
    drop(clients);
}

#[test]
fn a_unix_listeners_accept_queue_comes_from_sock_diag() {
    let opts = ListenOptions {
        backlog: 23,
        ..ListenOptions::default()
    };
    let dir = TempDir::new("queue");
    let path = dir.0.join("s");
    let unix = bind_one(&spec(&format!("unix:{}", path.display())), &opts);
    let empty = unix.accept_queue().expect("sock_diag for unix sockets");
    assert_eq!((empty.queued, empty.limit), (0, 23));
    // A unix connect completes at once: both clients wait in the queue on return.
    let clients: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    assert_eq!(unix.accept_queue().unwrap().queued, 2);
    unix.accept().unwrap();
    assert_eq!(unix.accept_queue().unwrap().queued, 1);
    drop(clients);
}
