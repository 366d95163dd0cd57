//! UNIX signals for ferrocorn as typed commands.
//!
//! The arbiter installs [`MasterSignals`] before anything else (so an embedded Python never takes
//! SIGINT) and sleeps on it; each worker, right after fork, replaces those handlers with
//! [`WorkerSignals`].
//!
//! INTERFACE STUB — the signals helper owns this crate and replaces the `todo!()`s. Keep the public
//! names and signatures (adding is fine).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// What a signal asks the arbiter to do (gunicorn's meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// SIGHUP: reload configuration, replace workers.
    Reload,
    /// SIGTERM: graceful stop.
    GracefulStop,
    /// SIGINT / SIGQUIT: quick stop.
    QuickStop,
    /// SIGTTIN: one more worker.
    IncrementWorkers,
    /// SIGTTOU: one fewer worker.
    DecrementWorkers,
    /// SIGUSR1: reopen log files.
    ReopenLogs,
    /// SIGUSR2: re-exec the binary (upgrade on the fly).
    Reexec,
    /// SIGWINCH: stop all workers, keep the master (daemonized only).
    StopWorkers,
    /// SIGCHLD: a child changed state; reap.
    ChildExited,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("installing signal handlers: {0}")]
    Install(#[from] io::Error),
}

/// The master's handlers: every signal becomes a queued [`Command`], in arrival order.
#[derive(Debug)]
pub struct MasterSignals {
    _todo: (),
}

impl MasterSignals {
    pub fn install() -> Result<Self, Error> {
        todo!()
    }
    /// Block until a command arrives or `timeout` passes; returns everything queued (maybe empty).
    pub fn wait(&mut self, _timeout: Duration) -> Vec<Command> {
        todo!()
    }
    /// Send a command to ourselves (e.g. tests, or the arbiter waking itself).
    pub fn wake(&self) {
        todo!()
    }
}

/// A worker's handlers, installed in the child after fork, replacing the master's.
#[derive(Debug)]
pub struct WorkerSignals {
    _todo: (),
}

/// What the worker should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Running,
    /// SIGTERM: finish the request in hand, then exit.
    Stopping,
    /// SIGINT / SIGQUIT: exit now.
    Exit,
}

impl WorkerSignals {
    /// Call in the child right after fork: drops the master's handlers and installs the worker's.
    /// Consumes the inherited `MasterSignals` so its pipe/fds are closed in the child.
    pub fn install_replacing(_master: MasterSignals) -> Result<Self, Error> {
        todo!()
    }
    pub fn state(&self) -> WorkerState {
        todo!()
    }
    /// A file descriptor that becomes readable when a signal arrives, for `poll` beside listeners.
    pub fn wake_fd(&self) -> RawFd {
        todo!()
    }
    /// Drain the wake fd after poll reported it readable.
    pub fn clear_wake(&self) {
        todo!()
    }
}
