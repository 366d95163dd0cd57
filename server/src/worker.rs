//! What each forked worker does: drop privileges, build the app, serve, exit.

use ferrocorn_arbiter::{WorkerContext, WorkerSlot};
use ferrocorn_listener::Listener;
use ferrocorn_signals::WorkerSignals;
use ferrocorn_worker::{Completed, Monitor, RequestHead, ThreadApp, WorkerConfig};
use log::{debug, error, info};
use std::ops::ControlFlow;
use std::sync::Mutex;

use crate::access_log::AccessLog;
use crate::statsd::{RequestMetrics, Statsd};

use crate::logging::LogFile;
use crate::privileges::Owner;
use crate::reload::FileLists;
use crate::AppLoader;

pub(crate) struct Worker<'a> {
    pub(crate) owner: &'a Owner,
    pub(crate) loader: &'a mut dyn AppLoader,
    pub(crate) listeners: &'a [Listener],
    pub(crate) config: WorkerConfig,
    /// App threads (`--threads`).
    pub(crate) threads: usize,
    pub(crate) max_requests_jitter: u64,
    pub(crate) log_file: &'a LogFile,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) statsd: Option<&'a Statsd>,
    /// This process's title once forked.
    pub(crate) title: String,
    /// With `--reload`: where to record the files the app was loaded from.
    pub(crate) file_lists: Option<&'a FileLists>,
}

impl Worker<'_> {
    /// The forked child's life; returns its exit code.
    pub(crate) fn run(&mut self, ctx: WorkerContext) -> i32 {
        let access_log = match self.prepare_process(&ctx) {
            ControlFlow::Continue(access_log) => access_log,
            ControlFlow::Break(code) => return code,
        };
        let Some(mut apps) = self.load_apps(&ctx) else {
            return ferrocorn_arbiter::WORKER_BOOT_ERROR;
        };
        let mut config = self.config.clone();
        config.max_requests = jittered(config.max_requests, self.max_requests_jitter);
        let monitor = WorkerMonitor {
            slot: &ctx.slot,
            signals: &ctx.signals,
            log_file: self.log_file,
            access_log: access_log.map(Mutex::new),
            statsd: self.statsd.map(|s| Mutex::new(RequestMetrics::new(s))),
        };
        let served =
            ferrocorn_worker::run(&mut apps, self.listeners, &config, &ctx.signals, &monitor);
        monitor.flush();
        if ctx.signals.state() == ferrocorn_signals::WorkerState::Exit {
            self.loader.interrupted();
        }
        self.loader.before_exit();
        exit_code(served)
    }

    /// Title, privileges and the parent-death signal, then the access log opened (as the worker's
    /// user). `Break` carries the exit code when the worker must stop here.
    fn prepare_process(&mut self, ctx: &WorkerContext) -> ControlFlow<i32, Option<AccessLog>> {
        crate::proctitle::set(&self.title);
        if let Err(e) = self.owner.apply() {
            error!("{e:#}");
            return ControlFlow::Break(ferrocorn_arbiter::WORKER_BOOT_ERROR);
        }
        // Dropping privileges cleared the kernel's parent-death signal: ask again.
        if self.owner.changes_credentials() && !ctx.stop_with_master() {
            info!("Parent changed, shutting down");
            return ControlFlow::Break(0);
        }
        let mut access_log = self.access_log.take();
        if let Some(log) = &mut access_log {
            if let Err(e) = log.open() {
                error!("{e:#}");
                return ControlFlow::Break(ferrocorn_arbiter::WORKER_BOOT_ERROR);
            }
        }
        ControlFlow::Continue(access_log)
    }

    /// The app of each app thread, from the loader; `None` (logged) if their count does not
    /// match the scoreboard's lanes.
    fn load_apps(&mut self, ctx: &WorkerContext) -> Option<Vec<ThreadApp>> {
        self.loader.worker_started(&crate::WorkerIdentity {
            age: ctx.age,
            master_pid: ctx.master_pid,
        });
        let apps = self.loader.load(self.threads);
        if apps.len() != ctx.slot.lanes() {
            // Each app thread writes its own scoreboard lane, sized at start from --threads.
            error!(
                "The app loader made {} apps for {} app threads",
                apps.len(),
                ctx.slot.lanes()
            );
            return None;
        }
        if let Some(lists) = self.file_lists {
            lists.write(&self.loader.imported_files());
        }
        Some(apps)
    }
}

/// The worker's exit code for how serving ended, logged.
fn exit_code(served: std::io::Result<ferrocorn_worker::Exit>) -> i32 {
    match served {
        Ok(exit) => {
            info!("Worker exiting ({exit:?})");
            0
        }
        Err(e) => {
            error!("Worker failed: {e}");
            1
        }
    }
}

/// The worker's progress, written to its scoreboard slot for the arbiter.
struct WorkerMonitor<'a> {
    slot: &'a WorkerSlot,
    signals: &'a WorkerSignals,
    log_file: &'a LogFile,
    /// Shared by the app threads; a line is written whole under the lock.
    access_log: Option<Mutex<AccessLog>>,
    statsd: Option<Mutex<RequestMetrics<'a>>>,
}

impl WorkerMonitor<'_> {
    /// Write the access log lines and send the metrics still waiting.
    fn flush(&self) {
        if let Some(log) = &self.access_log {
            lock(log).flush();
        }
        if let Some(metrics) = &self.statsd {
            lock(metrics).flush();
        }
    }

    /// Write and send what has waited long enough (see `batch.rs`).
    fn flush_if_due(&self) {
        if let Some(log) = &self.access_log {
            lock(log).flush_if_due();
        }
        if let Some(metrics) = &self.statsd {
            lock(metrics).flush_if_due();
        }
    }
}

impl Monitor for WorkerMonitor<'_> {
    /// Called at least once a second: besides beating, it is where a worker sends the access
    /// log lines and metrics that have waited, and notices SIGUSR1 and moves its fd 2 to the
    /// new log file, as the master does (the access log writes its waiting lines first).
    fn beat(&self) {
        self.slot.beat();
        self.flush_if_due();
        if self.signals.take_reopen_logs() {
            // The access log first: once the line below is out, both files are the new ones.
            if let Some(Err(e)) = self.access_log.as_ref().map(|log| lock(log).open()) {
                error!("{e:#}");
            }
            match self.log_file.open() {
                Ok(()) => info!("Worker reopened its log file"),
                Err(e) => error!("{e:#}"),
            }
        }
    }

    fn request_started(&self, thread: usize, head: &RequestHead) {
        self.slot
            .request_started(thread, head.method(), head.path());
        // gunicorn's default `pre_request` hook.
        debug!("{} {}", head.method(), head.path());
    }

    fn request_finished(&self, thread: usize, done: &Completed<'_>) {
        if let Some(status) = done.status {
            self.slot.count_status(status);
        }
        self.slot.request_finished(thread);
        if let Some(log) = &self.access_log {
            lock(log).log(done);
        }
        if let Some(metrics) = &self.statsd {
            lock(metrics).request(done);
        }
    }

    /// The worker answered 500 for a request its thread never returned from: over for the
    /// scoreboard (the master would otherwise take the thread for stuck and kill the worker
    /// while its other requests finish).
    fn request_abandoned(&self, thread: usize) {
        self.slot.count_status(500);
        self.slot.request_finished(thread);
    }

    /// Heads waiting for an app thread: the master counts them like its listeners' queue.
    fn waiting(&self, heads: usize) {
        self.slot.set_waiting(heads);
    }

    /// The master sets the flag before it sends TERM when no other master shares the sockets.
    fn drain_on_stop(&self) -> bool {
        self.slot.server_stopping()
    }
}

/// The access log or the metrics, also after a thread panicked holding them (a line is all it
/// could have cut).
fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker's share of `--max-requests-jitter`, spread by pid so workers restart at different
/// times: `max_requests + [0, jitter]`, like gunicorn's `randint(0, jitter)`.
fn jittered(max_requests: u64, jitter: u64) -> u64 {
    jittered_for(std::process::id(), max_requests, jitter)
}

fn jittered_for(pid: u32, max_requests: u64, jitter: u64) -> u64 {
    if max_requests == 0 || jitter == 0 {
        return max_requests;
    }
    // Knuth's multiplicative hash: consecutive pids land far apart.
    max_requests + u64::from(pid).wrapping_mul(2_654_435_761) % (jitter + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_spreads_workers() {
        let limits: std::collections::BTreeSet<u64> =
            (1000..1100).map(|pid| jittered_for(pid, 50, 10)).collect();
        assert!(limits.iter().all(|n| (50..=60).contains(n)), "{limits:?}");
        assert!(
            limits.len() >= 8,
            "consecutive pids get different limits: {limits:?}"
        );
        assert_eq!(jittered_for(1234, 50, 0), 50);
        assert_eq!(jittered_for(1234, 0, 10), 0, "no --max-requests, no limit");
    }
}
