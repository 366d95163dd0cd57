//! The server's side of the arbiter's events: log files, re-exec, pid file, socket files, and the
//! app's own fork hooks.

use std::path::PathBuf;

use ferrocorn_arbiter::{ExitCause, Hooks};
use ferrocorn_listener::Listener;
use log::error;

use crate::logging::{LogFile, WorkerLogs};
use crate::pidfile::PidFile;
use crate::proctitle;
use crate::reexec::StartContext;
use crate::statsd::Statsd;
use crate::ForkObserver;

pub(crate) struct MasterHooks {
    /// NAME of the process titles.
    pub(crate) name: String,
    pub(crate) log_file: LogFile,
    /// Re-created on USR1 (after logrotate moved it) before it is handed to the workers' user.
    pub(crate) access_log_path: Option<PathBuf>,
    /// Files the workers reopen: handed to their user each time the master re-creates them.
    pub(crate) worker_logs: WorkerLogs,
    pub(crate) start: StartContext,
    /// Duplicates of the listeners, passed on by USR2.
    pub(crate) reexec_listeners: Vec<Listener>,
    pub(crate) pidfile: PidFile,
    pub(crate) socket_files: Vec<PathBuf>,
    pub(crate) observer: Box<dyn ForkObserver>,
    /// Where the `gunicorn.workers` gauge goes, and its value.
    pub(crate) statsd: Option<Statsd>,
    pub(crate) workers_running: usize,
}

impl MasterHooks {
    fn workers_changed(&mut self, running: usize) {
        self.workers_running = running;
        if let Some(statsd) = &self.statsd {
            statsd.workers(running);
        }
    }

    fn create_access_log(&self) -> crate::Result<()> {
        match &self.access_log_path {
            Some(path) => crate::access_log::create(path),
            None => Ok(()),
        }
    }
}

impl Hooks for MasterHooks {
    fn before_fork(&mut self) {
        self.observer.before_fork();
    }

    fn after_fork_parent(&mut self, _pid: i32) {
        self.observer.after_fork_parent();
        self.workers_changed(self.workers_running + 1);
    }

    fn worker_exited(&mut self, _pid: i32, _cause: ExitCause) {
        self.workers_changed(self.workers_running.saturating_sub(1));
    }

    fn after_fork_child(&mut self) {
        self.observer.after_fork_child();
    }

    /// gunicorn unlinks its unix sockets when a stop begins, so new clients fail at once instead
    /// of waiting in the backlog for a server that is going away. Workers hold copies of the
    /// listeners but never remove the files; a master started by USR2 (or the one that started
    /// us) still serving on them keeps them.
    fn stop(&mut self, shared: bool) {
        if shared {
            return;
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
            .and_then(|()| self.create_access_log())
            .and_then(|()| self.worker_logs.hand_over())
        {
            error!("{e:#}");
        }
    }

    fn reexec(&mut self) -> Option<i32> {
        let child = self.start.reexec(&self.reexec_listeners);
        if child.is_some() {
            proctitle::set(&format!("ferrocorn: old master [{}]", self.name));
        }
        child
    }

    fn promoted(&mut self) {
        self.pidfile.promote();
    }
}
