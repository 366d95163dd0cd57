//! The master's life events for an observer outside the arbiter (e.g. a process running a Python
//! config file's master-side hooks, since the master itself has no Python).

/// One event of the master's life, in gunicorn's hook vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterEvent {
    /// The first workers have been forked (gunicorn's `when_ready`).
    Ready,
    /// HUP: a fresh set of workers is about to be forked (`on_reload`).
    Reload,
    /// A worker of this `age` is about to be forked (`pre_fork`).
    PreFork {
        /// The new worker's `worker.age`.
        age: u64,
    },
    /// Worker `pid` of this `age` was reaped (`child_exit`).
    ChildExit {
        /// The worker's pid.
        pid: i32,
        /// Its `worker.age` (0 if unknown).
        age: u64,
    },
    /// The number of workers to keep went from `old` to `new` (`nworkers_changed`).
    WorkersChanged {
        /// The count from now on.
        new: usize,
        /// The count until now.
        old: usize,
    },
    /// USR2: a new master is about to be executed (`pre_exec`).
    PreExec,
}

/// Receives the master's events. Runs in the master, on its only thread: never block.
pub trait MasterEvents {
    /// Before the listeners are bound (gunicorn's `on_starting`), in the master that will fork
    /// the workers (after `--daemon` detached).
    fn starting(&mut self) {}
    /// An event of the master's life.
    fn event(&mut self, event: MasterEvent);
    /// The master is about to exit (`on_exit`): may wait a bounded time for the observer.
    fn exiting(&mut self) {}
    /// In each new worker: let go of whatever the master holds (the worker sends no events).
    fn forked_child(&mut self) {}
}
