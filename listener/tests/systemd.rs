//! systemd socket activation with a real fd 3 and real `LISTEN_PID`.
//!
//! `harness = false`: each case forks, and the child sets environment variables and rearranges
//! descriptors, which is only sound in a single-threaded process like this one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use ferrocorn_listener::{systemd_listeners, Listener};

/// Start `child` in a forked process; its return value becomes the exit status (0 = pass).
fn fork_child(child: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: this test binary has a single thread (no libtest harness), so the child may run
    // arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
        // SAFETY: leave the child at once, without running the parent's atexit handlers twice.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Wait for a forked child and return its exit status.
fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for the child we just forked.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    libc::WEXITSTATUS(status)
}

fn in_child(child: impl FnOnce() -> i32) -> i32 {
    wait_child(fork_child(child))
}

/// Put `fd` at descriptor 3, where systemd puts the first socket.
fn move_to_fd3(fd: i32) {
    // SAFETY: dup2 onto fd 3 in a child we own; whatever was at 3 is replaced, as systemd does.
    assert_eq!(unsafe { libc::dup2(fd, 3) }, 3);
}

fn activated_socket_serves() {
    let sock = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let pid = fork_child(|| {
        // The original descriptor stays open too (it may already be 3); systemd would close it.
        move_to_fd3(sock.as_raw_fd());
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_FDNAMES", "http");
        let ls = systemd_listeners().expect("activation");
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[0].as_raw_fd(), 3);
        assert!(matches!(ls[0], Listener::Tcp(_)));
        assert_eq!(ls[0].local_addr(), Some(addr));
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(var).is_none(), "{var} must be cleared");
        }
        // A second call (e.g. in a worker) finds nothing.
        assert!(systemd_listeners().unwrap().is_empty());
        let (mut s, _) = ls[0].accept().unwrap();
        s.write_all(b"activated").unwrap();
        0
    });
    // The parent connects to the socket it handed over; the child answers through fd 3.
    let mut reply = String::new();
    TcpStream::connect(addr)
        .unwrap()
        .read_to_string(&mut reply)
        .unwrap();
    assert_eq!(wait_child(pid), 0);
    assert_eq!(reply, "activated");
}

fn other_pid_is_ignored_and_kept() {
    let code = in_child(|| {
        let parent = std::os::unix::process::parent_id();
        std::env::set_var("LISTEN_PID", parent.to_string());
        std::env::set_var("LISTEN_FDS", "1");
        assert!(systemd_listeners().unwrap().is_empty());
        assert_eq!(std::env::var("LISTEN_PID").unwrap(), parent.to_string());
        0
    });
    assert_eq!(code, 0);
}

fn non_socket_fd3_is_an_error() {
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let code = in_child(|| {
        move_to_fd3(file.as_raw_fd());
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        std::env::set_var("LISTEN_FDS", "1");
        let err = systemd_listeners().unwrap_err().to_string();
        assert!(
            err.starts_with("systemd socket activation: LISTEN_FDS descriptor 3"),
            "{err}"
        );
        assert!(err.contains("not a socket"), "{err}");
        0
    });
    assert_eq!(code, 0);
}

fn garbage_listen_fds_is_an_error() {
    let code = in_child(|| {
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        std::env::set_var("LISTEN_FDS", "lots");
        let err = systemd_listeners().unwrap_err().to_string();
        assert!(err.contains("LISTEN_FDS=\"lots\" is not a number"), "{err}");
        0
    });
    assert_eq!(code, 0);
}

fn not_activated_is_empty() {
    let code = in_child(|| {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        assert!(systemd_listeners().unwrap().is_empty());
        0
    });
    assert_eq!(code, 0);
}

fn main() {
    let cases: [(&str, fn()); 5] = [
        ("activated_socket_serves", activated_socket_serves),
        (
            "other_pid_is_ignored_and_kept",
            other_pid_is_ignored_and_kept,
        ),
        ("non_socket_fd3_is_an_error", non_socket_fd3_is_an_error),
        (
            "garbage_listen_fds_is_an_error",
            garbage_listen_fds_is_an_error,
        ),
        ("not_activated_is_empty", not_activated_is_empty),
    ];
    // No case needs root: the root-only pass (`--ignored`) has nothing to run here.
    if std::env::args().any(|a| a == "--ignored") {
        println!(
            "\ntest result: ok. 0 passed; 0 failed; 0 ignored; {} filtered out",
            cases.len()
        );
        return;
    }
    for (name, case) in cases {
        case();
        println!("test {name} ... ok");
    }
}
