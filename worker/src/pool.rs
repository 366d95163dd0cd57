//! What the I/O thread and the app threads share: requests ready to serve, connections coming
//! back, and what each app thread ("lane") is doing, for timeouts.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ferrocorn_http::RequestHead;
use ferrocorn_listener::{PeerAddr, Stream};

use crate::sock::{Linger, ReadBuf};
use crate::Interrupter;

/// A connection as it moves between the I/O thread and an app thread.
pub(crate) struct Connection {
    pub(crate) stream: Stream,
    pub(crate) peer: PeerAddr,
    /// Which listener accepted it.
    pub(crate) listener: usize,
    /// Received bytes not consumed yet (the body's start, pipelined requests).
    pub(crate) rbuf: ReadBuf,
    /// Its place in the I/O loop's table, kept while it is away.
    pub(crate) token: usize,
    /// TCP_NODELAY is on.
    pub(crate) nodelay: bool,
    /// In the I/O loop's poll set: only once it had to wait for the client (a request read and
    /// answered at once, as behind a proxy, never costs the registration).
    pub(crate) watched: bool,
    /// Nothing was left to read in the socket when the I/O loop last read it, and the request
    /// in hand does not read it either (its body, if any, is buffered): with the connection
    /// watched, the next bytes raise an event, so nobody needs to look before that.
    pub(crate) quiet: bool,
}

/// A request whose head is complete, for an app thread.
pub(crate) struct Job {
    pub(crate) conn: Connection,
    pub(crate) head: RequestHead,
    /// The response must close the connection (the worker stops or retires after it).
    pub(crate) last: bool,
}

/// What happens to a connection once its response is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Wait for its next request.
    KeepAlive,
    /// Close it (lingering as told) once the output is flushed.
    Close(Linger),
}

/// A connection an app thread is done with.
pub(crate) struct Returned {
    pub(crate) conn: Connection,
    /// Response bytes the socket did not take yet.
    pub(crate) out: Vec<u8>,
    pub(crate) after: After,
    /// The app was aborted (worker timeout): the worker retires.
    pub(crate) aborted: bool,
    /// The I/O thread had abandoned the request (and answered it).
    pub(crate) abandoned: bool,
}

struct Queue {
    jobs: VecDeque<Job>,
    returned: Vec<Returned>,
    /// App threads waiting for a job.
    idle: usize,
    /// No more jobs will come: waiting threads exit.
    closed: bool,
}

/// How a lane's response claim stands: the low two bits of [`Lane::claim`], above them the
/// number of the lane's request, so a claim is only ever taken on the request it was meant for.
const FREE: u64 = 0;
const WRITING: u64 = 1;
const ABANDONED: u64 = 2;
const STATE_BITS: u32 = 2;

/// One app thread's current request, as the I/O thread watches it.
pub(crate) struct Work {
    /// When it was handed to the thread; `None` while the thread is idle.
    pub(crate) since: Option<Instant>,
    /// `METHOD path`.
    pub(crate) request: String,
    /// The connection's socket, to answer an abandoned request.
    pub(crate) fd: RawFd,
    /// Its number on this lane (see [`Lane::claim`]).
    pub(crate) number: u64,
    /// When the I/O thread interrupted it.
    pub(crate) interrupted_at: Option<Instant>,
}

/// What an app thread shares about itself.
pub(crate) struct Lane {
    pub(crate) work: Mutex<Work>,
    /// Who may write the current response: the app thread, or the I/O thread once it abandoned
    /// the request (see the constants above).
    claim: AtomicU64,
    pub(crate) interrupter: OnceLock<Option<Interrupter>>,
    /// The request in hand was abandoned: the thread is presumed stuck for good.
    pub(crate) abandoned: AtomicBool,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            work: Mutex::new(Work {
                since: None,
                request: String::new(),
                fd: -1,
                number: 0,
                interrupted_at: None,
            }),
            claim: AtomicU64::new(FREE),
            interrupter: OnceLock::new(),
            abandoned: AtomicBool::new(false),
        }
    }

    pub(crate) fn work(&self) -> MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The app thread takes request `job` on this lane.
    pub(crate) fn begin(&self, head: &RequestHead, fd: RawFd) {
        let mut work = self.work();
        work.number += 1;
        work.since = Some(Instant::now());
        work.request.clear();
        work.request.push_str(head.method());
        work.request.push(' ');
        work.request.push_str(head.path());
        work.fd = fd;
        work.interrupted_at = None;
        self.claim
            .store(work.number << STATE_BITS | FREE, Ordering::Release);
    }

    /// The app thread is done with its request.
    pub(crate) fn end(&self) {
        let mut work = self.work();
        work.since = None;
        work.fd = -1;
    }

    /// The app thread is about to send response bytes: `false` when the I/O thread abandoned
    /// the request (it answered the client itself).
    pub(crate) fn claim_response(&self) -> bool {
        let now = self.claim.load(Ordering::Acquire);
        match now & ((1 << STATE_BITS) - 1) {
            FREE => {
                let writing = now & !((1 << STATE_BITS) - 1) | WRITING;
                self.claim
                    .compare_exchange(now, writing, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            }
            WRITING => true,
            _ => false,
        }
    }

    /// The I/O thread gives up on request `number`: `true` when the app never began its
    /// response, so the I/O thread may answer it.
    pub(crate) fn abandon(&self, number: u64) -> bool {
        self.abandoned.store(true, Ordering::Release);
        self.claim
            .compare_exchange(
                number << STATE_BITS | FREE,
                number << STATE_BITS | ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// The job queue and the lanes.
pub(crate) struct Pool {
    queue: Mutex<Queue>,
    job_ready: Condvar,
    waker: mio::Waker,
    pub(crate) lanes: Vec<Lane>,
    /// Responses from now on close their connection (the worker stops or retires).
    closing: AtomicBool,
    /// The I/O thread is (about to be) asleep in its poll: only then does it need a wake-up.
    io_asleep: AtomicBool,
    /// A request was abandoned since the I/O loop last looked: the worker retires.
    aborted: AtomicBool,
    /// Set when the worker is done: the watchdog stops.
    done: Mutex<bool>,
    done_changed: Condvar,
}

impl Pool {
    pub(crate) fn new(threads: usize, waker: mio::Waker) -> Pool {
        Pool {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                returned: Vec::new(),
                idle: 0,
                closed: false,
            }),
            job_ready: Condvar::new(),
            waker,
            lanes: (0..threads).map(|_| Lane::new()).collect(),
            closing: AtomicBool::new(false),
            io_asleep: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            done: Mutex::new(false),
            done_changed: Condvar::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hand a request to an app thread. Returns how many wait for a thread now.
    pub(crate) fn push(&self, job: Job) {
        let mut q = self.queue();
        q.jobs.push_back(job);
        // A thread that is not waiting takes the job when it next looks: no wake-up needed.
        let someone_waits = q.idle >= q.jobs.len();
        drop(q);
        if someone_waits {
            self.job_ready.notify_one();
        }
    }

    /// Idle app threads less the jobs already waiting for one (may be negative).
    pub(crate) fn spare_threads(&self) -> isize {
        let q = self.queue();
        q.idle as isize - q.jobs.len() as isize
    }

    /// Give back the connection of the previous job, if any, and wait for the next job; `None`
    /// once the pool is closed and empty. The thread counts as idle from the moment it gives
    /// the connection back, so the I/O thread woken for it sees the free thread too.
    pub(crate) fn next_job(&self, previous: Option<Returned>) -> Option<Job> {
        let mut q = self.queue();
        if let Some(returned) = previous {
            q.returned.push(returned);
        }
        q.idle += 1;
        // The I/O thread may accept again (and takes the connection back).
        self.wake_if_asleep();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                q.idle -= 1;
                return Some(job);
            }
            if q.closed {
                q.idle -= 1;
                return None;
            }
            q = self.job_ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// How many complete heads wait for a thread.
    pub(crate) fn waiting(&self) -> usize {
        self.queue().jobs.len()
    }

    /// Wake the I/O thread (a thread became idle, or a connection came back) if it sleeps; an
    /// I/O thread still at work looks at the queue before it sleeps (see [`Pool::may_sleep`]).
    fn wake_if_asleep(&self) {
        if !self.io_asleep.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.waker.wake() {
            log::error!("waking the I/O thread failed: {e}");
        }
    }

    /// The I/O thread is about to sleep: `false` when a connection came back meanwhile (then it
    /// must not). Either the app thread sees the flag and wakes it, or this sees its connection.
    pub(crate) fn may_sleep(&self) -> bool {
        self.io_asleep.store(true, Ordering::SeqCst);
        if self.queue().returned.is_empty() {
            return true;
        }
        self.awake();
        false
    }

    /// The I/O thread is awake (after its poll).
    pub(crate) fn awake(&self) {
        self.io_asleep.store(false, Ordering::SeqCst);
    }

    /// The connections given back since the last call.
    pub(crate) fn take_returned(&self, into: &mut Vec<Returned>) {
        std::mem::swap(&mut self.queue().returned, into);
    }

    /// No jobs are waiting and every app thread not presumed stuck is idle.
    pub(crate) fn all_idle(&self) -> bool {
        let q = self.queue();
        let stuck = self
            .lanes
            .iter()
            .filter(|l| l.abandoned.load(Ordering::Acquire))
            .count();
        q.jobs.is_empty() && q.returned.is_empty() && q.idle + stuck >= self.lanes.len()
    }

    /// Let the app threads exit once the queue is empty.
    pub(crate) fn close(&self) {
        self.queue().closed = true;
        self.job_ready.notify_all();
    }

    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A request was abandoned: tell the I/O loop.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::error!("waking the I/O thread failed: {e}");
        }
    }

    /// Whether a request was abandoned since the last call.
    pub(crate) fn take_aborted(&self) -> bool {
        self.aborted.swap(false, Ordering::SeqCst)
    }

    /// How many lanes' requests are abandoned (their connections may never come back).
    pub(crate) fn abandoned_count(&self) -> usize {
        self.lanes
            .iter()
            .filter(|l| l.abandoned.load(Ordering::Acquire))
            .count()
    }

    /// Wait up to `limit` for every abandoned request's thread to come back (at the end, when
    /// nothing else is left to do); `true` if they did.
    pub(crate) fn wait_for_abandoned(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.any_abandoned() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The watchdog's wait: `false` once the worker is done.
    pub(crate) fn watch(&self, every: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .done_changed
            .wait_timeout_while(done, every, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        !*done
    }

    /// The worker is done: stop the watchdog.
    pub(crate) fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.done_changed.notify_all();
    }

    /// Whether some lane's request was abandoned (its thread may never return).
    pub(crate) fn any_abandoned(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| l.abandoned.load(Ordering::Acquire))
    }
}
