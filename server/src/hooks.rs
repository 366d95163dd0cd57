//! The server's side of the arbiter's events: log files, re-exec, pid file, socket files, and the
//! app's own fork hooks.

use std::path::PathBuf;

use ferrocorn_arbiter::scaling::MemoryFigures;
use ferrocorn_arbiter::Hooks;
use ferrocorn_listener::Listener;
use log::{debug, error};

use crate::logging::{LogFile, WorkerLogs};
use crate::pidfile::PidFile;
use crate::reexec::StartContext;
use crate::ForkObserver;

pub(crate) struct MasterHooks {
    pub(crate) log_file: LogFile,
    /// Files the workers reopen: handed to their user each time the master re-creates them.
    pub(crate) worker_logs: WorkerLogs,
    pub(crate) start: StartContext,
    /// Duplicates of the listeners, passed on by USR2 (and made to refuse new connections when
    /// the server stops for good).
    pub(crate) reexec_listeners: Vec<Listener>,
    pub(crate) pidfile: PidFile,
    pub(crate) socket_files: Vec<PathBuf>,
    pub(crate) observer: Box<dyn ForkObserver>,
}

impl Hooks for MasterHooks {
    fn before_fork(&mut self) {
        self.observer.before_fork();
    }

    fn after_fork_parent(&mut self, _pid: i32) {
        self.observer.after_fork_parent();
    }

    fn after_fork_child(&mut self) {
        self.observer.after_fork_child();
    }

    /// gunicorn unlinks its unix sockets when a stop begins, so new clients fail at once instead
    /// of waiting in the backlog for a server that is going away. Workers hold copies of the
    /// listeners but never remove the files; a master started by USR2 (or the one that started
    /// us) still serving on them keeps them. TCP listeners stop completing new handshakes for
    /// the same reason, and so that the workers can drain the accept queue instead of leaving it
    /// to be reset when the last copy of the socket closes.
    fn stop(&mut self, shared: bool) {
        if shared {
            return;
        }
        for listener in &self.reexec_listeners {
            match listener.refuse_new_connections() {
                Ok(()) => debug!("Refusing new connections on {}", listener.describe()),
                Err(e) => error!(
                    "cannot refuse new connections on {}: {e}",
                    listener.describe()
                ),
            }
        }
        for path in &self.socket_files {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    error!("cannot remove {}: {e}", path.display())
                }
                _ => {}
            }
        }
    }

    /// Runs before the master passes SIGUSR1 on, so workers find files they may open.
    fn reopen_logs(&mut self) {
        if let Err(e) = self
            .log_file
            .open()
            .and_then(|()| self.worker_logs.hand_over())
        {
            error!("{e:#}");
        }
    }

    fn reexec(&mut self) -> Option<i32> {
        self.start.reexec(&self.reexec_listeners)
    }

    fn promoted(&mut self) {
        self.pidfile.promote();
    }

    fn process_memory(&mut self, pid: i32) -> Option<MemoryFigures> {
        crate::sizing::process_memory(pid)
    }

    /// Summed over the listeners that report one (TCP); `None` if none does (unix sockets).
    fn accept_queue(&mut self) -> Option<(u32, u32)> {
        self.reexec_listeners
            .iter()
            .filter_map(Listener::accept_queue)
            .reduce(|(q, l), (q2, l2)| (q + q2, l + l2))
    }
}
