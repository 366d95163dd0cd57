//! How many connections wait in a listening socket's accept queue.

use std::os::fd::AsRawFd;

use crate::Listener;

impl Listener {
    /// `(queued, limit)`: connections the kernel completed that no worker accepted yet, and the
    /// backlog they may reach. On a listening TCP socket Linux reports both through `TCP_INFO`
    /// (`tcpi_unacked` is the current accept queue, `tcpi_sacked` its limit). `None` for unix
    /// sockets (the kernel has no such getsockopt for them) or when the call fails.
    pub fn accept_queue(&self) -> Option<(u32, u32)> {
        match self {
            Listener::Tcp(l) => tcp_accept_queue(l.as_raw_fd()),
            Listener::Unix { .. } => None,
        }
    }
}

/// `TCP_LISTEN` from the kernel's `tcp_states.h` (libc does not export it).
const TCP_LISTEN: u8 = 10;

fn tcp_accept_queue(fd: std::os::fd::RawFd) -> Option<(u32, u32)> {
    // SAFETY: tcp_info is plain integers; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are ours and `len` is the size of `info`: the kernel writes at most
    // that many bytes and stores how many it wrote in `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0 && info.tcpi_state == TCP_LISTEN).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

#[cfg(test)]
mod tests {
    use crate::{bind, BindSpec, ListenOptions};

    #[test]
    fn a_tcp_listener_reports_connections_nobody_accepted() {
        let spec = BindSpec::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        };
        let listener = bind(&spec, &ListenOptions::default()).unwrap();
        let (queued, limit) = listener.accept_queue().expect("TCP_INFO on a listener");
        assert_eq!(queued, 0);
        assert!(limit > 0);
        let addr = listener.local_addr().unwrap();
        let _clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        assert_eq!(listener.accept_queue().map(|q| q.0), Some(3));
        listener.accept().unwrap();
        assert_eq!(listener.accept_queue().map(|q| q.0), Some(2));
    }
}
