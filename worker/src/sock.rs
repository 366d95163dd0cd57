//! Non-blocking socket I/O with deadlines: every wait is a `poll(2)` bounded by a deadline, so one
//! mechanism gives both the per-operation I/O timeout and the whole-head timeout.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use ferrocorn_listener::Stream;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};

use crate::pool::Lane;

/// Longest single `poll` while a caller wants to hear about time passing (heartbeats).
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// What a send does when the socket is full.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnFull {
    Wait,
    Queue,
}

/// How a bounded wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The socket is ready (or has an error/hangup that the next call will report).
    Ready,
    /// The extra "wake" descriptor became readable.
    Woken,
    /// A [`TICK`] passed without anything happening; the deadline is still ahead.
    Tick,
    /// The deadline passed.
    Deadline,
}

/// Round up so a wait never returns early and spins with a zero timeout before its deadline.
pub(crate) fn poll_timeout(d: Duration) -> PollTimeout {
    let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

/// Wait until `fd` is ready for `events`, `wake` is readable, `deadline` passes or (with `tick`) a
/// [`TICK`] passes. Signals interrupting `poll` just restart the wait.
pub(crate) fn wait(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Instant,
    wake: Option<BorrowedFd<'_>>,
    tick: bool,
) -> io::Result<Waited> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(Waited::Deadline);
        }
        let mut left = deadline - now;
        let ticked = tick && left > TICK;
        if ticked {
            left = TICK;
        }
        let mut fds = [
            PollFd::new(fd, events),
            PollFd::new(wake.unwrap_or(fd), PollFlags::POLLIN),
        ];
        let nfds = if wake.is_some() { 2 } else { 1 };
        match poll(&mut fds[..nfds], poll_timeout(left)) {
            Ok(0) if ticked => return Ok(Waited::Tick),
            Ok(0) => continue,
            Ok(_) => {
                if wake.is_some() && fds[1].any().unwrap_or(false) {
                    return Ok(Waited::Woken);
                }
                return Ok(Waited::Ready);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}"))
}

/// How to close a connection the client may still be sending on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Linger {
    /// Nothing more can come: just close.
    No,
    /// Half-close and discard what has already arrived, without waiting.
    Brief,
    /// Half-close and discard for a while (the I/O loop's `LINGER_TIME`).
    Full,
}

impl Linger {
    pub(crate) fn when(unread_may_follow: bool) -> Linger {
        if unread_may_follow {
            Linger::Full
        } else {
            Linger::No
        }
    }
}

/// An accepted connection in non-blocking mode, or an in-memory stand-in for unit tests. Its
/// waits call `beat` every second: a worker moving a big body over a slow link is busy, not hung,
/// and each wait is bounded anyway.
pub(crate) struct Sock<'b> {
    io: Io,
    beat: &'b dyn Fn(),
    /// Sends since the client last sent us something, and whether TCP_NODELAY is on yet.
    sends_since_read: Cell<u32>,
    nodelay: Cell<bool>,
    /// The app thread's lane: its claim on the response is checked before each send.
    lane: Option<&'b Lane>,
    /// Response bytes the socket would not take yet (up to `out_bound`); later sends queue
    /// behind them.
    out: RefCell<Vec<u8>>,
    /// See [`crate::WorkerConfig::output_buffer`]; 0 in memory.
    out_bound: usize,
}

enum Io {
    Socket { stream: Stream, tcp: bool },
    Memory(RefCell<Memory>),
}

/// A connection in memory: what the client sent, and what the server wrote back.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub(crate) input: Vec<u8>,
    pub(crate) read: usize,
    pub(crate) output: Vec<u8>,
    /// Sends so far, and after how many every send fails (a client that went away).
    pub(crate) sends: usize,
    pub(crate) fail_after: Option<usize>,
    /// The app's calls on its response.
    pub(crate) starts: Vec<(u16, String, crate::Headers)>,
    pub(crate) writes: usize,
    pub(crate) sendfiles: Vec<(u64, Option<u64>)>,
}

impl std::fmt::Debug for Sock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Sock");
        match &self.io {
            Io::Socket { stream, .. } => d.field("stream", stream),
            Io::Memory(m) => d.field("memory", m),
        };
        d.finish_non_exhaustive()
    }
}

impl<'b> Sock<'b> {
    /// A connection the I/O loop accepted (already non-blocking), served on `lane`'s thread,
    /// buffering up to `out_bound` bytes for a slow reader. `nodelay`: TCP_NODELAY is already on.
    pub(crate) fn adopt(
        stream: Stream,
        nodelay: bool,
        lane: &'b Lane,
        out_bound: usize,
        beat: &'b dyn Fn(),
    ) -> Sock<'b> {
        let tcp = matches!(stream, Stream::Tcp(_));
        let mut sock = Sock::with_io(Io::Socket { stream, tcp }, beat);
        sock.nodelay.set(nodelay);
        sock.lane = Some(lane);
        sock.out_bound = out_bound;
        sock
    }

    /// The stream back, with the output still unsent and whether TCP_NODELAY is on.
    pub(crate) fn into_parts(self) -> Option<(Stream, Vec<u8>, bool)> {
        match self.io {
            Io::Socket { stream, .. } => Some((stream, self.out.into_inner(), self.nodelay.get())),
            Io::Memory(_) => None,
        }
    }

    /// A connection whose client sent `input` and then closed its side.
    pub(crate) fn memory(input: Vec<u8>, beat: &'b dyn Fn()) -> Sock<'b> {
        let memory = Memory {
            input,
            ..Memory::default()
        };
        Sock::with_io(Io::Memory(RefCell::new(memory)), beat)
    }

    fn with_io(io: Io, beat: &'b dyn Fn()) -> Sock<'b> {
        Sock {
            io,
            beat,
            sends_since_read: Cell::new(0),
            nodelay: Cell::new(false),
            lane: None,
            out: RefCell::new(Vec::new()),
            out_bound: 0,
        }
    }

    /// The in-memory connection, if this is one.
    pub(crate) fn memory_io(&self) -> Option<&RefCell<Memory>> {
        match &self.io {
            Io::Memory(m) => Some(m),
            Io::Socket { .. } => None,
        }
    }

    /// The socket to poll or `sendfile(2)` to; `None` in memory, where nothing ever blocks.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.io {
            Io::Socket { stream, .. } => Some(stream.as_fd()),
            Io::Memory(_) => None,
        }
    }

    /// One non-blocking read attempt.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &self.io {
            Io::Socket {
                stream: Stream::Tcp(s),
                ..
            } => {
                let mut r = s;
                r.read(buf)
            }
            Io::Socket {
                stream: Stream::Unix(s),
                ..
            } => {
                let mut r = s;
                r.read(buf)
            }
            Io::Memory(m) => {
                let mut m = m.borrow_mut();
                let n = buf.len().min(m.input.len() - m.read);
                buf[..n].copy_from_slice(&m.input[m.read..m.read + n]);
                m.read += n;
                Ok(n)
            }
        }?;
        if n > 0 {
            self.sends_since_read.set(0);
        }
        Ok(n)
    }

    /// Call before each send. Our sends are already coalesced in buffers, so Nagle's algorithm
    /// only ever delays a send that follows another one the client has not acknowledged yet
    /// (a streamed body, the last chunk, pipelined responses): up to a delayed-ACK timeout, 40 ms.
    /// Then TCP_NODELAY is switched on; the common one-send response never pays the syscall.
    /// A send with MSG_MORE is not counted: it leaves together with the next one.
    pub(crate) fn before_send(&self, counts: bool) {
        let sends = self.sends_since_read.get();
        if counts {
            self.sends_since_read.set(sends.saturating_add(1));
        }
        if sends > 0 && !self.nodelay.get() {
            self.nodelay.set(true);
            if let Io::Socket {
                stream: Stream::Tcp(s),
                ..
            } = &self.io
            {
                // Only latency is at stake; a failure here is not worth failing the response.
                let _ = s.set_nodelay(true);
            }
        }
    }

    /// Read at least one byte (or EOF) before `deadline`.
    pub(crate) fn read_before(&self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        loop {
            match self.try_read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.wait_ticking(PollFlags::POLLIN, deadline)
                .map_err(|_| timed_out("reading from the client"))?;
        }
    }

    /// Write all of `data`, each wait for the socket to drain bounded by `timeout`. `more` tells TCP
    /// that more data follows at once (MSG_MORE), so a head and a sendfile body share packets.
    /// When the socket is full, up to `out_bound` bytes wait in the connection's output
    /// instead (only for connections of the I/O loop), so a slow reader does not hold the app.
    pub(crate) fn write_all(&self, data: &[u8], timeout: Duration, more: bool) -> io::Result<()> {
        let (fd, tcp) = match &self.io {
            Io::Socket { stream, tcp } => (stream.as_raw_fd(), *tcp),
            Io::Memory(m) => return m.borrow_mut().send(data),
        };
        if self.lane.is_some_and(|lane| !lane.claim_response()) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the request was abandoned after the worker timed out",
            ));
        }
        if !self.out.borrow().is_empty() {
            if self.queue_output(data) {
                return Ok(());
            }
            self.flush_output(timeout)?;
        }
        // MSG_NOSIGNAL: a client that went away is an EPIPE error here, never a SIGPIPE.
        let mut flags = MsgFlags::MSG_NOSIGNAL;
        if more && tcp {
            flags |= MsgFlags::from_bits_retain(libc::MSG_MORE);
        }
        self.before_send(!more);
        let on_full = if self.lane.is_some() {
            OnFull::Queue
        } else {
            OnFull::Wait
        };
        self.send_waiting(fd, data, flags, timeout, on_full)
    }

    /// Send `data`; when the socket is full, wait for it (each wait bounded by `timeout`), or
    /// queue the rest in the output if the bound allows.
    fn send_waiting(
        &self,
        fd: RawFd,
        mut data: &[u8],
        flags: MsgFlags,
        timeout: Duration,
        on_full: OnFull,
    ) -> io::Result<()> {
        while !data.is_empty() {
            match send(fd, data, flags) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(Errno::EAGAIN) => {
                    if on_full == OnFull::Queue && self.queue_output(data) {
                        return Ok(());
                    }
                    self.wait_writable(timeout)?
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Queue `data` behind the output already waiting, if the bound allows.
    fn queue_output(&self, data: &[u8]) -> bool {
        let mut out = self.out.borrow_mut();
        if out.len() + data.len() > self.out_bound {
            return false;
        }
        out.extend_from_slice(data);
        true
    }

    /// Send what waits in the output, waiting for the socket (each wait bounded by `timeout`):
    /// before bytes that cannot queue behind it (a sendfile body, or past the bound).
    pub(crate) fn flush_output(&self, timeout: Duration) -> io::Result<()> {
        let Io::Socket { stream, .. } = &self.io else {
            return Ok(());
        };
        let out = std::mem::take(&mut *self.out.borrow_mut());
        if out.is_empty() {
            return Ok(());
        }
        let fd = stream.as_raw_fd();
        self.send_waiting(fd, &out, MsgFlags::MSG_NOSIGNAL, timeout, OnFull::Wait)
    }

    pub(crate) fn wait_writable(&self, timeout: Duration) -> io::Result<()> {
        self.wait_ticking(PollFlags::POLLOUT, Instant::now() + timeout)
            .map_err(|_| timed_out("writing to the client"))
    }

    /// Wait for `events` until `deadline`, beating every second. `Err(())` at the deadline;
    /// a failing `poll` counts as ready so the next I/O call reports the error.
    fn wait_ticking(&self, events: PollFlags, deadline: Instant) -> Result<(), ()> {
        let Some(fd) = self.fd() else {
            return Ok(());
        };
        loop {
            match wait(fd, events, deadline, None, true) {
                Ok(Waited::Tick) => (self.beat)(),
                Ok(Waited::Deadline) => return Err(()),
                Ok(_) | Err(_) => return Ok(()),
            }
        }
    }
}

impl Memory {
    pub(crate) fn recorded(&self) -> crate::Recorded {
        crate::Recorded {
            starts: self.starts.clone(),
            writes: self.writes,
            sendfiles: self.sendfiles.clone(),
            wire: self.output.clone(),
        }
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if self.fail_after.is_some_and(|n| self.sends >= n) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.sends += 1;
        self.output.extend_from_slice(data);
        Ok(())
    }
}

/// A connection's read buffer: `buf[start..end]` holds received bytes not consumed yet. Bytes past
/// one request are the start of the next (pipelining).
#[derive(Debug)]
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Initial (and body-reading) size of a read buffer.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        // A huge head made it grow; do not keep that for every later connection.
        if self.buf.len() > 4 * READ_CHUNK {
            self.buf = vec![0; READ_CHUNK];
        }
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space after the data, moving the data to the front or growing (up to `max_len` bytes
    /// in all) when full. Empty when the data already fills `max_len`.
    fn spare(&mut self, max_len: usize) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < max_len {
                let len = (self.buf.len() * 2).min(max_len);
                self.buf.resize(len, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Read once from `sock` (waiting until `deadline`) and append. `Ok(0)` is EOF; an error of kind
    /// `OutOfMemory` means the buffer is already at `max_len`.
    pub(crate) fn fill_before(
        &mut self,
        sock: &Sock,
        deadline: Instant,
        max_len: usize,
    ) -> io::Result<usize> {
        let spare = self.spare(max_len);
        if spare.is_empty() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let n = sock.read_before(spare, deadline)?;
        self.end += n;
        Ok(n)
    }

    /// Append what one read of `stream` gives (the I/O loop's reads). `n == 0` is EOF;
    /// `WouldBlock` when nothing is there; `OutOfMemory` when the buffer is already at `max_len`.
    pub(crate) fn read_from(&mut self, stream: &Stream, max_len: usize) -> io::Result<Filled> {
        let spare = self.spare(max_len);
        if spare.is_empty() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let room = spare.len();
        let n = match stream {
            Stream::Tcp(s) => (&*s).read(spare),
            Stream::Unix(s) => (&*s).read(spare),
        }?;
        self.end += n;
        Ok(Filled {
            n,
            drained: n < room,
        })
    }
}

/// What one [`ReadBuf::read_from`] gave.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filled {
    pub(crate) n: usize,
    /// Fewer bytes than there was room for: the socket had nothing more at that moment, so
    /// whatever comes next raises a readiness edge of its own.
    pub(crate) drained: bool,
}
