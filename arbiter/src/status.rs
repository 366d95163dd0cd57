//! What the master shows of itself to code served from its loop (a stats endpoint), and the
//! poll over its signal queue plus descriptors of that code.

use std::os::fd::RawFd;
use std::time::Duration;

use crate::hooks::ExitCause;
use crate::scoreboard::SlotSnapshot;

/// One live worker as the master knows it.
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    /// The worker's process id.
    pub pid: i32,
    /// gunicorn's age: 1 for the first worker ever forked, counting up.
    pub age: u64,
    /// Time since it was forked.
    pub uptime: Duration,
    /// Sent TERM (scaled down, replaced by a reload, stopping).
    pub retiring: bool,
    /// Why the worker it replaced exited; `None` for a worker of the first set, a reload's or one
    /// added by TTIN.
    pub predecessor_exit: Option<ExitCause>,
    /// Its scoreboard slot.
    pub slot: SlotSnapshot,
}

/// The master's state at one moment.
#[derive(Debug, Clone)]
pub struct ArbiterStatus {
    /// The master's process id.
    pub master_pid: i32,
    /// Workers to keep (`-w`, changed by TTIN/TTOU).
    pub target: usize,
    /// The live workers, retiring ones included.
    pub workers: Vec<WorkerStatus>,
    /// Requests served by workers that have exited.
    pub exited_served: u64,
    /// Responses by status class (`[1xx, .., 5xx]`) sent by workers that have exited.
    pub exited_statuses: [u64; 5],
}

/// What a descriptor of [`Hooks::poll_fds`](crate::Hooks::poll_fds) waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Readable (or hung up).
    Read,
    /// Writable.
    Write,
}

/// A descriptor the master's loop polls beside its signal queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollFd {
    /// The descriptor to poll.
    pub fd: RawFd,
    /// What to wait for.
    pub want: Want,
}

/// Wait up to `timeout` for the signal queue or one of `extra`; returns the ready ones of `extra`
/// (the caller drains the signal queue either way). EINTR counts as "something happened": the
/// signal that caused it is in the queue.
pub(crate) fn poll_with_signals(
    signal_fd: RawFd,
    extra: &[PollFd],
    timeout: Duration,
) -> Vec<RawFd> {
    let mut fds: Vec<libc::pollfd> = std::iter::once(pollfd(signal_fd, libc::POLLIN))
        .chain(extra.iter().map(|p| {
            let events = match p.want {
                Want::Read => libc::POLLIN,
                Want::Write => libc::POLLOUT,
            };
            pollfd(p.fd, events)
        }))
        .collect();
    let ms = timeout
        .as_nanos()
        .div_ceil(1_000_000)
        .min(libc::c_int::MAX as u128) as libc::c_int;
    if poll(&mut fds, ms) <= 0 {
        return Vec::new();
    }
    fds[1..]
        .iter()
        .filter(|p| p.revents != 0)
        .map(|p| p.fd)
        .collect()
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> libc::c_int {
    // SAFETY: `fds` is a live, writable array of `fds.len()` pollfd structs.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }
}
