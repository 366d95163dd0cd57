//! The accept loop and the per-connection request loop.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant, SystemTime};

use ferrocorn_http::{error_head_response, error_response, HeadParser, Parsed, RequestHead};
use ferrocorn_listener::{Listener, PeerAddr, Stream};
use ferrocorn_signals::WorkerState;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::request::{BodyState, Conn};
use crate::response::Sent;
use crate::sock::{self, ReadBuf, Sock, Waited, READ_CHUNK};
use crate::{
    App, AppError, Completed, Control, Exit, Monitor, Request, Response, ServerAddr, WorkerConfig,
};

/// Most unread request body the worker reads and discards to keep a connection alive.
const DRAIN_BUDGET: u64 = 64 * 1024;

/// How long a closing connection is read and discarded after our last byte, so the client gets
/// our response instead of a reset (lingering close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// How long a new connection may stay silent before a waiting client may take its place (a
/// client sends its request right after connecting; browsers' speculative preconnects do not).
const SILENT_GRACE: Duration = Duration::from_secs(1);

/// How long a poll that found no client queued stands in for a new one (see `accept_pending`).
const QUIET_FRESH: Duration = Duration::from_millis(2);

/// How long an idle keep-alive connection is kept after its response before the worker gives it
/// up (for a new client, or because it stops): a request that follows the response at once, as
/// a busy client's does, is answered rather than lost to a close that crossed it on the wire.
const KEPT_ALIVE_GRACE: Duration = Duration::from_millis(50);

/// A stopping worker gives up on a silent connection this long before the graceful timeout ends,
/// so it closes it and exits itself rather than being killed by the master.
const STOP_MARGIN: Duration = Duration::from_millis(500);

/// How long a worker draining the accept queues at a server stop, having found them empty, waits
/// for a handshake that was completing when the listeners stopped taking new ones.
const DRAIN_SETTLE: Duration = Duration::from_millis(50);

/// Least time between two logged accept failures.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Largest write buffer kept between responses.
const WBUF_KEEP: usize = 64 * 1024;

/// Pause after an accept failure such as EMFILE, so the loop does not spin on a ready listener.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where the start and end of each request are told (the [`Monitor`]).
pub(crate) trait RequestEvents {
    fn started(&self, head: &RequestHead);
    fn finished(&self, done: &Completed<'_>);
    /// See [`Monitor::drain_on_stop`].
    fn drain_on_stop(&self) -> bool;
}

impl RequestEvents for () {
    fn started(&self, _head: &RequestHead) {}
    fn finished(&self, _done: &Completed<'_>) {}
    fn drain_on_stop(&self) -> bool {
        false
    }
}

impl RequestEvents for &dyn Monitor {
    fn started(&self, head: &RequestHead) {
        self.request_started(0, head)
    }
    fn finished(&self, done: &Completed<'_>) {
        self.request_finished(0, done)
    }
    fn drain_on_stop(&self) -> bool {
        Monitor::drain_on_stop(*self)
    }
}

pub(crate) struct Worker<'r> {
    pub(crate) app: &'r mut dyn App,
    pub(crate) config: &'r WorkerConfig,
    pub(crate) control: &'r dyn Control,
    pub(crate) heartbeat: &'r dyn Fn(),
    events: &'r dyn RequestEvents,
    /// The app was aborted (worker timeout): leave the loop after answering.
    aborted: bool,
    served: u64,
    rbuf: ReadBuf,
    wbuf: Vec<u8>,
    /// When a poll that covered the listeners last found none of them ready.
    listeners_quiet_at: Option<Instant>,
    /// Accept failures since the last one logged, and when that was.
    accept_errors: u64,
    accept_error_logged: Option<Instant>,
    /// Once a graceful stop was noticed: until when connections already accepted are waited for.
    stop_deadline: Option<Instant>,
}

/// A connection just accepted from `listeners[index]`.
pub(crate) struct Accepted {
    index: usize,
    stream: Stream,
    peer: PeerAddr,
    at: Instant,
}

/// How an idle keep-alive wait ended.
enum Idle {
    /// Bytes (or EOF) from the client.
    Request,
    /// The wait's time is over (keep-alive or header timeout).
    Timeout,
    /// The worker closes the connection for this reason (a stop, say).
    Close(&'static str),
    /// A new client arrived and was accepted.
    Handoff(Accepted),
}

/// What one poll of an idle connection found.
enum IdlePoll {
    /// Bytes (or EOF) from the client.
    Request,
    /// These listeners have clients queued.
    Listeners(Vec<usize>),
    /// Nothing yet (a tick passed, or the wake fd was cleared).
    Nothing,
}

/// How waiting for a connection's next request ended.
enum Awaited {
    /// Its first byte is here; the head's clock started at this time.
    Request(Instant),
    /// The connection is done with (the reason was logged if it was ours).
    Closed,
    /// It was closed for a new connection, accepted meanwhile.
    Handoff(Accepted),
}

/// What a connection waiting for a request is, which decides what a stop does to the wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Accepted, its first request not here yet: a graceful stop must not lose it, so the wait
    /// goes on (up to the header timeout, within the graceful timeout).
    New,
    /// Kept alive after a response: a graceful stop closes it unless a request follows within
    /// [`KEPT_ALIVE_GRACE`] of the response.
    KeptAlive,
}

/// How reading a request head ended without a head.
enum HeadEnd {
    /// The client closed (or went idle past its time) before sending anything: close quietly.
    Quiet,
    /// Malformed or over a limit: answer with this error's status (and no body if the request
    /// line asked for HEAD).
    Bad(ferrocorn_http::RequestError, bool),
    /// Part of a head arrived but not the rest in time.
    Timeout,
    /// The connection failed mid-head.
    Io(io::Error),
    /// Told to exit now.
    Exit,
}

/// How to close a connection the client may still be sending on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// Nothing more can come: just close.
    No,
    /// Half-close and discard what has already arrived, without waiting.
    Brief,
    /// Half-close and discard for up to `LINGER_TIME`.
    Full,
}

impl Linger {
    fn when(unread_may_follow: bool) -> Linger {
        if unread_may_follow {
            Linger::Full
        } else {
            Linger::No
        }
    }
}

impl<'r> Worker<'r> {
    pub(crate) fn new(
        app: &'r mut dyn App,
        config: &'r WorkerConfig,
        control: &'r dyn Control,
        heartbeat: &'r dyn Fn(),
    ) -> Self {
        Worker {
            app,
            config,
            control,
            heartbeat,
            events: &(),
            aborted: false,
            served: 0,
            rbuf: ReadBuf::new(),
            wbuf: Vec::new(),
            listeners_quiet_at: None,
            accept_errors: 0,
            accept_error_logged: None,
            stop_deadline: None,
        }
    }

    pub(crate) fn with_monitor(mut self, events: &'r dyn RequestEvents) -> Self {
        self.events = events;
        self
    }

    fn max_reached(&self) -> bool {
        self.config.max_requests > 0 && self.served >= self.config.max_requests
    }

    fn wake_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the control (signal handlers) owns the fd and outlives this worker loop; it is
        // only polled, never closed, through this borrow.
        unsafe { BorrowedFd::borrow_raw(self.control.wake_fd()) }
    }

    pub(crate) fn run(&mut self, listeners: &[Listener]) -> io::Result<Exit> {
        for l in listeners {
            l.set_nonblocking(true)?;
        }
        let servers: Vec<ServerAddr> = listeners
            .iter()
            .map(|l| {
                let (name, port) = l.server_name_port();
                ServerAddr {
                    name,
                    port,
                    scheme: "http",
                }
            })
            .collect();
        log::debug!(
            "worker serving {}",
            listeners
                .iter()
                .map(Listener::describe)
                .collect::<Vec<_>>()
                .join(", ")
        );
        loop {
            (self.heartbeat)();
            if self.control.state() != WorkerState::Running {
                return self.stop(listeners, &servers);
            }
            let ready = self.wait_for_listeners(listeners, PollTimeout::from(1000u16))?;
            for (i, listener) in listeners.iter().enumerate() {
                if !ready[i] {
                    continue;
                }
                // Accept again straight after each connection: under load more are queued,
                // and an accept that finds none costs no more than the poll it saves.
                while let Some(accepted) = self.accept_one(listener, i)? {
                    self.serve_in_hand(accepted, listeners, &servers);
                    if self.aborted {
                        return Ok(Exit::Aborted);
                    }
                    if self.max_reached() {
                        return Ok(Exit::MaxRequests);
                    }
                    if self.control.state() != WorkerState::Running {
                        return self.stop(listeners, &servers);
                    }
                }
            }
        }
    }

    /// What a worker told to stop does: exit, or first serve every connection queued on the
    /// listeners when the whole server goes away (nobody else would, and closing the last copy
    /// of a listener resets them).
    fn stop(&mut self, listeners: &[Listener], servers: &[ServerAddr]) -> io::Result<Exit> {
        if self.control.state() == WorkerState::Stopping && self.events.drain_on_stop() {
            self.drain_queues(listeners, servers)
        } else {
            Ok(Exit::Stopped)
        }
    }

    /// Accept and serve until every listener's queue is empty and stays so for
    /// [`DRAIN_SETTLE`], within the graceful timeout. The master has made the listeners refuse
    /// new handshakes, so the queues only shrink. `--max-requests` no longer applies: no
    /// replacement would come.
    fn drain_queues(&mut self, listeners: &[Listener], servers: &[ServerAddr]) -> io::Result<Exit> {
        let deadline = self.stop_deadline();
        let mut drained = 0u64;
        while self.control.state() == WorkerState::Stopping && Instant::now() < deadline {
            (self.heartbeat)();
            let mut found = false;
            for (i, listener) in listeners.iter().enumerate() {
                while let Some(accepted) = self.accept_from(listener, i)? {
                    found = true;
                    drained += 1;
                    self.serve_in_hand(accepted, listeners, servers);
                    if self.aborted {
                        return Ok(Exit::Aborted);
                    }
                }
            }
            let settle = PollTimeout::try_from(DRAIN_SETTLE).unwrap_or(PollTimeout::ZERO);
            if !found && !self.wait_for_listeners(listeners, settle)?.contains(&true) {
                break;
            }
        }
        log::debug!("the server is stopping: served {drained} connection(s) from the accept queue");
        Ok(Exit::Stopped)
    }

    /// Accept one connection from `listeners[index]`; `None` when none is queued, the accept
    /// failed, or the worker is stopping (it takes no new connections from then on).
    fn accept_one(&mut self, listener: &Listener, index: usize) -> io::Result<Option<Accepted>> {
        if self.control.state() != WorkerState::Running {
            return Ok(None);
        }
        self.accept_from(listener, index)
    }

    /// Accept one connection whatever the worker's state; `None` when none is queued or the
    /// accept failed.
    fn accept_from(&mut self, listener: &Listener, index: usize) -> io::Result<Option<Accepted>> {
        match listener.accept() {
            Ok((stream, peer)) => Ok(Some(Accepted {
                index,
                stream,
                peer,
                at: Instant::now(),
            })),
            // None left, another worker took it, or the client gave up while queued.
            Err(e) if is_transient_accept_error(&e) => Ok(None),
            Err(e) => {
                self.log_accept_error(listener, &e);
                self.pause(ACCEPT_BACKOFF)?;
                Ok(None)
            }
        }
    }

    /// Serve an accepted connection, then each one it hands over to, until none is in hand: a
    /// connection once accepted is served even when a stop or `--max-requests` came meanwhile.
    fn serve_in_hand(
        &mut self,
        accepted: Accepted,
        listeners: &[Listener],
        servers: &[ServerAddr],
    ) {
        let mut next = Some(accepted);
        while let Some(a) = next.take() {
            let server = &servers[a.index];
            next = self.serve_connection(a, listeners, server);
            (self.heartbeat)();
        }
    }

    /// Poll the listeners and the wake fd for at most `timeout`. Returns which listeners are ready.
    fn wait_for_listeners(
        &mut self,
        listeners: &[Listener],
        timeout: PollTimeout,
    ) -> io::Result<Vec<bool>> {
        let wake = self.wake_fd();
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(wake, PollFlags::POLLIN));
        let n = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        let mut ready = vec![false; listeners.len()];
        if n > 0 {
            for (i, fd) in fds.iter().enumerate().take(listeners.len()) {
                ready[i] = fd.any().unwrap_or(false);
            }
            if fds[listeners.len()].any().unwrap_or(false) {
                self.control.clear_wake();
            }
        }
        Ok(ready)
    }

    /// Log an accept failure (EMFILE, say), at most once every few seconds: it repeats ten times a
    /// second for as long as the cause lasts.
    fn log_accept_error(&mut self, listener: &Listener, e: &io::Error) {
        self.accept_errors += 1;
        if self
            .accept_error_logged
            .is_some_and(|t| t.elapsed() < ACCEPT_ERROR_LOG_EVERY)
        {
            return;
        }
        log::error!(
            "accept on {} failed: {e} ({} time(s) since the last report)",
            listener.describe(),
            self.accept_errors
        );
        self.accept_errors = 0;
        self.accept_error_logged = Some(Instant::now());
    }

    /// Sleep for `d` unless a signal arrives.
    fn pause(&self, d: Duration) -> io::Result<()> {
        let mut fds = [PollFd::new(self.wake_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Wait for `sock` until `deadline`, heartbeating every second. `Waited::Woken`: told to exit
    /// at once (a graceful stop lets the wait go on: the connection is in hand).
    fn wait_sock(&mut self, sock: &Sock<'_>, deadline: Instant) -> io::Result<Waited> {
        // In memory everything the client sends is already here.
        let Some(fd) = sock.fd() else {
            return Ok(Waited::Ready);
        };
        loop {
            match sock::wait(fd, PollFlags::POLLIN, deadline, Some(self.wake_fd()), true)? {
                Waited::Tick => (self.heartbeat)(),
                Waited::Woken => {
                    self.control.clear_wake();
                    if self.control.state() == WorkerState::Exit {
                        return Ok(Waited::Woken);
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// Until when a stopping worker waits for the first request of a connection it accepted: the
    /// graceful timeout (less a margin), counted from when the stop was first noticed.
    fn stop_deadline(&mut self) -> Instant {
        let grace = self.config.graceful_timeout.saturating_sub(STOP_MARGIN);
        *self.stop_deadline.get_or_insert_with(|| {
            log::debug!(
                "stopping gracefully: waiting up to {:.1}s for the request of a connection \
                 already accepted",
                grace.as_secs_f64()
            );
            Instant::now() + grace
        })
    }

    /// Serve requests on one connection until it closes. Returns a connection accepted while this
    /// one sat idle between requests (it was closed to take the new one).
    fn serve_connection(
        &mut self,
        accepted: Accepted,
        listeners: &[Listener],
        server: &ServerAddr,
    ) -> Option<Accepted> {
        let Accepted {
            stream,
            peer,
            at: accepted,
            ..
        } = accepted;
        let peer = &peer;
        let sock = match Sock::new(stream, self.heartbeat) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("setting up a connection from {peer:?} failed: {e}");
                return None;
            }
        };
        let conn = Conn {
            sock,
            io_timeout: self.config.io_timeout,
            head_sent: Cell::new(false),
            awaiting_continue: Cell::new(false),
            body_failed: Cell::new(false),
        };
        self.rbuf.clear();
        let mut pending = Pending::New;
        loop {
            let start = match self.await_request(&conn.sock, listeners, peer, pending, accepted) {
                Awaited::Request(start) => start,
                Awaited::Closed => return None,
                Awaited::Handoff(next) => return Some(next),
            };
            pending = Pending::KeptAlive;
            let head = match self.read_head(&conn.sock, start + self.config.header_timeout) {
                Ok(head) => head,
                Err(end) => {
                    self.end_without_head(&conn, peer, end);
                    return None;
                }
            };
            let persist = self.serve_and_record(&conn, &head, peer, server, listeners);
            // A response that promised keep-alive before a stop came is followed by the wait
            // for the next request all the same: one already on its way is answered, not lost.
            if !persist {
                return None;
            }
            conn.head_sent.set(false);
            conn.body_failed.set(false);
        }
    }

    /// Close a connection whose request head did not arrive whole, answering it when the
    /// client is still there to read an answer.
    fn end_without_head(&mut self, conn: &Conn<'_>, peer: &PeerAddr, end: HeadEnd) {
        match end {
            HeadEnd::Quiet => {}
            HeadEnd::Exit => {
                log::debug!("closing the connection from {peer:?} mid-head: quick stop");
            }
            HeadEnd::Bad(e, head_request) => {
                log::debug!("bad request from {peer:?}: {e}");
                let bytes = if head_request {
                    e.head_response()
                } else {
                    e.response()
                };
                self.close_with_response(conn, &bytes, Linger::Full);
            }
            HeadEnd::Timeout => {
                log::debug!("request head from {peer:?} did not arrive in time");
                // No waiting on a client this slow: the worker has waited long enough.
                self.close_with_response(conn, &error_response(408), Linger::Brief);
            }
            HeadEnd::Io(e) => {
                log::debug!("reading a request head from {peer:?}: {e}");
            }
        }
    }

    /// Serve one request with the bookkeeping around it (heartbeat, request count, the
    /// started/finished events). Returns whether the connection may carry another request.
    fn serve_and_record(
        &mut self,
        conn: &Conn<'_>,
        head: &RequestHead,
        peer: &PeerAddr,
        server: &ServerAddr,
        listeners: &[Listener],
    ) -> bool {
        (self.heartbeat)();
        self.served += 1;
        if self.max_reached() {
            log::info!("Autorestarting worker after current request.");
        }
        self.events.started(head);
        let (started_at, clock) = (SystemTime::now(), Instant::now());
        let (persist, sent) = self.serve_request(conn, head, peer, server, listeners);
        self.events.finished(&Completed {
            head,
            peer,
            status: sent.status,
            response_headers: &sent.headers,
            body_bytes: sent.body_bytes,
            thread: 0,
            started_at,
            duration: clock.elapsed(),
            app: &*self.app,
        });
        // One big streamed response should not pin its buffer for the worker's lifetime.
        if self.wbuf.capacity() > WBUF_KEEP {
            self.wbuf = Vec::new();
        }
        persist
    }

    /// Wait until a request's first byte is here; returns when its head's clock starts: at
    /// accept for a connection's first request, at its first byte for a later one.
    fn await_request(
        &mut self,
        sock: &Sock<'_>,
        listeners: &[Listener],
        peer: &PeerAddr,
        pending: Pending,
        accepted: Instant,
    ) -> Awaited {
        // Pipelined: the next request is already here.
        if !self.rbuf.is_empty() {
            return Awaited::Request(Instant::now());
        }
        let (until, handoff_from) = match pending {
            // Fast path: a client usually sends its request right after connecting.
            Pending::New => match self.rbuf.try_fill(sock, READ_CHUNK) {
                Ok(Some(0)) => return Awaited::Closed,
                Ok(Some(_)) => return Awaited::Request(accepted),
                Err(e) => {
                    log::debug!("reading from a new connection from {peer:?}: {e}");
                    return Awaited::Closed;
                }
                // Silent so far (a browser's preconnect, say): wait, but not so long that
                // clients queued behind it wait for the whole header timeout.
                Ok(None) => (
                    accepted + self.config.header_timeout,
                    accepted + SILENT_GRACE,
                ),
            },
            Pending::KeptAlive => {
                let now = Instant::now();
                (now + self.config.keepalive, now + KEPT_ALIVE_GRACE)
            }
        };
        match self.wait_idle(sock, listeners, until, handoff_from, pending) {
            Idle::Request if pending == Pending::New => Awaited::Request(accepted),
            Idle::Request => Awaited::Request(Instant::now()),
            Idle::Timeout => Awaited::Closed,
            Idle::Close(why) => {
                log::debug!("closing the connection from {peer:?}: {why}");
                Awaited::Closed
            }
            Idle::Handoff(next) => {
                let what = match pending {
                    Pending::New => "a silent",
                    Pending::KeptAlive => "an idle keep-alive",
                };
                log::debug!("closing {what} connection from {peer:?} for a new one");
                Awaited::Handoff(next)
            }
        }
    }

    /// Wait for the first byte of a request on a connection between requests, until `until`.
    /// From `handoff_from` on, a new connection on a listener wins: a sync worker must not leave
    /// new clients queued behind an idle one. It is accepted first, so only the worker that gets
    /// it gives up its idle connection. A stopping worker accepts nothing more: it waits on (see
    /// [`Pending`]), and a quick stop ends the wait at once.
    fn wait_idle(
        &mut self,
        sock: &Sock<'_>,
        listeners: &[Listener],
        until: Instant,
        handoff_from: Instant,
        pending: Pending,
    ) -> Idle {
        // A connection served past `--max-requests` (handed over just before) takes no more.
        let mut watch_listeners = !self.max_reached();
        let mut stop_until = None;
        loop {
            match self.control.state() {
                WorkerState::Running => {}
                WorkerState::Exit => return Idle::Close("quick stop"),
                WorkerState::Stopping => {
                    watch_listeners = false;
                    if stop_until.is_none() {
                        stop_until = Some(match pending {
                            Pending::New => self.stop_deadline(),
                            // Given up like for a new client (`handoff_from` is when).
                            Pending::KeptAlive => handoff_from,
                        });
                    }
                }
            }
            let now = Instant::now();
            if now >= until {
                return Idle::Timeout;
            }
            if stop_until.is_some_and(|t| now >= t) {
                return Idle::Close(match pending {
                    Pending::New => "no request before the graceful timeout",
                    Pending::KeptAlive => "idle while the worker stops",
                });
            }
            let handoff = watch_listeners && now >= handoff_from;
            let mut end = stop_until.map_or(until, |t| t.min(until));
            if watch_listeners && !handoff {
                end = end.min(handoff_from);
            }
            let polled = match self.poll_idle(sock, listeners, handoff, end - now) {
                Ok(polled) => polled,
                Err(e) => {
                    log::error!("poll failed: {e}");
                    return Idle::Close("poll failed");
                }
            };
            match polled {
                IdlePoll::Request => return Idle::Request,
                IdlePoll::Nothing => {}
                IdlePoll::Listeners(ready) => {
                    // Checked again: a stop noticed with the listeners ready takes nothing.
                    if self.control.state() != WorkerState::Running {
                        continue;
                    }
                    match self.accept_ready(listeners, &ready) {
                        Ok(Some(next)) => return Idle::Handoff(next),
                        Ok(None) => {}
                        // Do not spin on a listener we cannot accept from; the wait goes on.
                        Err(()) => watch_listeners = false,
                    }
                }
            }
        }
    }

    /// One poll of an idle connection, the wake fd and (with `handoff`) the listeners, for at most
    /// `left` (and a tick, to beat the heartbeat).
    fn poll_idle(
        &mut self,
        sock: &Sock<'_>,
        listeners: &[Listener],
        handoff: bool,
        left: Duration,
    ) -> nix::Result<IdlePoll> {
        let Some(fd) = sock.fd() else {
            return Ok(IdlePoll::Request);
        };
        let wake = self.wake_fd();
        let mut fds = vec![PollFd::new(fd, PollFlags::POLLIN)];
        if handoff {
            fds.extend(
                listeners
                    .iter()
                    .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)),
            );
        }
        fds.push(PollFd::new(wake, PollFlags::POLLIN));
        match poll(&mut fds, sock::poll_timeout(left.min(sock::TICK))) {
            Ok(0) => {
                (self.heartbeat)();
                return Ok(IdlePoll::Nothing);
            }
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(IdlePoll::Nothing),
            Err(e) => return Err(e),
        }
        let listeners_ready: Vec<usize> = (0..if handoff { listeners.len() } else { 0 })
            .filter(|&i| fds[1 + i].any().unwrap_or(false))
            .collect();
        // The client's request (or its close) comes first.
        if fds[0].any().unwrap_or(false) {
            if handoff && listeners_ready.is_empty() {
                self.listeners_quiet_at = Some(Instant::now());
            }
            return Ok(IdlePoll::Request);
        }
        if fds[fds.len() - 1].any().unwrap_or(false) {
            self.control.clear_wake();
        }
        Ok(if listeners_ready.is_empty() {
            IdlePoll::Nothing
        } else {
            IdlePoll::Listeners(listeners_ready)
        })
    }

    /// Accept from the first of the `ready` listeners that has a connection. `Err` after an accept
    /// failure (logged) that is not about one connection.
    fn accept_ready(
        &mut self,
        listeners: &[Listener],
        ready: &[usize],
    ) -> Result<Option<Accepted>, ()> {
        let mut failed = false;
        for &i in ready {
            match listeners[i].accept() {
                Ok((stream, peer)) => {
                    return Ok(Some(Accepted {
                        index: i,
                        stream,
                        peer,
                        at: Instant::now(),
                    }))
                }
                Err(e) if is_transient_accept_error(&e) => {}
                Err(e) => {
                    self.log_accept_error(&listeners[i], &e);
                    failed = true;
                }
            }
        }
        if failed {
            Err(())
        } else {
            Ok(None)
        }
    }

    /// Read until a complete head is buffered (it is removed from the buffer).
    fn read_head(&mut self, sock: &Sock<'_>, deadline: Instant) -> Result<RequestHead, HeadEnd> {
        let limits = &self.config.limits;
        let max_len = limits.max_head_len();
        let mut parser = HeadParser::new();
        loop {
            if !self.rbuf.is_empty() {
                match parser.parse(self.rbuf.data(), limits) {
                    Ok(Parsed::Complete(head, n)) => {
                        self.rbuf.consume(n);
                        return Ok(head);
                    }
                    // A client trickling bytes never lets a wait time out; check the clock too.
                    Ok(Parsed::Partial) if Instant::now() >= deadline => {
                        return Err(HeadEnd::Timeout)
                    }
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Err(HeadEnd::Bad(e, parser.is_head_request())),
                }
            }
            let got = loop {
                // Try first: the bytes are usually already here.
                match self.rbuf.try_fill(sock, max_len) {
                    Ok(Some(n)) => break n,
                    Ok(None) => match self.wait_sock(sock, deadline) {
                        Ok(Waited::Ready) => {}
                        Ok(Waited::Deadline) if self.rbuf.is_empty() => return Err(HeadEnd::Quiet),
                        Ok(Waited::Deadline) => return Err(HeadEnd::Timeout),
                        Ok(_) => return Err(HeadEnd::Exit),
                        Err(e) => return Err(HeadEnd::Io(e)),
                    },
                    Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                        return Err(HeadEnd::Bad(
                            ferrocorn_http::RequestError::HeadersTooLarge("request head too large"),
                            parser.is_head_request(),
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(HeadEnd::Io(e)),
                }
            };
            if got == 0 {
                return Err(if self.rbuf.is_empty() {
                    HeadEnd::Quiet
                } else {
                    HeadEnd::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }

    /// Call the app for one request and complete the response. Returns whether the connection
    /// may carry another request, and what was sent.
    fn serve_request(
        &mut self,
        conn: &Conn<'_>,
        head: &RequestHead,
        peer: &PeerAddr,
        server: &ServerAddr,
        listeners: &[Listener],
    ) -> (bool, Sent) {
        let mut body = BodyState::new(head, &self.config.limits);
        conn.awaiting_continue
            .set(head.expects_continue() && !body.is_done());
        let last = self.max_reached();
        let must_close = must_close_check(self.control, self.listeners_quiet_at.take(), listeners);
        // With no keep-alive time a persistent connection would be closed at once anyway: say so.
        let keep_alive = head.keep_alive() && !last && !self.config.keepalive.is_zero();
        let mut res = Response::new(
            conn,
            &mut self.wbuf,
            head.version(),
            head.method() == "HEAD",
            keep_alive,
            &must_close,
            &self.config.server_header,
        );
        let result = {
            let mut req = Request {
                head,
                peer,
                server,
                conn,
                rbuf: &mut self.rbuf,
                body: &mut body,
            };
            call_app(&mut *self.app, &mut req, &mut res)
        };
        let result = result.and_then(|()| res.finish());
        // A stop that came after a keep-alive head left is dealt with by the wait for the next
        // request (which answers one already on its way).
        let persists = matches!(result, Ok(true)) && res.persists() && !last;
        let head_sent = res.head_sent();
        let sent = res.take_sent();
        drop(res);
        match result {
            Ok(_) if persists => (self.drain_for_next_request(conn, &mut body), sent),
            Ok(_) => {
                self.close(conn, self.linger_after(&body));
                (false, sent)
            }
            Err(err) => {
                log_app_error(head, &err, &body);
                self.aborted = matches!(err, AppError::Aborted(_));
                if head_sent {
                    self.close(conn, self.linger_after(&body));
                    return (false, sent);
                }
                let answered = self.answer_app_error(conn, head, &body, &err);
                (false, answered.unwrap_or(sent))
            }
        }
    }

    /// Read and discard what the app left of the request body so the next request can be read;
    /// a body too big to drain within the budget ends the connection instead.
    fn drain_for_next_request(&mut self, conn: &Conn<'_>, body: &mut BodyState) -> bool {
        if body.drain(conn, &mut self.rbuf, DRAIN_BUDGET) {
            return true;
        }
        self.close(conn, Linger::Full);
        false
    }

    /// Answer an app error that came before any of the response was sent, and close. Returns
    /// what was sent, or `None` when the client vanished or stalled (nobody to answer).
    fn answer_app_error(
        &mut self,
        conn: &Conn<'_>,
        head: &RequestHead,
        body: &BodyState,
        err: &AppError,
    ) -> Option<Sent> {
        // A response to HEAD never has a body, errors included.
        let head_request = head.method() == "HEAD";
        let bytes = match (&body.http_error, err) {
            (Some(e), _) if head_request => e.head_response(),
            (Some(e), _) => e.response(),
            (None, AppError::Io(_)) if body.io_failed => return None,
            _ if head_request => error_head_response(500),
            _ => error_response(500),
        };
        self.close_with_response(conn, &bytes, self.linger_after(body));
        Some(error_sent(&bytes))
    }

    /// How to close after a response: linger while the client may still be sending (an unread
    /// body, or pipelined requests already here).
    fn linger_after(&self, body: &BodyState) -> Linger {
        Linger::when(body.unread_may_follow() || !self.rbuf.is_empty())
    }

    /// Send an error response (it says `Connection: close`) and close.
    fn close_with_response(&mut self, conn: &Conn<'_>, bytes: &[u8], linger: Linger) {
        if let Err(e) = conn.sock.write_all(bytes, conn.io_timeout, false) {
            log::debug!("sending an error response failed: {e}");
            return;
        }
        self.close(conn, linger);
    }

    /// Close after our last response. When the client may still be sending (unread body, pipelined
    /// requests, an error answered early), half-close and discard what comes for a short while:
    /// closing with unread data makes the kernel send a reset that can destroy the response before
    /// the client reads it.
    fn close(&mut self, conn: &Conn<'_>, linger: Linger) {
        let deadline = match linger {
            // Dropping the socket closes it; nothing more to wait for.
            Linger::No => return,
            // Only what is already here: no waiting.
            Linger::Brief => Instant::now(),
            Linger::Full => Instant::now() + LINGER_TIME,
        };
        conn.sock.shutdown_write();
        let mut discarded = 0usize;
        let mut buf = [0u8; 8192];
        while discarded < LINGER_BYTES {
            match conn.sock.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.wait_sock(&conn.sock, deadline) {
                        Ok(Waited::Ready) => {}
                        _ => return,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// What an error response of the worker's own sent (`HTTP/1.1 NNN ...`).
fn error_sent(response: &[u8]) -> Sent {
    let status = response
        .get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok());
    Sent {
        status,
        headers: Vec::new(),
        body_bytes: ferrocorn_http::serialized_body_len(response),
    }
}

fn log_app_error(head: &RequestHead, err: &AppError, body: &BodyState) {
    match err {
        AppError::Io(e) if body.http_error.is_some() || body.io_failed => {
            log::debug!(
                "reading the body of {} {}: {e}",
                head.method(),
                head.target()
            );
        }
        AppError::Io(e) => log::info!(
            "connection error during {} {}: {e}",
            head.method(),
            head.target()
        ),
        // The app logged it already (a Python traceback, say): once is enough.
        AppError::Failed(_) => log::debug!("Error handling request {}: {err}", head.target()),
        AppError::BadResponse(_) => log::error!("Error handling request {}: {err}", head.target()),
        AppError::Aborted(_) => log::error!(
            "Request {} {} aborted after the worker timed out; the worker exits",
            head.method(),
            head.target()
        ),
    }
}

/// Whether the response being written must end its connection: the worker is stopping, or
/// clients wait to be accepted. A sync worker serves one connection at a time, so a keep-alive
/// client that keeps sending would starve clients waiting in the accept queue: when one is
/// waiting, this response ends the connection (gracefully, with `Connection: close`) and the
/// worker moves on. The idle wait that brought this request polled the listeners too; if that
/// was a moment ago (`quiet_at`), it answers the question without another poll.
fn must_close_check<'a>(
    control: &'a dyn Control,
    quiet_at: Option<Instant>,
    listeners: &'a [Listener],
) -> impl Fn() -> bool + 'a {
    move || {
        control.state() != WorkerState::Running
            || (quiet_at.is_none_or(|t| t.elapsed() >= QUIET_FRESH) && accept_pending(listeners))
    }
}

/// Call the app; a panic becomes an error the caller answers (the worker lives on).
fn call_app(
    app: &mut dyn App,
    req: &mut Request<'_>,
    res: &mut Response<'_>,
) -> Result<(), AppError> {
    catch_unwind(AssertUnwindSafe(|| app.call(req, res))).unwrap_or_else(|panic| {
        // Nobody logged this one (the panic message went to stderr only).
        let msg = panic_message(&panic);
        log::error!("Error handling request {}: {msg}", req.head.target());
        Err(AppError::Failed(msg))
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string());
    format!("the application panicked: {msg}")
}

/// Whether a connection is waiting on any listener (a zero-timeout poll).
fn accept_pending(listeners: &[Listener]) -> bool {
    let mut fds: Vec<PollFd<'_>> = listeners
        .iter()
        .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
        .collect();
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Errors that concern one connection, not the listener (accept(2) on Linux passes a new
/// connection's pending network error up as its own).
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}
