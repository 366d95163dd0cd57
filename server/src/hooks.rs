//! The server's side of the arbiter's events: log files, re-exec, pid file, socket files, and the
//! app's own fork hooks.

use std::path::PathBuf;

use std::os::fd::RawFd;

use ferrocorn_arbiter::scaling::MemoryFigures;
use ferrocorn_arbiter::{ArbiterStatus, ExitCause, Hooks, PollFd};
use ferrocorn_listener::{BindSpec, Listener};
use log::{debug, error, info};

use crate::logging::{LogFile, WorkerLogs};
use crate::pidfile::PidFile;
use crate::proctitle;
use crate::reexec::StartContext;
use crate::stats::StatsServer;
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
    /// Duplicates of the listeners, passed on by USR2 (and made to refuse new connections when
    /// the server stops for good).
    pub(crate) reexec_listeners: Vec<Listener>,
    pub(crate) pidfile: PidFile,
    pub(crate) socket_files: Vec<PathBuf>,
    pub(crate) observer: Box<dyn ForkObserver>,
    /// The master's life events for a config file's hooks.
    pub(crate) events: crate::event_feed::EventFeed,
    /// `--stats`, served from the master's loop.
    pub(crate) stats: Option<StatsServer>,
    /// `--stats` not bound yet: a master started by USR2 finds it taken by its parent, and binds
    /// it once promoted.
    pub(crate) stats_retry: Option<BindSpec>,
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
        self.events.before_fork();
        self.observer.before_fork();
    }

    fn after_fork_parent(&mut self, pid: i32) {
        self.observer.after_fork_parent();
        self.workers_changed(self.workers_running + 1);
        self.events.forked(pid);
    }

    fn after_fork_child(&mut self) {
        // The stats socket and its clients are the master's: close them in the worker.
        self.stats = None;
        self.events.forked_child();
        self.observer.after_fork_child();
    }

    fn worker_exited(&mut self, pid: i32, cause: ExitCause) {
        self.workers_changed(self.workers_running.saturating_sub(1));
        self.events.exited(pid);
        if let Some(stats) = &mut self.stats {
            stats.worker_exited(cause);
        }
    }

    fn worker_count_changed(&mut self, target: usize) {
        self.events.count_changed(target);
    }

    fn ready(&mut self) {
        self.events.ready();
    }

    fn reload(&mut self) {
        self.events.reload();
    }

    fn poll_fds(&mut self) -> Vec<PollFd> {
        self.stats
            .as_mut()
            .map_or_else(Vec::new, StatsServer::poll_fds)
    }

    fn fd_ready(&mut self, fd: RawFd, status: &ArbiterStatus) {
        if let Some(stats) = &mut self.stats {
            stats.fd_ready(fd, status);
        }
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
        if let Some(stats) = &self.stats {
            stats.remove_socket_file();
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
        self.events.pre_exec();
        let child = self.start.reexec(&self.reexec_listeners);
        if child.is_some() {
            proctitle::set(&format!("ferrocorn: old master [{}]", self.name));
        }
        child
    }

    fn process_memory(&mut self, pid: i32) -> Option<MemoryFigures> {
        crate::sizing::process_memory(pid)
    }

    /// Summed over the listeners that report one (TCP); `None` if none does (unix sockets).
    fn accept_queue(&mut self) -> Option<(u32, u32)> {
        self.reexec_listeners
            .iter()
            .filter_map(Listener::accept_queue)
            .map(|q| (q.queued, q.limit))
            .reduce(|(q, l), (q2, l2)| (q + q2, l + l2))
    }

    fn promoted(&mut self) {
        self.pidfile.promote();
        if let Some(spec) = self.stats_retry.take() {
            self.bind_stats(&spec);
        }
    }
}

impl MasterHooks {
    fn bind_stats(&mut self, spec: &BindSpec) {
        let bound = ferrocorn_listener::bind(spec, &crate::stats_listen_options())
            .map_err(crate::Error::from)
            .and_then(|l| crate::stats_server(l, &self.reexec_listeners));
        match bound {
            Ok(server) => {
                info!("Stats at {spec}");
                self.stats = Some(server);
            }
            Err(e) => error!("--stats {spec}: {e:#}"),
        }
    }
}
