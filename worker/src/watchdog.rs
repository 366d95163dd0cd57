//! The watchdog: a thread that beats for the worker and times requests out, whatever the I/O
//! loop and the app threads are doing (with one app thread, the I/O loop itself calls the app).

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrocorn_http::error_response;
use nix::sys::socket::{send, shutdown, MsgFlags, Shutdown};

use crate::pool::Pool;
use crate::{Monitor, WorkerConfig};

/// How often the watchdog beats and checks the app threads against `--timeout`.
const EVERY: Duration = Duration::from_millis(100);

/// After a stuck request was interrupted, how long before it is abandoned.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// With the app on the I/O thread: how long after abandoning its request the process waits for
/// that thread before it exits without it.
const ABANDONED_RETURN: Duration = Duration::from_secs(1);

pub(crate) struct Watchdog<'r> {
    pub(crate) pool: &'r Pool,
    pub(crate) config: &'r WorkerConfig,
    pub(crate) monitor: &'r dyn Monitor,
    /// The app runs on the I/O thread: nothing else can end the worker if it is stuck.
    pub(crate) inline: bool,
}

impl Watchdog<'_> {
    pub(crate) fn run(&self) {
        while self.pool.watch(EVERY) {
            self.monitor.beat();
            if let Some(timeout) = self.config.timeout {
                self.check(timeout);
            }
        }
    }

    /// Interrupt app threads whose request runs past `timeout`; abandon those that do not
    /// return within [`ABORT_GRACE`] of it.
    fn check(&self, timeout: Duration) {
        let now = Instant::now();
        for (i, lane) in self.pool.lanes.iter().enumerate() {
            if lane.abandoned.load(Ordering::Acquire) {
                continue;
            }
            let mut work = lane.work();
            let Some(since) = work.since else {
                continue;
            };
            match work.interrupted_at {
                None if now.duration_since(since) >= timeout => {
                    work.interrupted_at = Some(now);
                    let request = work.request.clone();
                    drop(work);
                    // gunicorn's words, which operators grep for.
                    log::error!(
                        "WORKER TIMEOUT (pid:{}) serving {request} for {:.1}s",
                        std::process::id(),
                        now.duration_since(since).as_secs_f64()
                    );
                    match lane.interrupter.get() {
                        Some(Some(interrupt)) => interrupt(&request),
                        _ => log::error!(
                            "Worker timed out serving {request}; the app cannot be interrupted"
                        ),
                    }
                }
                Some(at) if now.duration_since(at) >= ABORT_GRACE => {
                    let (request, number, fd) = (work.request.clone(), work.number, work.fd);
                    drop(work);
                    self.abandon(i, &request, number, fd);
                }
                _ => {}
            }
        }
    }

    /// Give up on app thread `i`'s request: answer 500 if the app has not started its response,
    /// end the connection, and retire the worker (the thread may never come back).
    fn abandon(&self, i: usize, request: &str, number: u64, fd: RawFd) {
        log::error!(
            "The request {request} did not end {:.0}s after it was interrupted; answering 500 and \
             retiring the worker",
            ABORT_GRACE.as_secs_f64()
        );
        let lane = &self.pool.lanes[i];
        if lane.abandon(number) {
            let _ = send(fd, &error_response(500), MsgFlags::MSG_NOSIGNAL);
        }
        // The app thread still owns the socket; shutting it down (not closing) ends the
        // exchange for the client without freeing the descriptor under the thread.
        let _ = shutdown(fd, Shutdown::Both);
        self.monitor.request_abandoned(i);
        self.pool.abort();
        if self.inline && !self.pool.wait_for_abandoned(ABANDONED_RETURN) {
            // The I/O loop is the stuck thread: nobody else would ever end this process.
            log::error!("Worker exiting with a request still stuck in the application");
            std::process::exit(0);
        }
    }
}
