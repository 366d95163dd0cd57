//! The I/O loop: one thread owns every connection that is not being served (accepting, reading
//! request heads and small bodies, idle keep-alive, flushing output, lingering close) and hands
//! complete requests to the app threads.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use ferrocorn_http::{error_response, BodyFraming, HeadParser, Parsed, RequestError, RequestHead};
use ferrocorn_listener::{Listener, PeerAddr, Stream};
use ferrocorn_signals::WorkerState;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{send, MsgFlags};

use crate::app_thread::AppThread;
use crate::pool::{After, Connection, Job, Pool, Returned};
use crate::sock::{self, Filled, Linger, ReadBuf};
use crate::{Control, Exit, Monitor, WorkerConfig};

/// The waker the app threads use, and the signal wake fd.
pub(crate) const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// Listener `i` is `usize::MAX - 2 - i`.
const LISTENERS_TOP: usize = usize::MAX - 2;

/// Longest sleep of the loop: it beats at least this often.
const BEAT_EVERY: Duration = Duration::from_millis(500);

/// Most request body the I/O thread reads before handing a request over (`Content-Length` bodies
/// only): the app never waits for a slow client on a small upload.
const PREFETCH_BODY: u64 = 64 * 1024;

/// How long a closing connection is read and discarded after our last byte, so the client gets
/// our response instead of a reset (lingering close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// How long clients may wait in a listener's queue while this worker's threads are kept busy by
/// the clients it holds (heads waiting for a thread) before it takes one anyway: when every
/// worker is busy with keep-alive clients, none would ever have a thread free at the moment it
/// looks, and a new client would wait for good.
const ACCEPT_STARVED: Duration = Duration::from_millis(10);

/// A new connection silent for this long no longer holds a thread's place (see `fresh`).
const FRESH_CLAIM: Duration = Duration::from_millis(5);

/// How long the I/O thread, with the app on it and nothing else in hand, waits for the first
/// bytes of a connection it just accepted before putting it in the poll set.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(1);

/// How long an idle keep-alive connection is kept after its response once the worker stops: a
/// request that follows the response at once, as a busy client's does, is answered rather than
/// lost to a close that crossed it on the wire.
const KEPT_ALIVE_GRACE: Duration = Duration::from_millis(50);

/// A stopping worker gives up on a silent connection this long before the graceful timeout ends,
/// so it closes it and exits itself rather than being killed by the master.
const STOP_MARGIN: Duration = Duration::from_millis(500);

/// How long a worker draining the accept queues at a server stop, having found them empty, waits
/// for a handshake that was completing when the listeners stopped taking new ones.
const DRAIN_SETTLE: Duration = Duration::from_millis(50);

/// Rounds of accepting and serving between two polls, with the app on the I/O thread.
const INLINE_ROUNDS: usize = 8;

/// Most read buffers kept for new connections.
const SPARE_BUFS: usize = 64;

/// Least time between two logged accept failures, and the pause after one (EMFILE, say).
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where a connection the I/O loop holds is.
enum Phase {
    /// No byte of its next request yet. `first`: its first request (`since` is the accept);
    /// else kept alive since `since` (its last response).
    Idle { first: bool, since: Instant },
    /// Part of a head is here; its clock started at `started`.
    Head { started: Instant },
    /// A complete head whose small body is still arriving.
    Body { head: RequestHead, need: usize },
    /// Sending what the app thread left unsent, then `then`.
    Flush {
        out: Vec<u8>,
        pos: usize,
        then: After,
    },
    /// Half-closed, discarding what the client still sends.
    Linger { discarded: usize },
}

struct Parked {
    conn: Connection,
    phase: Phase,
    deadline: Instant,
}

enum Slot {
    Free,
    /// With an app thread; `stirred`: the poll reported it meanwhile (the event is lost for
    /// the loop, so the connection is read when it comes back).
    Away {
        stirred: bool,
    },
    Parked(Box<Parked>),
}

/// Why the worker stops taking work, and until when it waits for connections in hand.
struct Retiring {
    exit: Exit,
    deadline: Instant,
}

pub(crate) struct IoLoop<'r> {
    poll: Poll,
    listeners: &'r [Listener],
    config: &'r WorkerConfig,
    control: &'r dyn Control,
    monitor: &'r dyn Monitor,
    pool: &'r Pool,
    slots: Vec<Slot>,
    free: Vec<usize>,
    parked: usize,
    away: usize,
    /// Listeners that had connections queued when last looked at.
    listener_ready: Vec<bool>,
    /// Since when a listener has had clients queued that this worker left there (no free
    /// thread); see [`ACCEPT_STARVED`].
    queued_since: Option<Instant>,
    /// New connections with nothing received yet, each holding a thread's place for a moment:
    /// a client sends its request right after connecting, so the worker that accepted it will
    /// need a thread for it.
    fresh: VecDeque<(Instant, usize)>,
    served: u64,
    retiring: Option<Retiring>,
    /// The whole server stops: serve what waits in the accept queues first.
    draining: bool,
    drain_quiet_since: Option<Instant>,
    quick: bool,
    next_scan: Instant,
    last_waiting: usize,
    accept_paused_until: Option<Instant>,
    accept_errors: u64,
    accept_error_logged: Option<Instant>,
    /// With one app thread: the app, called by this loop.
    inline: Option<Inline<'r>>,
    /// Read buffers of closed connections, for new ones (a connection per request is the
    /// common case behind a proxy).
    spare_bufs: Vec<ReadBuf>,
}

impl<'r> IoLoop<'r> {
    pub(crate) fn new(
        poll: Poll,
        listeners: &'r [Listener],
        config: &'r WorkerConfig,
        control: &'r dyn Control,
        monitor: &'r dyn Monitor,
        pool: &'r Pool,
    ) -> io::Result<Self> {
        for (i, l) in listeners.iter().enumerate() {
            l.set_nonblocking(true)?;
            poll.registry().register(
                &mut SourceFd(&l.as_raw_fd()),
                Token(LISTENERS_TOP - i),
                Interest::READABLE,
            )?;
        }
        poll.registry().register(
            &mut SourceFd(&control.wake_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let now = Instant::now();
        Ok(IoLoop {
            poll,
            listeners,
            config,
            control,
            monitor,
            pool,
            slots: Vec::new(),
            free: Vec::new(),
            parked: 0,
            away: 0,
            listener_ready: vec![true; listeners.len()],
            queued_since: None,
            fresh: VecDeque::new(),
            served: 0,
            retiring: None,
            draining: false,
            drain_quiet_since: None,
            quick: false,
            next_scan: now + BEAT_EVERY,
            last_waiting: 0,
            accept_paused_until: None,
            accept_errors: 0,
            accept_error_logged: None,
            inline: None,
            spare_bufs: Vec::new(),
        })
    }

    pub(crate) fn run(&mut self) -> io::Result<Exit> {
        let mut events = Events::with_capacity(256);
        let mut returned = Vec::new();
        loop {
            self.notice_state();
            if let Some(exit) = self.finished() {
                return Ok(exit);
            }
            // Work in hand (clients queued with room for them, requests for the app here) only
            // looks at the poll: an edge-triggered listener reports nothing new while it waits.
            let timeout = if self.work_in_hand() || !self.pool.may_sleep() {
                Duration::ZERO
            } else {
                self.poll_timeout()
            };
            let polled = self.poll.poll(&mut events, Some(timeout));
            self.pool.awake();
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    SIGNALS => self.control.clear_wake(),
                    Token(t) if t > LISTENERS_TOP - self.listeners.len() => {
                        self.listener_ready[LISTENERS_TOP - t] = true;
                    }
                    Token(t) => self.on_event(
                        t,
                        event.is_writable() || event.is_write_closed() || event.is_error(),
                    ),
                }
            }
            self.pool.take_returned(&mut returned);
            for r in returned.drain(..) {
                self.on_returned(r);
            }
            self.serve_inline();
            self.scan_if_due();
            // A stop the events brought comes before any accept.
            self.notice_state();
            self.accept_and_serve();
            self.report_waiting();
        }
    }

    /// Serve requests itself from now on (a worker with one app thread).
    pub(crate) fn set_inline(&mut self, inline: Inline<'r>) {
        self.inline = Some(inline);
    }

    /// With the app on this thread: serve the requests whose heads are complete.
    fn serve_inline(&mut self) {
        loop {
            let Some(inline) = &mut self.inline else {
                return;
            };
            let Some(job) = inline.jobs.pop_front() else {
                return;
            };
            // Taken: it no longer waits (the app may run for long).
            self.report_waiting();
            let Some(inline) = &mut self.inline else {
                return;
            };
            let returned = inline.thread.serve_job(job, &mut inline.wbuf);
            inline.thread.trim(&mut inline.wbuf);
            self.on_returned(returned);
        }
    }

    /// Accept; with the app on this thread, serve what that brought and accept again, a few
    /// rounds before the loop polls again (behind a proxy a connection per request is the
    /// common case, and each round would otherwise cost a poll).
    fn accept_and_serve(&mut self) {
        for _ in 0..INLINE_ROUNDS {
            self.accept();
            if !self.inline_busy() {
                return;
            }
            self.serve_inline();
        }
    }

    /// Requests waiting for the app (on this thread).
    fn inline_busy(&self) -> bool {
        self.inline.as_ref().is_some_and(|i| !i.jobs.is_empty())
    }

    /// Complete heads waiting for an app thread.
    fn waiting(&self) -> usize {
        match &self.inline {
            Some(inline) => inline.jobs.len(),
            None => self.pool.waiting(),
        }
    }

    /// Idle app threads less the requests already waiting for one.
    fn spare_threads(&self) -> isize {
        match &self.inline {
            Some(inline) => 1 - inline.jobs.len() as isize,
            None => self.pool.spare_threads(),
        }
    }

    fn work_in_hand(&mut self) -> bool {
        self.inline_busy()
            || (self.retiring.is_none()
                && self.accept_paused_until.is_none()
                && self.listener_ready.contains(&true)
                && self.has_room())
    }

    fn poll_timeout(&self) -> Duration {
        let now = Instant::now();
        let mut until = self.next_scan.min(now + BEAT_EVERY);
        if self.draining || self.accept_paused_until.is_some() {
            until = until.min(now + DRAIN_SETTLE);
        }
        // Only a wait that can end in a starved accept: with no request waiting for a thread,
        // clients stay queued until a thread is free (and its return wakes the loop).
        if let Some(since) = self.queued_since.filter(|_| self.may_starve()) {
            until = until.min(since + ACCEPT_STARVED);
        }
        until.saturating_duration_since(now)
    }

    fn report_waiting(&mut self) {
        let waiting = self.waiting();
        if waiting != self.last_waiting {
            self.last_waiting = waiting;
            self.monitor.waiting(waiting);
        }
    }

    // ---- the stop ----

    /// Act on a stop signal noticed since the last look.
    fn notice_state(&mut self) {
        match self.control.state() {
            WorkerState::Running => {}
            WorkerState::Stopping => {
                if self
                    .retiring
                    .as_ref()
                    .is_none_or(|r| r.exit != Exit::Stopped)
                {
                    self.draining = self.monitor.drain_on_stop();
                    self.retire(Exit::Stopped);
                }
            }
            WorkerState::Exit if !self.quick => {
                self.quick = true;
                self.draining = false;
                self.retire(Exit::Stopped);
                // A quick stop ends every wait; requests being served finish.
                for t in 0..self.slots.len() {
                    if matches!(self.slots[t], Slot::Parked(_)) {
                        log::debug!("closing a connection: quick stop");
                        self.drop_conn(t);
                    }
                }
            }
            WorkerState::Exit => {}
        }
    }

    /// Take no more connections; serve those in hand, then exit with `exit`.
    fn retire(&mut self, exit: Exit) {
        let now = Instant::now();
        match &mut self.retiring {
            // A stop after max-requests or an abort: it says why the worker exits.
            Some(r) => {
                if exit == Exit::Stopped {
                    r.exit = exit;
                }
                return;
            }
            None => {
                let grace = self.config.graceful_timeout.saturating_sub(STOP_MARGIN);
                log::debug!(
                    "stopping gracefully: waiting up to {:.1}s for the request of a connection \
                     already accepted",
                    grace.as_secs_f64()
                );
                self.retiring = Some(Retiring {
                    exit,
                    deadline: now + grace,
                });
            }
        }
        self.pool.set_closing();
        for t in 0..self.slots.len() {
            if let Slot::Parked(p) = &self.slots[t] {
                let deadline = self.deadline_for(&p.phase);
                self.set_deadline(t, deadline);
            }
        }
    }

    /// Why the loop is over, once it is.
    fn finished(&mut self) -> Option<Exit> {
        let retiring = self.retiring.as_ref()?;
        let away = self.away - self.pool.abandoned_count().min(self.away);
        let threads_idle = match &self.inline {
            Some(_) => !self.inline_busy(),
            None => self.pool.all_idle(),
        };
        if self.parked > 0 || away > 0 || !threads_idle {
            return None;
        }
        if self.draining && Instant::now() < retiring.deadline {
            // Served all it found; done once the queues stay empty a moment.
            let quiet = self.drain_quiet_since?;
            if quiet.elapsed() < DRAIN_SETTLE {
                return None;
            }
        }
        Some(retiring.exit)
    }

    // ---- accepting ----

    fn accept(&mut self) {
        if self.quick {
            return;
        }
        let draining = self.draining
            && self
                .retiring
                .as_ref()
                .is_some_and(|r| Instant::now() < r.deadline);
        if self.retiring.is_some() && !draining {
            return;
        }
        if let Some(until) = self.accept_paused_until {
            if Instant::now() < until {
                return;
            }
            self.accept_paused_until = None;
        }
        let mut all_empty = true;
        for i in 0..self.listeners.len() {
            if !self.listener_ready[i] && !draining {
                continue;
            }
            all_empty &= self.accept_from(i);
        }
        if draining {
            if all_empty {
                self.drain_quiet_since.get_or_insert_with(Instant::now);
            } else {
                self.drain_quiet_since = None;
            }
        }
    }

    /// Accept from listener `i` while there is room; `true` when its queue was found empty.
    fn accept_from(&mut self, i: usize) -> bool {
        loop {
            // Checked before every accept: a stopping worker takes nothing more.
            if self.retiring.is_none() && self.control.state() != WorkerState::Running {
                self.notice_state();
                return false;
            }
            if !self.has_room() && !self.starved() {
                self.queued_since.get_or_insert_with(Instant::now);
                return false;
            }
            match self.listeners[i].accept_nonblocking() {
                Ok((stream, peer)) => {
                    self.queued_since = None;
                    self.adopt(stream, peer, i)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready[i] = false;
                    self.queued_since = None;
                    return true;
                }
                // Another worker took it, or the client gave up while queued.
                Err(e) if is_transient_accept_error(&e) => {}
                Err(e) => {
                    self.log_accept_error(i, &e);
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return false;
                }
            }
        }
    }

    /// Whether clients have waited in the queue for long enough that this worker, busy with the
    /// requests of clients it already holds, takes one in turn (within `--worker-connections`).
    /// A worker busy with one long request leaves them to its siblings.
    fn starved(&self) -> bool {
        self.may_starve()
            && self
                .queued_since
                .is_some_and(|since| since.elapsed() >= ACCEPT_STARVED)
    }

    /// Clients queued behind this worker could starve: requests of clients it holds wait for
    /// its threads, and it may hold more connections.
    fn may_starve(&self) -> bool {
        self.parked + self.away < self.config.worker_connections && self.waiting() > 0
    }

    /// Whether the worker should take another connection: it holds fewer than
    /// `--worker-connections`, and an app thread will be free for it. A busy worker leaves new
    /// connections in the listen queue, for an idle sibling (and the autoscaler) to see.
    fn has_room(&mut self) -> bool {
        if self.parked + self.away >= self.config.worker_connections {
            return false;
        }
        let now = Instant::now();
        let slots = &self.slots;
        self.fresh.retain(|&(until, t)| {
            now < until
                && matches!(&slots[t], Slot::Parked(p) if matches!(p.phase, Phase::Idle { first: true, .. }))
        });
        self.spare_threads() > self.fresh.len() as isize
    }

    fn adopt(&mut self, stream: Stream, peer: PeerAddr, listener: usize) {
        let t = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::Free);
            self.slots.len() - 1
        });
        let now = Instant::now();
        let conn = Connection {
            stream,
            peer,
            listener,
            rbuf: self.spare_bufs.pop().unwrap_or_else(ReadBuf::new),
            token: t,
            nodelay: false,
            watched: false,
            quiet: false,
        };
        self.park(
            conn,
            Phase::Idle {
                first: true,
                since: now,
            },
        );
        self.drain_quiet_since = None;
        self.read_request(t);
        if matches!(&self.slots[t], Slot::Parked(p) if matches!(p.phase, Phase::Idle { first: true, .. }))
        {
            self.fresh.push_back((now + FRESH_CLAIM, t));
        }
    }

    fn log_accept_error(&mut self, i: usize, e: &io::Error) {
        self.accept_errors += 1;
        if self
            .accept_error_logged
            .is_some_and(|t| t.elapsed() < ACCEPT_ERROR_LOG_EVERY)
        {
            return;
        }
        log::error!(
            "accept on {} failed: {e} ({} time(s) since the last report)",
            self.listeners[i].describe(),
            self.accept_errors
        );
        self.accept_errors = 0;
        self.accept_error_logged = Some(Instant::now());
    }

    // ---- the table of connections ----

    fn park(&mut self, conn: Connection, phase: Phase) {
        let t = conn.token;
        let deadline = self.deadline_for(&phase);
        self.slots[t] = Slot::Parked(Box::new(Parked {
            conn,
            phase,
            deadline,
        }));
        self.parked += 1;
        self.next_scan = self.next_scan.min(deadline);
    }

    fn parked_mut(&mut self, t: usize) -> Option<&mut Parked> {
        match self.slots.get_mut(t) {
            Some(Slot::Parked(p)) => Some(p),
            _ => None,
        }
    }

    fn set_phase(&mut self, t: usize, phase: Phase) {
        let deadline = self.deadline_for(&phase);
        if let Some(p) = self.parked_mut(t) {
            p.phase = phase;
            p.deadline = deadline;
        }
        self.next_scan = self.next_scan.min(deadline);
    }

    fn set_deadline(&mut self, t: usize, deadline: Instant) {
        if let Some(p) = self.parked_mut(t) {
            p.deadline = deadline;
        }
        self.next_scan = self.next_scan.min(deadline);
    }

    /// Take a parked connection out of the table (its slot stays reserved while it is away).
    fn take(&mut self, t: usize) -> Option<Parked> {
        match std::mem::replace(&mut self.slots[t], Slot::Away { stirred: false }) {
            Slot::Parked(p) => {
                self.parked -= 1;
                Some(*p)
            }
            other => {
                self.slots[t] = other;
                None
            }
        }
    }

    /// Put a parked connection that must wait for its client in the poll set (once: the
    /// registration lasts as long as the socket). Registering reports what is ready already,
    /// so nothing that came since the last read is missed.
    fn watch(&mut self, t: usize) {
        let registry = self.poll.registry();
        let Some(Slot::Parked(p)) = self.slots.get_mut(t) else {
            return;
        };
        if p.conn.watched {
            return;
        }
        let registered = registry.register(
            &mut SourceFd(&p.conn.stream.as_raw_fd()),
            Token(t),
            Interest::READABLE | Interest::WRITABLE,
        );
        match registered {
            Ok(()) => p.conn.watched = true,
            Err(e) => {
                log::error!("watching a connection from {:?} failed: {e}", p.conn.peer);
                self.drop_conn(t);
            }
        }
    }

    /// Close a parked connection.
    fn drop_conn(&mut self, t: usize) {
        if let Some(parked) = self.take(t) {
            self.drop_returned(parked.conn);
        }
    }

    /// When a connection in `phase` is given up on.
    fn deadline_for(&self, phase: &Phase) -> Instant {
        let now = Instant::now();
        let c = self.config;
        let normal = match phase {
            Phase::Idle { first: true, since } => *since + c.header_timeout,
            Phase::Idle {
                first: false,
                since,
            } => *since + c.keepalive,
            Phase::Head { started } => *started + c.header_timeout,
            Phase::Body { .. } | Phase::Flush { .. } => now + c.io_timeout,
            Phase::Linger { .. } => now + LINGER_TIME,
        };
        let Some(r) = &self.retiring else {
            return normal;
        };
        match phase {
            // Given up like for a new client: a request right behind the last response is
            // answered, a connection idle for longer is closed.
            Phase::Idle {
                first: false,
                since,
            } => normal.min(*since + KEPT_ALIVE_GRACE),
            // Accepted and not answered yet: a graceful stop must not lose it.
            Phase::Idle { first: true, .. } | Phase::Head { .. } | Phase::Body { .. } => {
                normal.min(r.deadline)
            }
            Phase::Flush { .. } | Phase::Linger { .. } => normal,
        }
    }

    // ---- timers ----

    fn scan_if_due(&mut self) {
        let now = Instant::now();
        if self.pool.take_aborted() {
            self.retire(Exit::Aborted);
        }
        if now < self.next_scan {
            return;
        }
        let mut next = now + BEAT_EVERY;
        for t in 0..self.slots.len() {
            let Slot::Parked(p) = &self.slots[t] else {
                continue;
            };
            if p.deadline <= now {
                self.expire(t);
            } else {
                next = next.min(p.deadline);
            }
        }
        // Expiring may have set new deadlines (lingering).
        self.next_scan = self.next_scan.max(now).min(next);
        if self.next_scan <= now {
            self.next_scan = next;
        }
    }

    /// A parked connection's time is up.
    fn expire(&mut self, t: usize) {
        let Some(p) = self.parked_mut(t) else {
            return;
        };
        let peer = format!("{:?}", p.conn.peer);
        match p.phase {
            Phase::Idle { first, .. } => {
                let stop_deadline = self.retiring.as_ref().map(|r| r.deadline);
                if stop_deadline.is_some() && self.request_arrived(t) {
                    // It came just in time: served (with `Connection: close`), not reset.
                    return;
                }
                if let Some(deadline) = stop_deadline {
                    let why = match first {
                        true if Instant::now() >= deadline => {
                            "no request before the graceful timeout"
                        }
                        true => "no request before the header timeout",
                        false => "idle while the worker stops",
                    };
                    log::debug!("closing the connection from {peer}: {why}");
                }
                self.drop_conn(t);
            }
            Phase::Head { .. } | Phase::Body { .. } => {
                log::debug!("request from {peer} did not arrive in time");
                // No waiting on a client this slow: the worker has waited long enough.
                self.answer_and_close(t, &error_response(408), Linger::Brief);
            }
            Phase::Flush { .. } => {
                log::debug!("timed out writing to {peer}");
                self.drop_conn(t);
            }
            Phase::Linger { .. } => self.drop_conn(t),
        }
    }

    /// Read an idle connection once more: whether a request began (it is then handled).
    fn request_arrived(&mut self, t: usize) -> bool {
        // Not expired again by the read that finds nothing.
        if let Some(p) = self.parked_mut(t) {
            p.deadline = Instant::now() + Duration::from_secs(3600);
        }
        self.read_request(t);
        !matches!(&self.slots[t], Slot::Parked(p) if matches!(p.phase, Phase::Idle { .. }))
    }

    // ---- connection events ----

    fn on_event(&mut self, t: usize, writable: bool) {
        if let Some(Slot::Away { stirred }) = self.slots.get_mut(t) {
            *stirred = true;
            return;
        }
        let Some(p) = self.parked_mut(t) else {
            return;
        };
        match p.phase {
            Phase::Idle { .. } | Phase::Head { .. } | Phase::Body { .. } => self.read_request(t),
            Phase::Flush { .. } => {
                // It may have been readable too: look once the response is out.
                p.conn.quiet = false;
                if writable {
                    self.flush(t);
                }
            }
            Phase::Linger { .. } => self.discard(t),
        }
    }

    /// Read what the client sent of its request; hand the request over once it is complete.
    fn read_request(&mut self, t: usize) {
        let max_len = self.config.limits.max_head_len() + PREFETCH_BODY as usize;
        loop {
            let Some(p) = self.parked_mut(t) else {
                return;
            };
            // Pipelined: the next request may be here already.
            if !p.conn.rbuf.is_empty() && self.try_complete(t) {
                return;
            }
            let Some(p) = self.parked_mut(t) else {
                return;
            };
            match p.conn.rbuf.read_from(&p.conn.stream, max_len) {
                Ok(Filled { n: 0, .. }) => {
                    if matches!(p.phase, Phase::Head { .. } | Phase::Body { .. }) {
                        log::debug!("{:?} closed the connection mid-request", p.conn.peer);
                    }
                    self.drop_conn(t);
                    return;
                }
                Ok(filled) => {
                    p.conn.quiet = filled.drained;
                    self.begin_head(t);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    p.conn.quiet = true;
                    // Checked here too: a client trickling bytes never lets a wait time out.
                    if p.deadline <= Instant::now() {
                        self.expire(t);
                        return;
                    }
                    if self.first_bytes_came(t) {
                        continue;
                    }
                    self.watch(t);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                    let e = RequestError::HeadersTooLarge("request head too large");
                    self.bad_request(t, e, false);
                    return;
                }
                Err(e) => {
                    log::debug!("reading a request from {:?}: {e}", p.conn.peer);
                    self.drop_conn(t);
                    return;
                }
            }
        }
    }

    /// With the app on this thread and nothing else in hand: wait a moment, as the sync worker
    /// did, for the first bytes of a connection just accepted (a client connects, then sends).
    /// Waiting in the poll set instead costs a registration and often a second wake-up, for a
    /// new client that cannot be served anyway. Only up to [`FIRST_BYTES_WAIT`] after its
    /// accept, and never while another connection is held: a silent client delays no one else.
    fn first_bytes_came(&mut self, t: usize) -> bool {
        if self.inline.is_none() || self.parked != 1 || self.inline_busy() {
            return false;
        }
        let Some(Slot::Parked(p)) = self.slots.get(t) else {
            return false;
        };
        let Phase::Idle { first: true, since } = p.phase else {
            return false;
        };
        let until = since + FIRST_BYTES_WAIT;
        if p.conn.watched || Instant::now() >= until {
            return false;
        }
        let waited = sock::wait(
            p.conn.stream.as_fd(),
            PollFlags::POLLIN,
            until,
            Some(self.signal_wake_fd()),
            false,
        );
        matches!(waited, Ok(sock::Waited::Ready))
    }

    /// The fd the signal handlers write to, to wake a wait.
    fn signal_wake_fd(&self) -> BorrowedFd<'r> {
        // SAFETY: the fd belongs to the worker's `Control`, which outlives this loop ('r).
        unsafe { BorrowedFd::borrow_raw(self.control.wake_fd()) }
    }

    /// Parse what is buffered; returns `true` when the connection is done with here (handed
    /// over, answered or closed), `false` when more bytes are needed.
    fn try_complete(&mut self, t: usize) -> bool {
        let config = self.config;
        let limits = &config.limits;
        let Some(p) = self.parked_mut(t) else {
            return true;
        };
        if let Phase::Body { need, .. } = p.phase {
            if p.conn.rbuf.len() < need {
                return false;
            }
            let Some(Parked {
                conn,
                phase: Phase::Body { head, .. },
                ..
            }) = self.take(t)
            else {
                unreachable!("checked above")
            };
            self.dispatch(conn, head);
            return true;
        }
        let mut parser = HeadParser::new();
        match parser.parse(p.conn.rbuf.data(), limits) {
            Ok(Parsed::Complete(head, n)) => {
                p.conn.rbuf.consume(n);
                // What the loop reads of the body before the hand-over; the app thread reads
                // any other body from the socket itself.
                let (need, body_here) = match head.framing() {
                    BodyFraming::Empty => (0, true),
                    BodyFraming::Length(len)
                        if len <= PREFETCH_BODY && !head.expects_continue() =>
                    {
                        (len as usize, true)
                    }
                    _ => (0, false),
                };
                if p.conn.rbuf.len() >= need {
                    let mut parked = self.take(t).expect("parked");
                    parked.conn.quiet &= body_here;
                    self.dispatch(parked.conn, head);
                    return true;
                }
                self.set_phase(t, Phase::Body { head, need });
                false
            }
            Ok(Parsed::Partial) => {
                self.begin_head(t);
                false
            }
            Err(e) => {
                let head_request = parser.is_head_request();
                self.bad_request(t, e, head_request);
                true
            }
        }
    }

    /// An idle connection's next request began arriving: its head's clock starts (at the
    /// accept for a connection's first request).
    fn begin_head(&mut self, t: usize) {
        if let Some(Parked {
            phase: Phase::Idle { first, since },
            ..
        }) = self.parked_mut(t)
        {
            let started = if *first { *since } else { Instant::now() };
            self.set_phase(t, Phase::Head { started });
        }
    }

    fn bad_request(&mut self, t: usize, e: RequestError, head_request: bool) {
        if let Some(p) = self.parked_mut(t) {
            log::debug!("bad request from {:?}: {e}", p.conn.peer);
        }
        let bytes = if head_request {
            e.head_response()
        } else {
            e.response()
        };
        self.answer_and_close(t, &bytes, Linger::Full);
    }

    /// Hand a complete request to an app thread.
    fn dispatch(&mut self, conn: Connection, head: RequestHead) {
        self.away += 1;
        self.served += 1;
        let max_reached = self.config.max_requests > 0 && self.served >= self.config.max_requests;
        if max_reached && self.retiring.is_none() {
            log::info!("Autorestarting worker after current request.");
            self.retire(Exit::MaxRequests);
        }
        let last = self.retiring.is_some() || self.control.state() != WorkerState::Running;
        let job = Job { conn, head, last };
        match &mut self.inline {
            Some(inline) => inline.jobs.push_back(job),
            None => self.pool.push(job),
        }
    }

    /// A connection is back from an app thread.
    fn on_returned(&mut self, r: Returned) {
        let Returned {
            conn,
            out,
            after,
            aborted,
            abandoned,
        } = r;
        let t = conn.token;
        self.away -= 1;
        if aborted || abandoned {
            self.retire(Exit::Aborted);
        }
        if self.quick {
            // A quick stop ends every wait: what is left unsent goes unsent.
            return self.drop_returned(conn);
        }
        if !out.is_empty() {
            self.park(
                conn,
                Phase::Flush {
                    out,
                    pos: 0,
                    then: after,
                },
            );
            self.flush(t);
            return;
        }
        self.after_response(conn, after);
    }

    /// The response is out: keep the connection for its next request, or close it.
    fn after_response(&mut self, conn: Connection, after: After) {
        match after {
            After::KeepAlive => self.keep_alive(conn),
            // Closed at once (behind a proxy, every request): no need to park it first.
            After::Close(Linger::No) => self.drop_returned(conn),
            After::Close(linger) => {
                let t = conn.token;
                self.park(conn, Phase::Linger { discarded: 0 });
                self.close(t, linger);
            }
        }
    }

    /// Close a connection (dropping the stream closes the socket, which also takes it out of
    /// the poll set); its read buffer is kept for the next one.
    fn drop_returned(&mut self, conn: Connection) {
        let Connection {
            token: t, mut rbuf, ..
        } = conn;
        self.slots[t] = Slot::Free;
        self.free.push(t);
        if self.spare_bufs.len() < SPARE_BUFS {
            rbuf.clear();
            self.spare_bufs.push(rbuf);
        }
    }

    /// Wait for the next request on a connection (it may be buffered already: pipelining).
    fn keep_alive(&mut self, mut conn: Connection) {
        if conn.rbuf.is_empty() {
            // A huge head made it grow; do not keep that for the connection's life.
            conn.rbuf.clear();
        }
        let t = conn.token;
        let stirred = matches!(self.slots[t], Slot::Away { stirred: true });
        // Bytes that came while the connection was away raised no event the loop saw, unless
        // the socket was drained and watched before: then its next bytes are an event to come
        // (behind wrk or a browser, the next request is rarely here yet; reading would find
        // nothing).
        let look = !conn.rbuf.is_empty() || !conn.watched || !conn.quiet || stirred;
        let since = Instant::now();
        self.park(
            conn,
            Phase::Idle {
                first: false,
                since,
            },
        );
        if look {
            self.read_request(t);
        }
    }

    // ---- writing and closing ----

    fn flush(&mut self, t: usize) {
        loop {
            let Some(p) = self.parked_mut(t) else {
                return;
            };
            let Phase::Flush { out, pos, then } = &mut p.phase else {
                return;
            };
            if *pos == out.len() {
                let then = *then;
                let conn = self.take(t).expect("parked").conn;
                self.after_response(conn, then);
                return;
            }
            match send(
                p.conn.stream.as_raw_fd(),
                &out[*pos..],
                MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => {
                    *pos += n;
                    let deadline = Instant::now() + self.config.io_timeout;
                    self.set_deadline(t, deadline);
                }
                Err(Errno::EAGAIN) => {
                    self.watch(t);
                    return;
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::debug!("writing to {:?}: {e}", p.conn.peer);
                    self.drop_conn(t);
                    return;
                }
            }
        }
    }

    /// Send a response of the worker's own (it says `Connection: close`), then close.
    fn answer_and_close(&mut self, t: usize, bytes: &[u8], linger: Linger) {
        let Some(p) = self.parked_mut(t) else {
            return;
        };
        let out = bytes.to_vec();
        p.phase = Phase::Flush {
            out,
            pos: 0,
            then: After::Close(linger),
        };
        let deadline = Instant::now() + self.config.io_timeout;
        self.set_deadline(t, deadline);
        self.flush(t);
    }

    /// Close after our last byte. When the client may still be sending (an unread body,
    /// pipelined requests, an error answered early), half-close and discard what comes for a
    /// while: closing with unread data makes the kernel send a reset that can destroy the
    /// response before the client reads it.
    fn close(&mut self, t: usize, linger: Linger) {
        let Some(p) = self.parked_mut(t) else {
            return;
        };
        match linger {
            Linger::No => self.drop_conn(t),
            Linger::Brief | Linger::Full => {
                let _ = p.conn.stream.shutdown_write();
                let brief = linger == Linger::Brief;
                self.set_phase(t, Phase::Linger { discarded: 0 });
                self.discard(t);
                if brief {
                    self.drop_conn(t);
                }
            }
        }
    }

    /// Read and throw away what a lingering connection's client sends.
    fn discard(&mut self, t: usize) {
        let mut buf = [0u8; 8192];
        loop {
            let Some(p) = self.parked_mut(t) else {
                return;
            };
            let Phase::Linger { discarded } = &mut p.phase else {
                return;
            };
            let n = match &p.conn.stream {
                Stream::Tcp(s) => io::Read::read(&mut &*s, &mut buf),
                Stream::Unix(s) => io::Read::read(&mut &*s, &mut buf),
            };
            match n {
                Ok(0) => break,
                Ok(n) => {
                    *discarded += n;
                    if *discarded >= LINGER_BYTES {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.watch(t);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.drop_conn(t);
    }
}

/// Errors that concern one connection, not the listener (accept(2) on Linux passes a new
/// connection's pending network error up as its own).
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// The app of a worker with a single app thread, which the I/O loop calls itself: no hand-off
/// between threads for each request.
pub(crate) struct Inline<'r> {
    pub(crate) thread: AppThread<'r>,
    wbuf: Vec<u8>,
    jobs: VecDeque<Job>,
}

impl<'r> Inline<'r> {
    pub(crate) fn new(thread: AppThread<'r>) -> Self {
        Inline {
            thread,
            wbuf: Vec::new(),
            jobs: VecDeque::new(),
        }
    }
}
