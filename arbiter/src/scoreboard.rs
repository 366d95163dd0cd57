//! What every worker is doing, across processes: one shared-memory slot per worker with the
//! monotonic time of its last beat, whether it serves a request (which, since when), how many it
//! served and how long the last one took. gunicorn touches a temp file for liveness; a shared page
//! costs no syscalls. The master reads slots to time workers out and to name the request a hung
//! worker was stuck in; stats and autoscaling can read the same.
//!
//! Each slot has a single writer (its worker) and readers that never write to it except
//! [`Scoreboard::arm`] between two workers. The request's method and path are written under a
//! sequence lock, so a reader never sees half of one request and half of another.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use nix::time::{clock_gettime, ClockId};

/// How many workers can be alive at once (TTIN beyond this is refused).
pub(crate) const MAX_SLOTS: usize = 1024;

/// High bit of the beat: armed for a new worker that has not beaten yet. Milliseconds of uptime
/// never reach it.
const NOT_BOOTED: u64 = 1 << 63;

/// Bytes of `METHOD path` kept per slot; longer ones are cut (at a character boundary).
pub const REQUEST_TEXT_MAX: usize = 128;
const TEXT_WORDS: usize = REQUEST_TEXT_MAX / 8;

/// Milliseconds on CLOCK_MONOTONIC, which is the same clock in every process of the machine.
pub(crate) fn monotonic_ms() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

/// What concerns every worker, at the start of the mapping, before the slots.
#[repr(C)]
struct Header {
    /// Non-zero once the whole server is stopping for good (no successor or parent master
    /// shares the listeners): stopping workers then drain the accept queue.
    server_stopping: AtomicU64,
}

/// One worker's slot as laid out in shared memory. All-zero is a valid (long silent, idle) slot.
#[repr(C)]
struct RawSlot {
    /// Milliseconds of the last beat, with [`NOT_BOOTED`] until the worker's first one.
    beat: AtomicU64,
    /// Milliseconds when the current request started (never 0 then); 0 while idle.
    request_since: AtomicU64,
    served: AtomicU64,
    /// Milliseconds the last finished request took.
    last_duration: AtomicU64,
    /// Sequence lock over `lens` and `text`: odd while the worker rewrites them.
    seq: AtomicU64,
    /// Method length in the low byte, path length above it.
    lens: AtomicU64,
    text: [AtomicU64; TEXT_WORDS],
    /// Responses by status class: 1xx to 5xx.
    statuses: [AtomicU64; 5],
}

/// What a worker is doing, as read from its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Forked but not yet in its serving loop (loading the app).
    Booting,
    /// Booted and waiting for a connection.
    Idle,
    /// Serving a request.
    Busy,
}

/// A consistent reading of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Booting, idle or busy.
    pub state: SlotState,
    /// Time since the last beat (or since the slot was armed).
    pub silence: Duration,
    /// Requests this worker has finished.
    pub served: u64,
    /// How long the current request has been running (`Busy` only).
    pub busy_for: Option<Duration>,
    /// The current (`Busy`) or last request's method and path, possibly truncated.
    pub method: String,
    /// The path of that request (see `method`).
    pub path: String,
    /// How long the last finished request took (millisecond resolution).
    pub last_duration: Duration,
    /// Responses sent by this worker by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub statuses: [u64; 5],
}

impl SlotSnapshot {
    /// `GET /path`, or `None` when the worker has not started any request.
    pub fn request(&self) -> Option<String> {
        (!self.method.is_empty()).then(|| format!("{} {}", self.method, self.path))
    }
}

/// The table of slots, mapped `MAP_SHARED` before any fork so every worker writes the same memory.
#[derive(Debug)]
pub struct Scoreboard {
    header: NonNull<Header>,
    slots: NonNull<RawSlot>,
}

impl Scoreboard {
    /// Map a zeroed table of [`capacity`](Scoreboard::capacity) slots `MAP_SHARED`; call it
    /// before the first fork. The mapping is never unmapped.
    pub fn new() -> std::io::Result<Self> {
        let header_len = std::mem::size_of::<Header>();
        let len =
            NonZeroUsize::new(header_len + MAX_SLOTS * std::mem::size_of::<RawSlot>()).unwrap();
        // SAFETY: a fresh anonymous mapping aliases nothing; it is zero-filled, which is a valid
        // bit pattern for a Header and a RawSlot (atomics only), page-aligned (so aligned for
        // AtomicU64, and the slots after the 8-byte-multiple header are too), and
        // never unmapped, so pointers into it stay valid for the life of the process and of every
        // forked child.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(std::io::Error::from)?;
        let header = ptr.cast::<Header>();
        // SAFETY: the header's length is within the mapping, and the slots fill the rest.
        let slots = unsafe { ptr.cast::<u8>().add(header_len) }.cast();
        Ok(Scoreboard { header, slots })
    }

    /// How many slots the table has, i.e. how many workers can be alive at once.
    pub fn capacity(&self) -> usize {
        MAX_SLOTS
    }

    fn slot(&self, index: usize) -> &RawSlot {
        assert!(index < MAX_SLOTS);
        // SAFETY: index is in bounds of the mapping, which lives forever (see `new`).
        unsafe { &*self.slots.as_ptr().add(index) }
    }

    /// Reset a slot for a new worker: it counts as having just beaten, but not as booted until
    /// its own first beat (which clears `NOT_BOOTED`).
    pub fn arm(&self, index: usize) {
        let slot = self.slot(index);
        slot.request_since.store(0, Ordering::Relaxed);
        slot.served.store(0, Ordering::Relaxed);
        slot.last_duration.store(0, Ordering::Relaxed);
        for count in &slot.statuses {
            count.store(0, Ordering::Relaxed);
        }
        write_request(slot, "", "");
        slot.beat
            .store(monotonic_ms() | NOT_BOOTED, Ordering::Release);
    }

    /// Time since the worker in `index` last beat (or was armed).
    pub fn silence(&self, index: usize) -> Duration {
        let last = self.slot(index).beat.load(Ordering::Relaxed) & !NOT_BOOTED;
        Duration::from_millis(monotonic_ms().saturating_sub(last))
    }

    /// Whether the worker in `index` has beaten at least once since it was armed, i.e. it got as
    /// far as its serving loop.
    pub fn booted(&self, index: usize) -> bool {
        self.slot(index).beat.load(Ordering::Relaxed) & NOT_BOOTED == 0
    }

    /// A consistent reading of slot `index` (the request text under its sequence lock).
    pub fn snapshot(&self, index: usize) -> SlotSnapshot {
        let slot = self.slot(index);
        let now = monotonic_ms();
        let since = slot.request_since.load(Ordering::Acquire);
        let state = if !self.booted(index) {
            SlotState::Booting
        } else if since != 0 {
            SlotState::Busy
        } else {
            SlotState::Idle
        };
        let (method, path) = read_request(slot);
        SlotSnapshot {
            state,
            silence: self.silence(index),
            served: slot.served.load(Ordering::Relaxed),
            busy_for: (since != 0).then(|| Duration::from_millis(now.saturating_sub(since))),
            method,
            path,
            last_duration: Duration::from_millis(slot.last_duration.load(Ordering::Relaxed)),
            statuses: slot.statuses.each_ref().map(|c| c.load(Ordering::Relaxed)),
        }
    }

    /// The worker's end of slot `index`.
    pub fn worker_slot(&self, index: usize) -> WorkerSlot {
        WorkerSlot {
            header: self.header,
            slot: NonNull::from(self.slot(index)),
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the header is in the never-unmapped mapping (see `new`).
        unsafe { self.header.as_ref() }
    }

    /// The server is going away for good: workers told to stop from now on serve what waits in
    /// the listeners' accept queues before exiting (see [`WorkerSlot::server_stopping`]).
    pub fn set_server_stopping(&self) {
        self.header().server_stopping.store(1, Ordering::Release);
    }
}

/// A worker's end of its slot: [`WorkerSlot::beat`] often (at least every `--timeout / 2`), and
/// say when each request starts and ends. Nothing here makes a system call besides reading the
/// clock (a vDSO call).
#[derive(Debug)]
pub struct WorkerSlot {
    header: NonNull<Header>,
    slot: NonNull<RawSlot>,
}

// SAFETY: a WorkerSlot only points into the never-unmapped shared mapping and touches it through
// atomics alone, so any thread may use it; the one-writer rule is per request lane, not per thread.
unsafe impl Send for WorkerSlot {}
// SAFETY: as for Send: all access is atomic.
unsafe impl Sync for WorkerSlot {}

impl WorkerSlot {
    fn raw(&self) -> &RawSlot {
        // SAFETY: the slot points into the never-unmapped shared table (see `Scoreboard::new`).
        unsafe { self.slot.as_ref() }
    }

    /// Whether the master said the whole server is stopping for good
    /// ([`Scoreboard::set_server_stopping`]), not just this worker being retired.
    pub fn server_stopping(&self) -> bool {
        // SAFETY: the header is in the never-unmapped shared mapping (see `Scoreboard::new`).
        let header = unsafe { self.header.as_ref() };
        header.server_stopping.load(Ordering::Acquire) != 0
    }

    /// Say the worker is alive; the master kills a worker silent for longer than `--timeout`.
    pub fn beat(&self) {
        self.raw().beat.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// A request began (also a beat).
    pub fn request_started(&self, method: &str, path: &str) {
        let slot = self.raw();
        write_request(slot, method, path);
        let now = monotonic_ms();
        slot.request_since.store(now.max(1), Ordering::Release);
        slot.beat.store(now, Ordering::Relaxed);
    }

    /// The current request is over (also a beat).
    pub fn request_finished(&self) {
        let slot = self.raw();
        let now = monotonic_ms();
        let since = slot.request_since.swap(0, Ordering::AcqRel);
        if since != 0 {
            slot.last_duration
                .store(now.saturating_sub(since), Ordering::Relaxed);
            slot.served.fetch_add(1, Ordering::Relaxed);
        }
        slot.beat.store(now, Ordering::Relaxed);
    }

    /// A response with `status` was sent; statuses outside 100..=599 are not counted.
    pub fn count_status(&self, status: u16) {
        if let Some(count) = (status / 100)
            .checked_sub(1)
            .and_then(|class| self.raw().statuses.get(usize::from(class)))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Cut `s` to at most `max` bytes without splitting a character.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The single writer's half of the sequence lock.
fn write_request(slot: &RawSlot, method: &str, path: &str) {
    // The method's length must fit the low byte of `lens`.
    let method = truncated(method, REQUEST_TEXT_MAX.min(255));
    let path = truncated(path, REQUEST_TEXT_MAX - method.len());
    let mut bytes = [0u8; REQUEST_TEXT_MAX];
    bytes[..method.len()].copy_from_slice(method.as_bytes());
    bytes[method.len()..method.len() + path.len()].copy_from_slice(path.as_bytes());
    let seq = slot.seq.load(Ordering::Relaxed);
    slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
    fence(Ordering::Release);
    slot.lens.store(
        method.len() as u64 | (path.len() as u64) << 8,
        Ordering::Relaxed,
    );
    for (word, chunk) in slot.text.iter().zip(bytes.chunks_exact(8)) {
        word.store(
            u64::from_ne_bytes(chunk.try_into().unwrap()),
            Ordering::Relaxed,
        );
    }
    slot.seq.store(seq.wrapping_add(2), Ordering::Release);
}

/// The readers' half: retry while the worker is mid-write. A worker killed mid-write leaves the
/// sequence odd for ever, so give up after a while and report nothing.
fn read_request(slot: &RawSlot) -> (String, String) {
    for _ in 0..1000 {
        let before = slot.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let lens = slot.lens.load(Ordering::Relaxed);
        let mut bytes = [0u8; REQUEST_TEXT_MAX];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(&slot.text) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) != before {
            continue;
        }
        let method_len = ((lens & 0xff) as usize).min(REQUEST_TEXT_MAX);
        let path_len = ((lens >> 8) as usize).min(REQUEST_TEXT_MAX - method_len);
        let method = &bytes[..method_len];
        let path = &bytes[method_len..method_len + path_len];
        return (
            String::from_utf8_lossy(method).into_owned(),
            String::from_utf8_lossy(path).into_owned(),
        );
    }
    (String::new(), String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    /// Run `child` in a forked process and wait for it to exit 0.
    fn in_child(child: impl FnOnce()) {
        // SAFETY: the child only stores to shared memory and calls _exit; no locks are taken.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                child();
                // SAFETY: _exit skips the test harness's atexit/destructors, which belong to the parent.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                assert!(matches!(
                    waitpid(child, None).unwrap(),
                    WaitStatus::Exited(_, 0)
                ));
            }
        }
    }

    #[test]
    fn a_beat_in_a_forked_child_is_seen_by_the_parent() {
        let board = Scoreboard::new().unwrap();
        // Pretend slot 3 last beat long ago.
        board.slot(3).beat.store(0, Ordering::Relaxed);
        assert!(board.silence(3) > Duration::from_secs(1));
        in_child(|| board.worker_slot(3).beat());
        assert!(
            board.silence(3) < Duration::from_secs(5),
            "the child's beat is visible"
        );
        assert!(
            board.silence(4) > Duration::from_secs(1),
            "other slots untouched"
        );
    }

    #[test]
    fn an_armed_slot_is_fresh_but_not_booted_until_the_first_beat() {
        let board = Scoreboard::new().unwrap();
        board.slot(5).beat.store(0, Ordering::Relaxed);
        board.arm(5);
        assert!(!board.booted(5));
        assert_eq!(board.snapshot(5).state, SlotState::Booting);
        assert!(
            board.silence(5) < Duration::from_secs(5),
            "arming counts as a beat"
        );
        board.worker_slot(5).beat();
        assert!(board.booted(5));
        assert!(board.silence(5) < Duration::from_secs(5));
        board.arm(5);
        assert!(!board.booted(5), "re-arming for the next worker resets it");
    }

    #[test]
    fn a_request_started_in_a_child_is_named_by_the_parent_until_it_finishes() {
        let board = Scoreboard::new().unwrap();
        board.arm(7);
        in_child(|| {
            let slot = board.worker_slot(7);
            slot.beat();
            slot.request_started("GET", "/first");
            slot.request_finished();
            slot.request_started("POST", "/slow/päth");
        });
        let busy = board.snapshot(7);
        assert_eq!(busy.state, SlotState::Busy);
        assert_eq!(busy.request().as_deref(), Some("POST /slow/päth"));
        assert_eq!(busy.served, 1);
        assert!(busy.busy_for.is_some());
        in_child(|| board.worker_slot(7).request_finished());
        in_child(|| {
            let slot = board.worker_slot(7);
            for status in [200, 204, 404, 503, 99, 600] {
                slot.count_status(status);
            }
        });
        let idle = board.snapshot(7);
        assert_eq!(
            idle.statuses,
            [0, 2, 0, 1, 1],
            "1xx..5xx, out of range ignored"
        );
        assert_eq!(idle.state, SlotState::Idle);
        assert_eq!(idle.served, 2);
        assert_eq!(idle.busy_for, None);
        assert_eq!(
            idle.request().as_deref(),
            Some("POST /slow/päth"),
            "the last one"
        );
        board.arm(7);
        assert_eq!(board.snapshot(7).statuses, [0; 5]);
        assert_eq!(
            board.snapshot(7).request(),
            None,
            "a new worker starts blank"
        );
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let board = Scoreboard::new().unwrap();
        let path = format!("/{}", "é".repeat(100));
        board.worker_slot(0).request_started("GET", &path);
        let snap = board.snapshot(0);
        assert_eq!(snap.method, "GET");
        assert!(path.starts_with(&snap.path), "{}", snap.path);
        assert!(snap.method.len() + snap.path.len() <= REQUEST_TEXT_MAX);
        assert!(snap.path.len() >= REQUEST_TEXT_MAX - 4);
    }

    #[test]
    fn a_server_stop_set_by_the_master_is_seen_by_a_forked_worker() {
        let board = Scoreboard::new().unwrap();
        // A panic would unwind inside the forked test harness: fail by the exit code instead.
        let expect = |stopping: bool| {
            if board.worker_slot(2).server_stopping() != stopping {
                // SAFETY: as in `in_child`: a non-zero exit fails the parent's assertion.
                unsafe { libc::_exit(1) }
            }
        };
        in_child(|| expect(false));
        board.set_server_stopping();
        in_child(|| expect(true));
    }

    /// Kills the forked writer when the test ends, passed or not.
    struct Writer(nix::unistd::Pid);

    impl Drop for Writer {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(self.0, None);
        }
    }

    #[test]
    fn a_reader_never_sees_a_torn_request_while_a_child_rewrites_it() {
        let board = Scoreboard::new().unwrap();
        let (a, b) = ("/a".repeat(40), "/b".repeat(50));
        board.worker_slot(9).request_started("GET", &a);
        // SAFETY: as in `in_child`; this child only stores to shared memory until killed.
        let writer = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: alarm only arms a timer; its default action ends a child left behind.
                unsafe { libc::alarm(30) };
                let slot = board.worker_slot(9);
                loop {
                    slot.request_started("GET", &a);
                    slot.request_started("DELETE", &b);
                }
            }
            ForkResult::Parent { child } => Writer(child),
        };
        let (a, b) = (format!("GET {a}"), format!("DELETE {b}"));
        let mut consistent = 0;
        for _ in 0..20_000 {
            // A reader outpaced by a writer that never pauses may give up (None), but never
            // returns a mix of two requests.
            if let Some(request) = board.snapshot(9).request() {
                assert!(request == a || request == b, "torn: {request:?}");
                consistent += 1;
            }
        }
        drop(writer);
        assert!(consistent > 0, "no read got through");
    }
}
