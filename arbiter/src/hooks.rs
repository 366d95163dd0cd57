//! What the arbiter tells the code around it: one trait, every method a no-op by default.

use std::os::fd::RawFd;

use log::warn;

use crate::scaling::MemoryFigures;
use crate::status::{ArbiterStatus, PollFd};

/// Why a worker process ended, as far as the arbiter can tell from its exit status and from what
/// it did to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// Exited with status 0 on its own. Today the only such reason is `--max-requests` (or its
    /// master going away), which the exit status does not tell apart.
    MaxRequests,
    /// The master retired it: scaled down (TTOU, autoscaling, `--workers auto`), replaced by a
    /// reload (HUP) or for its memory or age, or stopping.
    ScaleDown,
    /// Silent for longer than `--timeout`: aborted, then killed.
    Timeout,
    /// Killed by a SIGKILL the master did not send: most likely the kernel's OOM killer.
    Memory,
    /// Could not start: [`WORKER_BOOT_ERROR`](crate::WORKER_BOOT_ERROR) or
    /// [`APP_LOAD_ERROR`](crate::APP_LOAD_ERROR), which stop the server.
    BootFailure(i32),
    /// Any other exit code or signal.
    Crash {
        /// The exit code, if the worker exited.
        code: Option<i32>,
        /// The signal that killed the worker, if one did.
        signal: Option<i32>,
    },
}

/// Events of the master's life. Every method runs in the master process, on its only thread
/// (the master forks, so it must not start threads), except
/// [`after_fork_child`](Hooks::after_fork_child), which runs in the new worker.
pub trait Hooks {
    /// Just before each fork (e.g. CPython's `PyOS_BeforeFork` when the app is preloaded).
    fn before_fork(&mut self) {}
    /// In the master just after forking worker `pid`.
    fn after_fork_parent(&mut self, pid: i32) {
        let _ = pid;
    }
    /// In the new worker just after fork, before its signal handlers are installed.
    fn after_fork_child(&mut self) {}
    /// A worker was reaped.
    fn worker_exited(&mut self, pid: i32, cause: ExitCause) {
        let _ = (pid, cause);
    }
    /// The number of workers to keep changed (TTIN/TTOU, autoscaling, `--workers auto`) to
    /// `target`.
    fn worker_count_changed(&mut self, target: usize) {
        let _ = target;
    }
    /// The first workers have been forked.
    fn ready(&mut self) {}
    /// HUP: a fresh set of workers is about to be forked.
    fn reload(&mut self) {}
    /// A stop begins, before the workers are told. `shared`: another master (started by USR2,
    /// or the one that started us) serves on the same sockets, so leave their files in place.
    fn stop(&mut self, shared: bool) {
        let _ = shared;
    }
    /// USR1, before the signal is passed on to the workers.
    fn reopen_logs(&mut self) {}
    /// USR2: start a new master process (a re-exec that inherits the listeners) and return its
    /// pid, or `None` if it could not be started (log why). It runs beside this one until this
    /// one is stopped, as in gunicorn.
    fn reexec(&mut self) -> Option<i32> {
        warn!("USR2 signal ignored: re-exec is not supported here");
        None
    }
    /// The master that started this one by USR2 has exited: this one is the master now.
    fn promoted(&mut self) {}
    /// The memory of process `pid` (a worker, or the master itself), for `--workers auto`,
    /// autoscaling within a memory budget and memory recycling. `None`: not measured.
    fn process_memory(&mut self, pid: i32) -> Option<MemoryFigures> {
        let _ = pid;
        None
    }
    /// The listeners' accept queues, summed: `(queued, limit)`. `None`: unknown (then the
    /// autoscaler counts all workers busy as pressure).
    fn accept_queue(&mut self) -> Option<(u32, u32)> {
        None
    }
    /// Descriptors to poll beside the signal queue on every turn of the master's loop (which
    /// turns at least once a second), e.g. a stats listener and its connections. The master must
    /// never block: whatever is served on them must be non-blocking.
    fn poll_fds(&mut self) -> Vec<PollFd> {
        Vec::new()
    }
    /// `fd`, one of [`poll_fds`](Hooks::poll_fds), is ready; `status` is the master's state now.
    fn fd_ready(&mut self, fd: RawFd, status: &ArbiterStatus) {
        let _ = (fd, status);
    }
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// How [`Arbiter::run`](crate::Arbiter::run) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal (TERM, INT, QUIT).
    Stopped,
    /// A worker exited with [`WORKER_BOOT_ERROR`](crate::WORKER_BOOT_ERROR).
    WorkerBootError,
    /// A worker exited with [`APP_LOAD_ERROR`](crate::APP_LOAD_ERROR).
    AppLoadError,
}

impl Exit {
    /// The master's exit code (gunicorn's).
    pub fn code(self) -> i32 {
        match self {
            Exit::Stopped => 0,
            Exit::WorkerBootError => crate::WORKER_BOOT_ERROR,
            Exit::AppLoadError => crate::APP_LOAD_ERROR,
        }
    }

    /// gunicorn's "Reason:" line for a failed exit.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Exit::Stopped => None,
            Exit::WorkerBootError => Some("Worker failed to boot."),
            Exit::AppLoadError => Some("App failed to load."),
        }
    }
}
