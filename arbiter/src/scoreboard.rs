//! What every worker is doing, across processes: one shared-memory slot per worker with the
//! monotonic time of its last beat, how many requests it served and how long the last one took,
//! and one request lane per app thread (`--threads`): which request that thread serves and since
//! when. gunicorn touches a temp file for liveness; a shared page costs no syscalls. The master
//! reads slots to time requests and workers out and to name the request a hung worker was stuck
//! in; stats and autoscaling read the same.
//!
//! Each lane has a single writer (the worker thread serving on it); the slot's counters are
//! atomics any of the worker's threads may bump; readers never write except
//! [`Scoreboard::arm`] between two workers. A lane's method and path are written under its own
//! sequence lock, so a reader never sees half of one request and half of another.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use nix::time::{clock_gettime, ClockId};

/// How many workers can be alive at once (TTIN beyond this is refused).
pub(crate) const MAX_SLOTS: usize = 1024;

/// Most request lanes (app threads) per worker: the table is sized for them all before the first
/// fork, `MAX_SLOTS` times over.
pub const MAX_LANES: usize = 1024;

/// High bit of the beat: armed for a new worker that has not beaten yet. Milliseconds of uptime
/// never reach it.
const NOT_BOOTED: u64 = 1 << 63;

/// Bytes of `METHOD path` kept per lane; longer ones are cut (at a character boundary).
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

/// One worker's slot as laid out in shared memory, followed by its lanes. All-zero is a valid
/// (long silent, idle) slot.
#[repr(C)]
struct RawSlot {
    /// Milliseconds of the last beat, with [`NOT_BOOTED`] until the worker's first one.
    beat: AtomicU64,
    served: AtomicU64,
    /// Milliseconds the last finished request took.
    last_duration: AtomicU64,
    /// Responses by status class: 1xx to 5xx.
    statuses: [AtomicU64; 5],
    /// Complete request heads queued in the worker for a free app thread.
    waiting: AtomicU64,
    /// The lane that started a request last: its text is the worker's "last request".
    last_lane: AtomicU64,
}

/// One app thread's request, after its slot.
#[repr(C)]
struct RawLane {
    /// Milliseconds when the current request started (never 0 then); 0 while idle.
    since: AtomicU64,
    /// Sequence lock over `lens` and `text`: odd while the worker rewrites them. It moves by 2
    /// per request started, so it also tells one request from the next.
    seq: AtomicU64,
    /// Method length in the low byte, path length above it.
    lens: AtomicU64,
    text: [AtomicU64; TEXT_WORDS],
}

/// What a worker is doing, as read from its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Forked but not yet in its serving loop (loading the app).
    Booting,
    /// Booted and no app thread serves a request.
    Idle,
    /// At least one app thread serves a request.
    Busy,
}

/// A consistent reading of one lane (app thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneSnapshot {
    /// How long its current request has been running; `None` while the thread is idle.
    pub busy_for: Option<Duration>,
    /// The current or last request's method, possibly truncated; empty before the first.
    pub method: String,
    /// The path of that request (see `method`).
    pub path: String,
    /// Requests started on this lane since the slot was armed (and then some): a request is
    /// the same one while this stays the same.
    pub started: u64,
}

impl LaneSnapshot {
    /// `GET /path`, or `None` when the thread has not started any request.
    pub fn request(&self) -> Option<String> {
        request_text(&self.method, &self.path)
    }
}

/// A consistent reading of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Booting, idle or busy (any lane busy).
    pub state: SlotState,
    /// Time since the last beat (or since the slot was armed).
    pub silence: Duration,
    /// Requests this worker has finished.
    pub served: u64,
    /// How long the longest-running current request has been running (`Busy` only).
    pub busy_for: Option<Duration>,
    /// The longest-running current request's (`Busy`) or else the last request's method and
    /// path, possibly truncated.
    pub method: String,
    /// The path of that request (see `method`).
    pub path: String,
    /// How long the last finished request took (millisecond resolution).
    pub last_duration: Duration,
    /// Responses sent by this worker by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub statuses: [u64; 5],
    /// One per app thread.
    pub lanes: Vec<LaneSnapshot>,
    /// Complete request heads queued in the worker for a free app thread.
    pub waiting: u64,
}

impl SlotSnapshot {
    /// `GET /path`, or `None` when the worker has not started any request.
    pub fn request(&self) -> Option<String> {
        request_text(&self.method, &self.path)
    }

    /// App threads serving a request now.
    pub fn busy_lanes(&self) -> usize {
        self.lanes.iter().filter(|l| l.busy_for.is_some()).count()
    }
}

fn request_text(method: &str, path: &str) -> Option<String> {
    (!method.is_empty()).then(|| format!("{method} {path}"))
}

/// The table of slots, mapped `MAP_SHARED` before any fork so every worker writes the same memory.
#[derive(Debug)]
pub struct Scoreboard {
    header: NonNull<Header>,
    slots: NonNull<u8>,
    lanes: usize,
}

/// Bytes of one slot with `lanes` lanes after it (a multiple of 8, so every slot stays aligned).
fn slot_stride(lanes: usize) -> usize {
    std::mem::size_of::<RawSlot>() + lanes * std::mem::size_of::<RawLane>()
}

impl Scoreboard {
    /// Map a zeroed table of [`capacity`](Scoreboard::capacity) slots of `lanes` request lanes
    /// each (one per app thread, 1..=[`MAX_LANES`]) `MAP_SHARED`; call it before the first
    /// fork. The mapping is never unmapped.
    pub fn new(lanes: usize) -> std::io::Result<Self> {
        if !(1..=MAX_LANES).contains(&lanes) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{lanes} app threads per worker: 1 to {MAX_LANES} are supported"),
            ));
        }
        let header_len = std::mem::size_of::<Header>();
        let len = NonZeroUsize::new(header_len + MAX_SLOTS * slot_stride(lanes)).unwrap();
        // SAFETY: a fresh anonymous mapping aliases nothing; it is zero-filled, which is a valid
        // bit pattern for a Header, a RawSlot and a RawLane (atomics only), page-aligned (so
        // aligned for AtomicU64, and so is everything after the 8-byte-multiple header at
        // 8-byte-multiple strides), and never unmapped, so pointers into it stay valid for the
        // life of the process and of every forked child.
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
        let slots = unsafe { ptr.cast::<u8>().add(header_len) };
        Ok(Scoreboard {
            header,
            slots,
            lanes,
        })
    }

    /// How many slots the table has, i.e. how many workers can be alive at once.
    pub fn capacity(&self) -> usize {
        MAX_SLOTS
    }

    /// Request lanes per slot (app threads per worker).
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    fn slot_ptr(&self, index: usize) -> NonNull<RawSlot> {
        assert!(index < MAX_SLOTS);
        // SAFETY: index is in bounds, so the slot and its lanes lie within the mapping.
        unsafe { self.slots.add(index * slot_stride(self.lanes)) }.cast()
    }

    fn slot(&self, index: usize) -> &RawSlot {
        // SAFETY: the slot is in the mapping, which lives forever (see `new`).
        unsafe { self.slot_ptr(index).as_ref() }
    }

    fn lanes_of(&self, index: usize) -> &[RawLane] {
        // SAFETY: as for `slot`; the slot's lanes follow it (see `slot_stride`).
        unsafe { lanes_after(self.slot_ptr(index), self.lanes) }
    }

    /// Reset a slot for a new worker: it counts as having just beaten, but not as booted until
    /// its own first beat (which clears `NOT_BOOTED`).
    pub fn arm(&self, index: usize) {
        let slot = self.slot(index);
        slot.served.store(0, Ordering::Relaxed);
        slot.last_duration.store(0, Ordering::Relaxed);
        slot.waiting.store(0, Ordering::Relaxed);
        slot.last_lane.store(0, Ordering::Relaxed);
        for count in &slot.statuses {
            count.store(0, Ordering::Relaxed);
        }
        for lane in self.lanes_of(index) {
            lane.since.store(0, Ordering::Relaxed);
            write_request(lane, "", "");
        }
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

    /// A consistent reading of slot `index` (each lane's request text under its sequence lock).
    pub fn snapshot(&self, index: usize) -> SlotSnapshot {
        let slot = self.slot(index);
        let now = monotonic_ms();
        let lanes: Vec<LaneSnapshot> = self
            .lanes_of(index)
            .iter()
            .map(|lane| read_lane(lane, now))
            .collect();
        let longest = lanes
            .iter()
            .filter(|l| l.busy_for.is_some())
            .max_by_key(|l| l.busy_for);
        let last = usize::try_from(slot.last_lane.load(Ordering::Relaxed))
            .ok()
            .and_then(|i| lanes.get(i));
        let shown = longest.or(last);
        let state = if !self.booted(index) {
            SlotState::Booting
        } else if longest.is_some() {
            SlotState::Busy
        } else {
            SlotState::Idle
        };
        SlotSnapshot {
            state,
            silence: self.silence(index),
            served: slot.served.load(Ordering::Relaxed),
            busy_for: longest.and_then(|l| l.busy_for),
            method: shown.map(|l| l.method.clone()).unwrap_or_default(),
            path: shown.map(|l| l.path.clone()).unwrap_or_default(),
            last_duration: Duration::from_millis(slot.last_duration.load(Ordering::Relaxed)),
            statuses: slot.statuses.each_ref().map(|c| c.load(Ordering::Relaxed)),
            waiting: slot.waiting.load(Ordering::Relaxed),
            lanes,
        }
    }

    /// The worker's end of slot `index`.
    pub fn worker_slot(&self, index: usize) -> WorkerSlot {
        let slot = self.slot_ptr(index);
        WorkerSlot {
            header: self.header,
            slot,
            lanes: self.lanes,
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

/// The `count` lanes laid out right after `slot`.
///
/// # Safety
/// `slot` must point at a slot of the never-unmapped table made for `count` lanes.
unsafe fn lanes_after<'a>(slot: NonNull<RawSlot>, count: usize) -> &'a [RawLane] {
    // SAFETY: the caller's promise: the lanes follow the slot inside the mapping, aligned (the
    // slot's size is a multiple of 8), and live as long as the process.
    unsafe { std::slice::from_raw_parts(slot.add(1).cast::<RawLane>().as_ptr(), count) }
}

/// A worker's end of its slot: [`WorkerSlot::beat`] often (at least every `--timeout / 2`), and
/// say when each request starts and ends on which lane (app thread). Nothing here makes a system
/// call besides reading the clock (a vDSO call).
#[derive(Debug)]
pub struct WorkerSlot {
    header: NonNull<Header>,
    slot: NonNull<RawSlot>,
    lanes: usize,
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

    /// Lane `lane`; `None` past the lanes the table was made with (a caller's bug, which must
    /// not write into the next worker's slot).
    fn lane(&self, lane: usize) -> Option<&RawLane> {
        debug_assert!(lane < self.lanes, "lane {lane} of {}", self.lanes);
        // SAFETY: the slot was made by a table of `self.lanes` lanes (see `worker_slot`).
        unsafe { lanes_after(self.slot, self.lanes) }.get(lane)
    }

    /// Request lanes (app threads) this slot has.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// Whether the master said the whole server is stopping for good
    /// ([`Scoreboard::set_server_stopping`]), not just this worker being retired.
    pub fn server_stopping(&self) -> bool {
        // SAFETY: the header is in the never-unmapped shared mapping (see `Scoreboard::new`).
        let header = unsafe { self.header.as_ref() };
        header.server_stopping.load(Ordering::Acquire) != 0
    }

    /// Say the worker is alive; the master aborts a worker silent for longer than `--timeout`.
    pub fn beat(&self) {
        self.raw().beat.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// App thread `lane` began a request (also a beat).
    pub fn request_started(&self, lane: usize, method: &str, path: &str) {
        let Some(raw) = self.lane(lane) else {
            return;
        };
        write_request(raw, method, path);
        let now = monotonic_ms();
        raw.since.store(now.max(1), Ordering::Release);
        let slot = self.raw();
        slot.last_lane.store(lane as u64, Ordering::Relaxed);
        slot.beat.store(now, Ordering::Relaxed);
    }

    /// App thread `lane`'s current request is over (also a beat). Twice for one request counts
    /// it once.
    pub fn request_finished(&self, lane: usize) {
        let Some(raw) = self.lane(lane) else {
            return;
        };
        let slot = self.raw();
        let now = monotonic_ms();
        let since = raw.since.swap(0, Ordering::AcqRel);
        if since != 0 {
            slot.last_duration
                .store(now.saturating_sub(since), Ordering::Relaxed);
            slot.served.fetch_add(1, Ordering::Relaxed);
        }
        slot.beat.store(now, Ordering::Relaxed);
    }

    /// `heads` complete request heads now wait in the worker for a free app thread.
    pub fn set_waiting(&self, heads: usize) {
        self.raw().waiting.store(heads as u64, Ordering::Relaxed);
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

/// One lane as its reader sees it at `now`.
fn read_lane(lane: &RawLane, now: u64) -> LaneSnapshot {
    let since = lane.since.load(Ordering::Acquire);
    let (method, path, seq) = read_request(lane);
    LaneSnapshot {
        busy_for: (since != 0).then(|| Duration::from_millis(now.saturating_sub(since))),
        method,
        path,
        started: seq / 2,
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
fn write_request(lane: &RawLane, method: &str, path: &str) {
    // The method's length must fit the low byte of `lens`.
    let method = truncated(method, REQUEST_TEXT_MAX.min(255));
    let path = truncated(path, REQUEST_TEXT_MAX - method.len());
    let mut bytes = [0u8; REQUEST_TEXT_MAX];
    bytes[..method.len()].copy_from_slice(method.as_bytes());
    bytes[method.len()..method.len() + path.len()].copy_from_slice(path.as_bytes());
    let seq = lane.seq.load(Ordering::Relaxed);
    lane.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
    fence(Ordering::Release);
    lane.lens.store(
        method.len() as u64 | (path.len() as u64) << 8,
        Ordering::Relaxed,
    );
    for (word, chunk) in lane.text.iter().zip(bytes.chunks_exact(8)) {
        word.store(
            u64::from_ne_bytes(chunk.try_into().unwrap()),
            Ordering::Relaxed,
        );
    }
    lane.seq.store(seq.wrapping_add(2), Ordering::Release);
}

/// The readers' half: retry while the worker is mid-write. A worker killed mid-write leaves the
/// sequence odd for ever, so give up after a while and report nothing. Also returns the sequence
/// the text was read at.
fn read_request(lane: &RawLane) -> (String, String, u64) {
    for _ in 0..1000 {
        let before = lane.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let lens = lane.lens.load(Ordering::Relaxed);
        let mut bytes = [0u8; REQUEST_TEXT_MAX];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(&lane.text) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        fence(Ordering::Acquire);
        if lane.seq.load(Ordering::Relaxed) != before {
            continue;
        }
        let method_len = ((lens & 0xff) as usize).min(REQUEST_TEXT_MAX);
        let path_len = ((lens >> 8) as usize).min(REQUEST_TEXT_MAX - method_len);
        let method = &bytes[..method_len];
        let path = &bytes[method_len..method_len + path_len];
        return (
            String::from_utf8_lossy(method).into_owned(),
            String::from_utf8_lossy(path).into_owned(),
            before,
        );
    }
    (String::new(), String::new(), 0)
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
        let board = Scoreboard::new(1).unwrap();
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
        let board = Scoreboard::new(1).unwrap();
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
        let board = Scoreboard::new(1).unwrap();
        board.arm(7);
        in_child(|| {
            let slot = board.worker_slot(7);
            slot.beat();
            slot.request_started(0, "GET", "/first");
            slot.request_finished(0);
            slot.request_started(0, "POST", "/slow/päth");
        });
        let busy = board.snapshot(7);
        assert_eq!(busy.state, SlotState::Busy);
        assert_eq!(busy.request().as_deref(), Some("POST /slow/päth"));
        assert_eq!(busy.served, 1);
        assert!(busy.busy_for.is_some());
        in_child(|| board.worker_slot(7).request_finished(0));
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
    fn each_app_thread_has_its_lane_and_the_longest_running_request_names_the_worker() {
        let board = Scoreboard::new(4).unwrap();
        board.arm(3);
        in_child(|| {
            let slot = board.worker_slot(3);
            slot.beat();
            slot.request_started(0, "GET", "/old");
            slot.request_started(2, "POST", "/new");
            slot.set_waiting(3);
        });
        // Lane 0's request has run for 5 s.
        let lane0 = &board.lanes_of(3)[0];
        lane0.since.store(monotonic_ms() - 5000, Ordering::Release);
        let snap = board.snapshot(3);
        assert_eq!(snap.state, SlotState::Busy);
        assert_eq!(snap.busy_lanes(), 2);
        assert_eq!(snap.waiting, 3);
        assert_eq!(snap.lanes.len(), 4);
        assert_eq!(
            snap.request().as_deref(),
            Some("GET /old"),
            "the longest running"
        );
        assert!(snap.busy_for.unwrap() >= Duration::from_secs(5));
        assert_eq!(snap.lanes[1].busy_for, None);
        assert_eq!(snap.lanes[1].request(), None);
        assert_eq!(snap.lanes[2].request().as_deref(), Some("POST /new"));
        assert!(snap.lanes[2].busy_for.unwrap() < Duration::from_secs(5));
        in_child(|| board.worker_slot(3).request_finished(0));
        let snap = board.snapshot(3);
        assert_eq!((snap.state, snap.busy_lanes()), (SlotState::Busy, 1));
        assert_eq!(snap.request().as_deref(), Some("POST /new"));
        assert_eq!(
            snap.lanes[0].request().as_deref(),
            Some("GET /old"),
            "kept as its last"
        );
        in_child(|| {
            let slot = board.worker_slot(3);
            slot.request_finished(2);
            slot.request_finished(2);
        });
        let idle = board.snapshot(3);
        assert_eq!(idle.state, SlotState::Idle);
        assert_eq!(
            idle.served, 2,
            "a second finish of one request is not counted"
        );
        assert_eq!(idle.busy_for, None);
        assert_eq!(
            idle.request().as_deref(),
            Some("POST /new"),
            "the last started"
        );
        for neighbour in [2, 4] {
            let snap = board.snapshot(neighbour);
            assert_eq!((snap.served, snap.waiting, snap.busy_lanes()), (0, 0, 0));
            assert!(snap.lanes.iter().all(|l| l.request().is_none()), "{snap:?}");
        }
    }

    #[test]
    fn a_lane_tells_one_request_from_the_next() {
        let board = Scoreboard::new(2).unwrap();
        board.arm(1);
        let slot = board.worker_slot(1);
        slot.request_started(1, "GET", "/same");
        let first = board.snapshot(1).lanes[1].started;
        assert_eq!(
            board.snapshot(1).lanes[1].started,
            first,
            "stable while it runs"
        );
        slot.request_finished(1);
        slot.request_started(1, "GET", "/same");
        assert_ne!(board.snapshot(1).lanes[1].started, first);
    }

    #[test]
    fn a_table_needs_one_to_max_lanes() {
        assert!(Scoreboard::new(0).is_err());
        let err = Scoreboard::new(MAX_LANES + 1).unwrap_err();
        assert!(err.to_string().contains("app threads per worker"), "{err}");
        assert_eq!(Scoreboard::new(MAX_LANES).unwrap().lanes(), MAX_LANES);
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let board = Scoreboard::new(1).unwrap();
        let path = format!("/{}", "é".repeat(100));
        board.worker_slot(0).request_started(0, "GET", &path);
        let snap = board.snapshot(0);
        assert_eq!(snap.method, "GET");
        assert!(path.starts_with(&snap.path), "{}", snap.path);
        assert!(snap.method.len() + snap.path.len() <= REQUEST_TEXT_MAX);
        assert!(snap.path.len() >= REQUEST_TEXT_MAX - 4);
    }

    #[test]
    fn a_server_stop_set_by_the_master_is_seen_by_a_forked_worker() {
        let board = Scoreboard::new(1).unwrap();
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
        let board = Scoreboard::new(1).unwrap();
        let (a, b) = ("/a".repeat(40), "/b".repeat(50));
        board.worker_slot(9).request_started(0, "GET", &a);
        // SAFETY: as in `in_child`; this child only stores to shared memory until killed.
        let writer = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: alarm only arms a timer; its default action ends a child left behind.
                unsafe { libc::alarm(30) };
                let slot = board.worker_slot(9);
                loop {
                    slot.request_started(0, "GET", &a);
                    slot.request_started(0, "DELETE", &b);
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
