//! The accept queue of a listening unix socket, from the kernel's sock_diag netlink interface
//! (what `ss -xl` shows as Recv-Q and Send-Q): unix sockets have no `TCP_INFO`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::AcceptQueue;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
/// `UDIAG_SHOW_RQLEN`: ask for the queue lengths.
const SHOW_RQLEN: u32 = 0x10;
/// The `UNIX_DIAG_RQLEN` attribute: `{ rqueue, wqueue }`, for a listener the connections
/// waiting and the backlog.
const ATTR_RQLEN: u16 = 4;
/// `nlmsghdr` (16 bytes) then `unix_diag_req` (24 bytes).
const REQUEST_LEN: usize = 40;
/// `nlmsghdr` then `unix_diag_msg` (16 bytes); attributes follow.
const ATTRS_AT: usize = 32;

/// The accept queue of the listening unix socket `fd`; `None` where sock_diag is unavailable.
pub(crate) fn accept_queue(fd: RawFd) -> Option<AcceptQueue> {
    let inode = socket_inode(fd)?;
    let netlink = netlink_socket().ok()?;
    send_request(&netlink, inode).ok()?;
    let mut reply = [0u8; 1024];
    // SAFETY: recv writes at most `reply.len()` bytes into the live buffer.
    let n = unsafe {
        libc::recv(
            netlink.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    let reply = reply.get(..usize::try_from(n).ok()?)?;
    parse_reply(reply)
}

fn socket_inode(fd: RawFd) -> Option<u32> {
    // SAFETY: `stat` is plain integers, so all-zero is valid; fstat fills it for an open fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live, writable stat struct.
    let r = unsafe { libc::fstat(fd, &mut st) };
    (r == 0).then_some(st.st_ino as u32)
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes integers only.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `SOCK_DIAG_BY_FAMILY` request for the unix socket with `inode`, listening state only.
fn request(inode: u32) -> [u8; REQUEST_LEN] {
    let mut msg = [0u8; REQUEST_LEN];
    msg[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    // unix_diag_req: family, protocol, pad, states, inode, show, cookie (none: all ones).
    msg[16] = libc::AF_UNIX as u8;
    msg[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    msg[24..28].copy_from_slice(&inode.to_ne_bytes());
    msg[28..32].copy_from_slice(&SHOW_RQLEN.to_ne_bytes());
    msg[32..40].fill(0xff);
    msg
}

fn send_request(netlink: &OwnedFd, inode: u32) -> io::Result<()> {
    let msg = request(inode);
    // SAFETY: an all-zero sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `kernel` are live for the call, with their true lengths.
    let n = unsafe {
        libc::sendto(
            netlink.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `UNIX_DIAG_RQLEN` attribute of a reply (an error reply has none).
fn parse_reply(reply: &[u8]) -> Option<AcceptQueue> {
    let u16_at = |i: usize| Some(u16::from_ne_bytes(reply.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_ne_bytes(reply.get(i..i + 4)?.try_into().ok()?));
    if u16_at(4)? != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let end = (u32_at(0)? as usize).min(reply.len());
    let mut at = ATTRS_AT;
    while at + 4 <= end {
        let (len, kind) = (u16_at(at)? as usize, u16_at(at + 2)?);
        if len < 4 {
            return None;
        }
        if kind == ATTR_RQLEN {
            return Some(AcceptQueue {
                queued: u32_at(at + 4)?,
                limit: u32_at(at + 8)?,
            });
        }
        at += len.div_ceil(4) * 4;
    }
    None
}
