//! Liveness of workers across processes: one shared-memory slot per worker holding the monotonic
//! time of its last beat. gunicorn touches a temp file for this; a shared page costs no syscalls.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use nix::time::{clock_gettime, ClockId};

/// How many workers can be alive at once (TTIN beyond this is refused).
pub(crate) const MAX_SLOTS: usize = 1024;

/// High bit of a slot: armed for a new worker that has not beaten yet. Milliseconds of uptime
/// never reach it.
const NOT_BOOTED: u64 = 1 << 63;

/// Milliseconds on CLOCK_MONOTONIC, which is the same clock in every process of the machine.
pub(crate) fn monotonic_ms() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

/// The table of slots, mapped `MAP_SHARED` before any fork so every worker writes the same memory.
#[derive(Debug)]
pub(crate) struct HeartbeatTable {
    slots: NonNull<AtomicU64>,
}

impl HeartbeatTable {
    pub(crate) fn new() -> std::io::Result<Self> {
        let len = NonZeroUsize::new(MAX_SLOTS * std::mem::size_of::<AtomicU64>()).unwrap();
        // SAFETY: a fresh anonymous mapping aliases nothing; it is zero-filled, which is a valid
        // AtomicU64 bit pattern, page-aligned (so aligned for AtomicU64), and never unmapped, so
        // pointers into it stay valid for the life of the process and of every forked child.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(HeartbeatTable { slots: ptr.cast() })
    }

    fn slot(&self, index: usize) -> &AtomicU64 {
        assert!(index < MAX_SLOTS);
        // SAFETY: index is in bounds of the mapping, which lives forever (see `new`).
        unsafe { &*self.slots.as_ptr().add(index) }
    }

    /// Reset a slot for a new worker: it counts as having just beaten, but not as booted until
    /// its own first beat (which clears [`NOT_BOOTED`]).
    pub(crate) fn arm(&self, index: usize) {
        self.slot(index)
            .store(monotonic_ms() | NOT_BOOTED, Ordering::Relaxed);
    }

    /// Time since the worker in `index` last beat (or was armed).
    pub(crate) fn silence(&self, index: usize) -> Duration {
        let last = self.slot(index).load(Ordering::Relaxed) & !NOT_BOOTED;
        Duration::from_millis(monotonic_ms().saturating_sub(last))
    }

    /// Whether the worker in `index` has beaten at least once since it was armed, i.e. it got as
    /// far as its serving loop.
    pub(crate) fn booted(&self, index: usize) -> bool {
        self.slot(index).load(Ordering::Relaxed) & NOT_BOOTED == 0
    }

    pub(crate) fn handle(&self, index: usize) -> Heartbeat {
        Heartbeat {
            slot: NonNull::from(self.slot(index)),
        }
    }
}

/// A worker's end of the heartbeat: call [`Heartbeat::beat`] often (at least every `--timeout / 2`).
#[derive(Debug)]
pub struct Heartbeat {
    slot: NonNull<AtomicU64>,
}

impl Heartbeat {
    pub fn beat(&self) {
        // SAFETY: the slot points into the never-unmapped shared table (see `HeartbeatTable::new`).
        let slot = unsafe { self.slot.as_ref() };
        slot.store(monotonic_ms(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    #[test]
    fn a_beat_in_a_forked_child_is_seen_by_the_parent() {
        let table = HeartbeatTable::new().unwrap();
        // Pretend slot 3 last beat long ago.
        table.slot(3).store(0, Ordering::Relaxed);
        assert!(table.silence(3) > Duration::from_secs(1));
        // SAFETY: the child only stores to shared memory and calls _exit; no locks are taken.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                table.handle(3).beat();
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
        assert!(
            table.silence(3) < Duration::from_secs(5),
            "the child's beat is visible"
        );
        assert!(
            table.silence(4) > Duration::from_secs(1),
            "other slots untouched"
        );
    }

    #[test]
    fn an_armed_slot_is_fresh_but_not_booted_until_the_first_beat() {
        let table = HeartbeatTable::new().unwrap();
        table.slot(5).store(0, Ordering::Relaxed);
        table.arm(5);
        assert!(!table.booted(5));
        assert!(
            table.silence(5) < Duration::from_secs(5),
            "arming counts as a beat"
        );
        table.handle(5).beat();
        assert!(table.booted(5));
        assert!(table.silence(5) < Duration::from_secs(5));
        table.arm(5);
        assert!(!table.booted(5), "re-arming for the next worker resets it");
    }
}
