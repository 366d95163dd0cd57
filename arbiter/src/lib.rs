//! The ferrocorn master process (gunicorn's "arbiter").
//!
//! It forks workers, reaps them when they exit, respawns the ones that die, kills the ones that stop
//! heart-beating (`--timeout`), scales on TTIN/TTOU, and stops gracefully (TERM) or quickly (INT/QUIT).
//! Given a [`scaling::WorkerSizing`] and [`scaling::MemoryPolicy`], it also sizes the pool to the
//! machine (`--workers auto`), follows the load between bounds, and replaces workers that grew
//! too big or too old; the policies are pure functions in [`scaling`], the memory figures and the
//! accept queue come from [`Hooks::process_memory`] and [`Hooks::accept_queue`].
//! It knows nothing of HTTP or Python: what a worker does is the `worker_main` closure given to
//! [`Arbiter::run`]; anything that must happen around `fork` (CPython's fork hooks with `--preload`)
//! or on the master's other events (reopen logs, re-exec, stop) is a [`Hooks`] implementation.
//!
//! A worker that exits with [`WORKER_BOOT_ERROR`] or [`APP_LOAD_ERROR`] before any worker booted stops
//! the whole server with that exit code instead of being respawned forever. Later (a reload whose
//! code does not load) it is retried after a back-off while the old workers serve on: a reload
//! (HUP) retires old workers only as their replacements boot. A worker that had booted and exits
//! with one of these codes (the app's own `sys.exit(3)`) crashed: it is respawned like any other.
#![warn(missing_docs)]

mod hooks;
mod master;
pub mod scaling;
mod scoreboard;
mod status;

pub use hooks::{Exit, ExitCause, Hooks, NoHooks};
pub use master::{Arbiter, ArbiterConfig, Error, WorkerContext, ABANDON_AFTER, STUCK_MARGIN};
pub use scoreboard::{
    LaneSnapshot, Scoreboard, SlotSnapshot, SlotState, WorkerSlot, MAX_LANES, REQUEST_TEXT_MAX,
};
pub use status::{ArbiterStatus, PollFd, Want, WorkerStatus};

/// Exit code of a worker that could not start (gunicorn's `WORKER_BOOT_ERROR`).
pub const WORKER_BOOT_ERROR: i32 = 3;
/// Exit code of a worker whose application could not be loaded (gunicorn's `APP_LOAD_ERROR`).
pub const APP_LOAD_ERROR: i32 = 4;
