//! The arbiter's loop: sleep on the signal queue, reap, respawn, scale, time out, stop.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use ferrocorn_signals::{signal_name, Command, MasterSignals, WorkerSignals};
use log::{debug, error, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::hooks::{Exit, ExitCause, Hooks};
use crate::scaling::{MemoryFigures, MemoryPolicy, WorkerSizing};
use crate::scoreboard::{Scoreboard, SlotSnapshot, MAX_SLOTS};
use crate::status::{poll_with_signals, ArbiterStatus, WorkerStatus};
use crate::{WorkerSlot, APP_LOAD_ERROR, WORKER_BOOT_ERROR};

mod adjust;

/// How often the arbiter wakes on its own to check worker timeouts and counts.
const TICK: Duration = Duration::from_secs(1);
/// ... and when autoscaling, so a saturated server is noticed within its pressure window.
const SCALING_TICK: Duration = Duration::from_millis(200);
/// After SIGABRT for a timeout, how long a worker gets before SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// How long past `--timeout` a worker lets an interrupted request run before it abandons the
/// thread serving it (answers 500 itself and stops): the worker's rule, mirrored here.
pub const ABANDON_AFTER: Duration = Duration::from_secs(2);
/// How much longer than that the master waits, on a loaded machine, before deciding the worker
/// failed to deal with its stuck request and aborting it.
pub const STUCK_MARGIN: Duration = Duration::from_secs(3);
/// How long workers get after SIGQUIT (a quick stop: INT/QUIT, or either one during a graceful
/// stop) before SIGKILL. gunicorn's workers leave the request in hand at once (SystemExit from
/// their handler, then gunicorn allows 2 s); ours only notice between requests, so an app call
/// that goes on is cut short here.
const QUICK_STOP_GRACE: Duration = Duration::from_secs(2);
/// First delay before forking again after a worker died before it booted; doubles with every
/// further round of such deaths, up to [`BACKOFF_MAX`]. gunicorn forks again at once, which turns
/// a worker that crashes at start-up (a segfaulting extension, `os._exit` at import) into a loop
/// that forks as fast as the machine allows.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How the arbiter runs its workers: their number, timeouts and the sizing and memory policies.
#[derive(Debug, Clone)]
pub struct ArbiterConfig {
    /// `-w/--workers`.
    pub workers: usize,
    /// `--timeout`: a request running longer is logged (the worker interrupts it itself); a
    /// worker silent for longer, or whose request runs on past [`ABANDON_AFTER`] plus
    /// [`STUCK_MARGIN`] more, is aborted and replaced. `None` disables it.
    pub timeout: Option<Duration>,
    /// `--graceful-timeout`: how long workers get to finish after TERM before SIGKILL.
    pub graceful_timeout: Duration,
    /// `-w N` (exactly `workers`), `-w auto` or `-w MIN:MAX`.
    pub sizing: WorkerSizing,
    /// Replacing workers for their memory or age.
    pub memory: MemoryPolicy,
    /// App threads per worker (`--threads`): the scoreboard keeps a request lane for each. It is
    /// sized once, in [`Arbiter::new`].
    pub threads: usize,
}

impl Default for ArbiterConfig {
    fn default() -> Self {
        ArbiterConfig {
            workers: 1,
            timeout: Some(Duration::from_secs(30)),
            graceful_timeout: Duration::from_secs(30),
            sizing: WorkerSizing::Fixed,
            memory: MemoryPolicy::default(),
            threads: 1,
        }
    }
}

/// What a freshly forked worker gets.
#[derive(Debug)]
pub struct WorkerContext {
    /// The worker's own signal handlers (the master's were replaced right after fork).
    pub signals: WorkerSignals,
    /// Its slot of the scoreboard: beat, and say which request is being served.
    pub slot: WorkerSlot,
    /// 1 for the first worker ever forked, then counting up (respawns and reloads included).
    pub age: u64,
    /// The master's pid.
    pub master_pid: i32,
}

impl WorkerContext {
    /// Have the kernel send this worker SIGTERM (a graceful stop) if the master dies, e.g. killed
    /// by the OOM killer: otherwise orphaned workers would serve on, unsupervised, and hold the
    /// port against the next server (gunicorn's workers compare their parent pid every loop for
    /// the same reason). Already done before `worker_main` runs, but changing user or group
    /// (`--user/--group`) clears it, so call it again after. False if the master is already gone.
    pub fn stop_with_master(&self) -> bool {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes no memory of ours.
        let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
        if r != 0 {
            warn!(
                "cannot ask to be stopped with the master: {}",
                std::io::Error::last_os_error()
            );
        }
        // The master may have died before the request took effect.
        nix::unistd::getppid().as_raw() == self.master_pid
    }
}

/// Why [`Arbiter::new`] failed ([`Arbiter::run`] cannot: a failed fork is retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared scoreboard could not be mapped.
    #[error("shared scoreboard memory: {0}")]
    Scoreboard(std::io::Error),
    /// More app threads per worker than the scoreboard has lanes for (or none).
    #[error("{0} app threads per worker: 1 to {max} are supported", max = crate::MAX_LANES)]
    Threads(usize),
}

#[derive(Debug)]
struct WorkerInfo {
    slot: usize,
    age: u64,
    /// Sent TERM (scaled down, reloaded or stopping): no longer counts towards `-w`.
    retiring: bool,
    /// When it was sent SIGABRT for a timeout.
    aborted_at: Option<Instant>,
    /// Per lane, the request (its lane's `started` count) already logged as past `--timeout`.
    reported: Vec<Option<u64>>,
    /// A request of its ran past `--timeout`: the worker stops after interrupting it, so its
    /// exit is a timeout's.
    timed_out: bool,
    /// We sent it SIGKILL (timeout, or the end of a stop), so its death by SIGKILL is no news.
    killed: bool,
    /// Replaced by a reload (HUP) but still serving: it gets TERM once a replacement has booted,
    /// so a reload whose new workers cannot load the app leaves it serving.
    superseded: bool,
    forked_at: Instant,
    /// Why the worker it replaced exited.
    predecessor_exit: Option<ExitCause>,
    /// When it was last seen serving (or forked).
    last_active: Instant,
    /// Its served count at that time.
    last_served: u64,
    /// Its last memory reading.
    memory: Option<MemoryFigures>,
    /// Being replaced (since when): no longer counts towards the target; retired once a worker
    /// of this age or younger has booted.
    replaced_by: Option<(u64, Instant)>,
}

impl WorkerInfo {
    fn new(slot: usize, age: u64) -> WorkerInfo {
        let now = Instant::now();
        WorkerInfo {
            slot,
            age,
            retiring: false,
            aborted_at: None,
            reported: Vec::new(),
            timed_out: false,
            killed: false,
            superseded: false,
            forked_at: now,
            predecessor_exit: None,
            last_active: now,
            last_served: 0,
            memory: None,
            replaced_by: None,
        }
    }

    /// Counts towards the target: neither retiring nor superseded by a reload nor being
    /// replaced.
    fn is_active(&self) -> bool {
        !self.retiring && !self.superseded && self.replaced_by.is_none()
    }
}

/// The master. Build it with [`Arbiter::new`] right after installing signal handlers and binding
/// sockets, then [`Arbiter::run`] until it returns the process exit code.
pub struct Arbiter<H> {
    config: ArbiterConfig,
    signals: Option<MasterSignals>,
    hooks: H,
    table: Scoreboard,
    workers: BTreeMap<Pid, WorkerInfo>,
    target: usize,
    next_age: u64,
    /// Our own pid (the workers' parent).
    pid: i32,
    /// Already warned that the master has threads when it forks.
    warned_threads: bool,
    /// The new master started by USR2, while it lives.
    reexec_pid: Option<Pid>,
    /// The master that re-executed us, until it exits (then we are "promoted").
    parent_master: Option<i32>,
    /// Current fork back-off after workers died before booting (zero: none).
    backoff: Duration,
    /// No worker is forked before this (back-off in progress).
    respawn_at: Option<Instant>,
    /// Workers of this age or younger were forked after the last back-off began: the first of them
    /// to boot ends the back-off.
    backoff_age: u64,
    /// Some worker has booted: from then on a worker that cannot load the app (a bad edit before
    /// a reload) is backed off and retried while the others serve, instead of stopping the server.
    ever_booted: bool,
    /// Daemonized (`--daemon`): WINCH stops the workers, as gunicorn's.
    daemonized: bool,
    /// Autoscaling, `--workers auto` and memory recycling state.
    adjust: adjust::State,
    /// Causes of worker exits not yet followed by a replacement (retired workers are not
    /// replaced, so they are not queued).
    unreplaced_exits: VecDeque<ExitCause>,
    /// Requests served and responses by status class of the workers that have exited.
    exited_served: u64,
    exited_statuses: [u64; 5],
}

impl<H> std::fmt::Debug for Arbiter<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arbiter")
            .field("config", &self.config)
            .field("workers", &self.workers)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<H: Hooks> Arbiter<H> {
    /// An arbiter for `config` that owns the master's signal queue and runs `hooks`. It maps the
    /// shared scoreboard but forks nothing until [`Arbiter::run`].
    pub fn new(config: ArbiterConfig, signals: MasterSignals, hooks: H) -> Result<Self, Error> {
        let target = adjust::initial_target(&config).clamp(1, MAX_SLOTS);
        if !(1..=crate::MAX_LANES).contains(&config.threads) {
            return Err(Error::Threads(config.threads));
        }
        let table = Scoreboard::new(config.threads).map_err(Error::Scoreboard)?;
        Ok(Arbiter {
            config,
            signals: Some(signals),
            hooks,
            table,
            workers: BTreeMap::new(),
            target,
            next_age: 1,
            pid: std::process::id() as i32,
            warned_threads: false,
            reexec_pid: None,
            parent_master: None,
            backoff: Duration::ZERO,
            respawn_at: None,
            backoff_age: 0,
            ever_booted: false,
            daemonized: false,
            adjust: adjust::State::default(),
            unreplaced_exits: VecDeque::new(),
            exited_served: 0,
            exited_statuses: [0; 5],
        })
    }

    /// This master was started by USR2 in master `parent`: while that one lives, USR2 is refused;
    /// once it exits, [`Hooks::promoted`] runs (e.g. to take over the pid file) and this master is
    /// the master.
    pub fn set_parent_master(&mut self, parent: i32) {
        self.parent_master = Some(parent);
    }

    /// The master runs detached from a terminal (`--daemon`): WINCH then stops every worker
    /// (TTIN starts them again); otherwise WINCH, sent when a terminal is resized, is ignored.
    pub fn set_daemonized(&mut self) {
        self.daemonized = true;
    }

    /// The hooks given to [`Arbiter::new`], e.g. to read their state once [`Arbiter::run`] returns.
    pub fn hooks_mut(&mut self) -> &mut H {
        &mut self.hooks
    }

    /// Whether a master started by USR2 is still running (it uses our listeners: leave its unix
    /// socket files in place when we exit).
    pub fn has_successor(&self) -> bool {
        self.reexec_pid.is_some()
    }

    /// Whether the master that started this one by USR2 still runs (it owns the socket files).
    pub fn has_parent_master(&self) -> bool {
        self.parent_master
            .is_some_and(|parent| nix::unistd::getppid().as_raw() == parent)
    }

    /// Live worker pids (including ones that are finishing after TERM).
    pub fn worker_pids(&self) -> Vec<i32> {
        self.workers.keys().map(|p| p.as_raw()).collect()
    }

    /// Run the server until it is stopped or a worker cannot boot. `worker_main` runs in each
    /// forked child and returns the child's exit code.
    pub fn run(&mut self, worker_main: &mut dyn FnMut(WorkerContext) -> i32) -> Exit {
        self.manage_workers(worker_main);
        self.hooks.ready();
        loop {
            let tick = self.tick();
            let wait = match self.respawn_at {
                Some(at) => at.saturating_duration_since(Instant::now()).min(tick),
                None => tick,
            };
            let received = self.wait_signals_and_fds(wait);
            for (i, &sig) in received.iter().enumerate() {
                let Some(command) = Command::from_signal(sig) else {
                    continue;
                };
                let name = signal_name(sig);
                // As gunicorn: every signal is logged, SIGCHLD (frequent) only at debug level.
                if command == Command::ChildExited {
                    debug!("Handling signal: {name}");
                } else {
                    info!("Handling signal: {name}");
                }
                if let Some(exit) = self.handle(command, &received[i + 1..], worker_main) {
                    return exit;
                }
            }
            if let Some(code) = self.reap() {
                self.stop(false);
                return if code == APP_LOAD_ERROR {
                    Exit::AppLoadError
                } else {
                    Exit::WorkerBootError
                };
            }
            self.murder_workers();
            self.check_promotion();
            self.note_booted();
            self.end_backoff_once_booted();
            self.retire_superseded();
            self.adjust_workers();
            self.manage_workers(worker_main);
        }
    }

    /// Act on one command; `later` are the signals received after it in the same batch. `Some`
    /// when the server stops.
    fn handle(
        &mut self,
        command: Command,
        later: &[i32],
        worker_main: &mut dyn FnMut(WorkerContext) -> i32,
    ) -> Option<Exit> {
        match command {
            Command::ChildExited => {}
            Command::GracefulStop => {
                // INT/QUIT queued behind the TERM: the impatient second signal wins, as
                // it would had it arrived during the stop.
                let impatient = later
                    .iter()
                    .find(|s| matches!(**s, libc::SIGINT | libc::SIGQUIT));
                if let Some(&quick) = impatient {
                    info!("Handling signal: {}", signal_name(quick));
                    info!("Quick shutdown requested");
                }
                self.stop(impatient.is_none());
                return Some(Exit::Stopped);
            }
            Command::QuickStop => {
                self.stop(false);
                return Some(Exit::Stopped);
            }
            Command::IncrementWorkers => self.increment_workers(),
            Command::DecrementWorkers => self.decrement_workers(),
            Command::Reload => {
                info!("Hang up: Master");
                self.hooks.reload();
                self.reload(worker_main);
            }
            Command::ReopenLogs => {
                self.hooks.reopen_logs();
                self.signal_workers(Signal::SIGUSR1, false);
            }
            Command::Reexec => self.reexec(),
            Command::StopWorkers if self.daemonized => {
                info!("graceful stop of workers");
                self.target = 0;
                self.hooks.worker_count_changed(self.target);
            }
            Command::StopWorkers => {
                debug!("SIGWINCH ignored. Not daemonized");
            }
        }
        None
    }

    /// Sleep until a signal, one of the hooks' descriptors, or `wait`; serve the descriptors
    /// that are ready and return the signals received.
    fn wait_signals_and_fds(&mut self, wait: Duration) -> Vec<i32> {
        let extra = self.hooks.poll_fds();
        if extra.is_empty() {
            return self.signals_mut().wait_signals(wait);
        }
        let ready = poll_with_signals(self.signals_mut().fd(), &extra, wait);
        if !ready.is_empty() {
            let status = self.status();
            for fd in ready {
                self.hooks.fd_ready(fd, &status);
            }
        }
        self.signals_mut().wait_signals(Duration::ZERO)
    }

    /// The master's state now, as [`Hooks::fd_ready`] sees it.
    pub fn status(&self) -> ArbiterStatus {
        let workers = self
            .workers
            .iter()
            .map(|(pid, info)| WorkerStatus {
                pid: pid.as_raw(),
                age: info.age,
                uptime: info.forked_at.elapsed(),
                retiring: info.retiring,
                predecessor_exit: info.predecessor_exit,
                slot: self.table.snapshot(info.slot),
            })
            .collect();
        ArbiterStatus {
            master_pid: self.pid,
            target: self.target,
            workers,
            exited_served: self.exited_served,
            exited_statuses: self.exited_statuses,
        }
    }

    /// Keep what an exited worker did and why it ended, for [`Arbiter::status`].
    fn record_exit(&mut self, info: &WorkerInfo, cause: ExitCause) {
        let last = self.table.snapshot(info.slot);
        self.exited_served += last.served;
        for (total, n) in self.exited_statuses.iter_mut().zip(last.statuses) {
            *total += n;
        }
        if !info.retiring && self.unreplaced_exits.len() < MAX_SLOTS {
            self.unreplaced_exits.push_back(cause);
        }
    }

    fn signals_mut(&mut self) -> &mut MasterSignals {
        self.signals
            .as_mut()
            .expect("master signals are only taken in forked children")
    }

    /// Reap every exited child. Returns an exit code if a worker failed to boot before any other
    /// had, which must stop the server rather than respawn it forever; later (a reload whose code
    /// does not load) the workers still serving carry on and the failed one is retried after a
    /// back-off.
    fn reap(&mut self) -> Option<i32> {
        // A worker may have booted since the last tick: that decides what a failure means.
        self.note_booted();
        let mut boot_failure = None;
        while let Some(status) = next_child_status() {
            let (pid, code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, Some(code), None),
                WaitStatus::Signaled(pid, sig, _) => (pid, None, Some(sig)),
                _ => continue,
            };
            if Some(pid) == self.reexec_pid {
                self.reexec_pid = None;
                log_reexec_exit(pid, code, signal);
                continue;
            }
            let Some(info) = self.workers.remove(&pid) else {
                debug!("Reaped unknown child process (pid:{pid})");
                continue;
            };
            let booted = self.table.booted(info.slot);
            self.ever_booted |= booted;
            // An app that exits with 3 or 4 while serving (`sys.exit(3)`) did boot: a crash.
            let boot_code = code.filter(|&c| !booted && is_boot_failure_code(c));
            log_worker_exit(pid, &info, code, signal);
            boot_failure = boot_code.or(boot_failure);
            let died_unbooted =
                code != Some(0) && !info.retiring && info.aborted_at.is_none() && !booted;
            if died_unbooted && (boot_failure.is_none() || self.ever_booted) {
                self.back_off(&format!("Worker (pid:{pid}) died before it booted"));
            }
            let cause = exit_cause(&info, code, signal, boot_code);
            self.record_exit(&info, cause);
            self.hooks.worker_exited(pid.as_raw(), cause);
        }
        if boot_failure.is_some() && self.ever_booted {
            error!("A new worker could not load the app; the workers already running keep serving");
            return None;
        }
        boot_failure
    }

    /// Whether any worker got to serve (its first heartbeat comes after loading the app).
    fn note_booted(&mut self) {
        if !self.ever_booted {
            self.ever_booted = self.workers.values().any(|w| self.table.booted(w.slot));
        }
    }

    /// USR2, gunicorn's rules: one new master at a time, and not from a master whose parent
    /// master still runs.
    fn reexec(&mut self) {
        if self.reexec_pid.is_some() {
            warn!("USR2 signal ignored. Child exists.");
            return;
        }
        if self.parent_master.is_some() {
            warn!("USR2 signal ignored. Parent exists.");
            return;
        }
        self.reexec_pid = self.hooks.reexec().map(Pid::from_raw);
    }

    /// A master started by USR2 becomes the master once the one that started it is gone.
    fn check_promotion(&mut self) {
        let Some(parent) = self.parent_master else {
            return;
        };
        if nix::unistd::getppid().as_raw() == parent {
            return;
        }
        info!("Master has been promoted.");
        self.parent_master = None;
        self.hooks.promoted();
    }

    /// A worker died before it booted, or fork failed (`what` says which): delay the next fork,
    /// longer each round.
    fn back_off(&mut self, what: &str) {
        let now = Instant::now();
        if self.respawn_at.is_some_and(|at| now < at) {
            // Its siblings of the same round died too: one round, one step.
            return;
        }
        self.backoff = if self.backoff.is_zero() {
            BACKOFF_START
        } else {
            (self.backoff * 2).min(BACKOFF_MAX)
        };
        self.respawn_at = Some(now + self.backoff);
        self.backoff_age = self.next_age;
        warn!(
            "{what}; backing off {:.1}s before the next fork",
            self.backoff.as_secs_f64()
        );
    }

    /// The back-off ends once a worker forked after it began gets to serve.
    fn end_backoff_once_booted(&mut self) {
        if self.backoff.is_zero() {
            return;
        }
        let booted = self
            .workers
            .values()
            .any(|w| w.age >= self.backoff_age && self.table.booted(w.slot));
        if booted {
            info!("Worker booted; fork back-off cleared");
            self.backoff = Duration::ZERO;
            self.respawn_at = None;
        }
    }

    /// `--timeout`, per worker: name each request running past it (once: the worker interrupts
    /// it itself); abort a worker that stopped beating for that long, or whose request runs on
    /// well past the time the worker had to deal with it; kill one that outlives the abort.
    /// Every line names a request read from the scoreboard.
    fn murder_workers(&mut self) {
        let Some(timeout) = self.config.timeout else {
            return;
        };
        for (pid, info) in &mut self.workers {
            match info.aborted_at {
                None => {
                    let snap = self.table.snapshot(info.slot);
                    report_stuck_requests(*pid, info, &snap, timeout);
                    if let Some(why) = abort_reason(*pid, &snap, timeout) {
                        error!("{why}; sending SIGABRT");
                        let _ = kill(*pid, Signal::SIGABRT);
                        info.aborted_at = Some(Instant::now());
                    }
                }
                Some(at) if at.elapsed() > ABORT_GRACE && !info.killed => {
                    let doing = describe_work(&self.table.snapshot(info.slot));
                    error!(
                        "Worker (pid:{pid}) still running {:.1}s after SIGABRT; sending SIGKILL \
                         (it was {doing})",
                        at.elapsed().as_secs_f64()
                    );
                    info.killed = true;
                    let _ = kill(*pid, Signal::SIGKILL);
                }
                _ => {}
            }
        }
    }

    fn active_count(&self) -> usize {
        self.workers.values().filter(|w| w.is_active()).count()
    }

    /// Fork or retire workers until `target` of them are active. The oldest are retired first.
    fn manage_workers(&mut self, worker_main: &mut dyn FnMut(WorkerContext) -> i32) {
        if self.respawn_at.is_some_and(|at| Instant::now() >= at) {
            self.respawn_at = None;
        }
        // While backing off, forking waits (scaling down does not).
        while self.respawn_at.is_none() && self.active_count() < self.target {
            if !self.try_spawn(worker_main) {
                break;
            }
        }
        let excess = self.active_count().saturating_sub(self.target);
        if excess > 0 {
            let mut active: Vec<(u64, Pid)> = self
                .workers
                .iter()
                .filter(|(_, w)| w.is_active())
                .map(|(pid, w)| (w.age, *pid))
                .collect();
            active.sort();
            for (_, pid) in active.into_iter().take(excess) {
                self.retire(pid);
            }
        }
    }

    fn retire(&mut self, pid: Pid) {
        if let Some(info) = self.workers.get_mut(&pid) {
            info.retiring = true;
            let _ = kill(pid, Signal::SIGTERM);
        }
    }

    /// HUP: start a fresh set of workers (they load the app anew). The old ones serve on until
    /// their replacements have booted ([`Arbiter::retire_superseded`]), so code that no longer
    /// loads leaves the old workers serving.
    fn reload(&mut self, worker_main: &mut dyn FnMut(WorkerContext) -> i32) {
        // A reload is the operator's fresh start (often a fixed deploy): no back-off.
        self.backoff = Duration::ZERO;
        self.respawn_at = None;
        for info in self.workers.values_mut().filter(|w| !w.retiring) {
            info.superseded = true;
        }
        self.manage_workers(worker_main);
    }

    /// Retire superseded workers as their replacements boot: as many keep serving as the target
    /// is short of booted new workers. Those that never booted go first, then the oldest.
    fn retire_superseded(&mut self) {
        let booted_new = self
            .workers
            .values()
            .filter(|w| !w.retiring && !w.superseded && self.table.booted(w.slot))
            .count();
        let mut superseded: Vec<(bool, u64, Pid)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.superseded && !w.retiring)
            .map(|(pid, w)| (self.table.booted(w.slot), w.age, *pid))
            .collect();
        let keep = self.target.saturating_sub(booted_new);
        let excess = superseded.len().saturating_sub(keep);
        superseded.sort();
        for (_, _, pid) in superseded.into_iter().take(excess) {
            self.retire(pid);
        }
    }

    /// Fork one worker. A failed fork (EAGAIN at a process limit, ENOMEM) is logged and retried
    /// after a back-off instead of ending the server; gunicorn would exit here, taking the
    /// workers that still serve with it. False if none was forked.
    fn try_spawn(&mut self, worker_main: &mut dyn FnMut(WorkerContext) -> i32) -> bool {
        match self.spawn_worker(worker_main) {
            Ok(forked) => forked,
            Err(e) => {
                let e = format!("fork failed: {e}");
                error!("{e}");
                self.back_off(&format!("Cannot fork a worker ({e})"));
                false
            }
        }
    }

    fn free_slot(&self) -> Option<usize> {
        let used: std::collections::BTreeSet<usize> =
            self.workers.values().map(|w| w.slot).collect();
        (0..MAX_SLOTS).find(|slot| !used.contains(slot))
    }

    /// Fork one worker; `Ok(false)` if no scoreboard slot is free.
    fn spawn_worker(
        &mut self,
        worker_main: &mut dyn FnMut(WorkerContext) -> i32,
    ) -> nix::Result<bool> {
        let Some(slot) = self.free_slot() else {
            warn!("No scoreboard slot left; not spawning another worker");
            return Ok(false);
        };
        self.table.arm(slot);
        let age = self.next_age;
        self.next_age += 1;
        self.warn_if_threaded();
        self.hooks.before_fork();
        match fork_process()? {
            ForkResult::Child => {
                self.hooks.after_fork_child();
                let code = self.worker_process(slot, age, worker_main);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                self.hooks.after_fork_parent(child.as_raw());
                info!("Booting worker with pid: {child}");
                let mut info = WorkerInfo::new(slot, age);
                info.predecessor_exit = self.unreplaced_exits.pop_front();
                self.workers.insert(child, info);
                Ok(true)
            }
        }
    }

    /// Everything a child does between fork and exit. Never returns into the arbiter's loop.
    fn worker_process(
        &mut self,
        slot: usize,
        age: u64,
        worker_main: &mut dyn FnMut(WorkerContext) -> i32,
    ) -> i32 {
        let master = self
            .signals
            .take()
            .expect("master signals present before fork");
        let signals = match WorkerSignals::install_replacing(master) {
            Ok(signals) => signals,
            Err(e) => {
                error!("Worker failed to install signal handlers: {e}");
                return WORKER_BOOT_ERROR;
            }
        };
        let ctx = WorkerContext {
            signals,
            slot: self.table.worker_slot(slot),
            age,
            master_pid: self.pid,
        };
        if !ctx.stop_with_master() {
            info!("Parent changed, shutting down");
            return 0;
        }
        match catch_unwind(AssertUnwindSafe(|| worker_main(ctx))) {
            Ok(code) => code,
            Err(_) => {
                error!("Worker panicked; exiting");
                1
            }
        }
    }

    /// The master never starts threads, but a preloaded app may (an SDK's background thread):
    /// only the forking thread exists in a worker, and a lock another thread held at fork time
    /// stays locked there for ever. Say so once.
    fn warn_if_threaded(&mut self) {
        if self.warned_threads {
            return;
        }
        let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
        if threads > 1 {
            self.warned_threads = true;
            warn!(
                "The master has {threads} threads when forking workers (started by the preloaded \
                 app?); they do not exist in the workers, and a lock one of them holds at fork \
                 time can deadlock a worker"
            );
        }
    }

    fn signal_workers(&mut self, sig: Signal, retiring: bool) {
        for (pid, info) in &mut self.workers {
            if retiring {
                info.retiring = true;
            }
            let _ = kill(*pid, sig);
        }
    }

    /// Stop every worker: TERM (graceful, up to `--graceful-timeout`) or QUIT (quick, up to
    /// [`QUICK_STOP_GRACE`]), then SIGKILL whatever is left. INT or QUIT during a graceful stop
    /// turns it into a quick one.
    fn stop(&mut self, graceful: bool) {
        let shared = self.has_successor() || self.has_parent_master();
        if graceful && !shared {
            // Nobody takes over the listeners: the workers must serve what is queued in them
            // before the last copy closes and resets it. Set before they are signalled.
            self.table.set_server_stopping();
        }
        self.hooks.stop(shared);
        let (sig, grace) = if graceful {
            (Signal::SIGTERM, self.config.graceful_timeout)
        } else {
            (
                Signal::SIGQUIT,
                QUICK_STOP_GRACE.min(self.config.graceful_timeout),
            )
        };
        self.signal_workers(sig, true);
        let started = Instant::now();
        let mut deadline = started + grace;
        let mut quick = !graceful;
        loop {
            self.reap();
            let now = Instant::now();
            if self.workers.is_empty() || now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            let received = self.signals_mut().wait_signals(wait);
            if let Some(sig) = received
                .into_iter()
                .find(|s| !quick && matches!(*s, libc::SIGINT | libc::SIGQUIT))
            {
                info!("Handling signal: {}", signal_name(sig));
                info!("Quick shutdown requested");
                quick = true;
                self.signal_workers(Signal::SIGQUIT, true);
                deadline = deadline.min(Instant::now() + QUICK_STOP_GRACE);
            }
        }
        if self.workers.is_empty() {
            return;
        }
        for (pid, info) in &mut self.workers {
            warn!(
                "Worker (pid:{pid}) still running {:.1}s after the stop request; killing it",
                started.elapsed().as_secs_f64()
            );
            info.killed = true;
            let _ = kill(*pid, Signal::SIGKILL);
        }
        // SIGKILL cannot be caught: each one ends with a SIGCHLD soon.
        while !self.workers.is_empty() {
            self.signals_mut().wait_signals(Duration::from_millis(100));
            self.reap();
        }
    }
}

/// Log `WORKER TIMEOUT (pid:N) serving GET /slow for 2.5s` for each request of `snap` past
/// `timeout` not named before. No signal: the worker interrupts it (and then stops) itself.
fn report_stuck_requests(pid: Pid, info: &mut WorkerInfo, snap: &SlotSnapshot, timeout: Duration) {
    info.reported.resize(snap.lanes.len(), None);
    for (lane, reported) in snap.lanes.iter().zip(&mut info.reported) {
        let Some(busy) = lane.busy_for.filter(|&busy| busy > timeout) else {
            continue;
        };
        if *reported == Some(lane.started) {
            continue;
        }
        *reported = Some(lane.started);
        // The worker itself says gunicorn's WORKER TIMEOUT line as it interrupts the request.
        info.timed_out = true;
        let request = lane.request().unwrap_or_else(|| "a request".to_string());
        debug!(
            "worker (pid:{pid}) is past --timeout serving {request} for {:.1}s",
            busy.as_secs_f64()
        );
    }
}

/// Why the worker of `snap` must be aborted now, if it must: it has not beaten for `timeout`
/// (hung as a whole), or a request is still running [`ABANDON_AFTER`] + [`STUCK_MARGIN`] past
/// `timeout` (the worker failed to interrupt or abandon it).
fn abort_reason(pid: Pid, snap: &SlotSnapshot, timeout: Duration) -> Option<String> {
    if snap.silence > timeout {
        // gunicorn's words.
        return Some(format!(
            "WORKER TIMEOUT (pid:{pid}) silent for {:.1}s ({})",
            snap.silence.as_secs_f64(),
            describe_work(snap)
        ));
    }
    let limit = timeout + ABANDON_AFTER + STUCK_MARGIN;
    let stuck = snap
        .lanes
        .iter()
        .filter(|lane| lane.busy_for.is_some_and(|busy| busy > limit))
        .max_by_key(|lane| lane.busy_for)?;
    Some(format!(
        "WORKER TIMEOUT (pid:{pid}) still serving {} {:.1}s after its timeout",
        stuck.request().unwrap_or_else(|| "a request".to_string()),
        stuck
            .busy_for
            .unwrap_or_default()
            .saturating_sub(timeout)
            .as_secs_f64()
    ))
}

/// What a worker was doing, for the timeout log: `serving GET /slow for 2.1s`.
fn describe_work(snap: &SlotSnapshot) -> String {
    match (snap.busy_for, snap.request()) {
        (Some(busy), Some(request)) => {
            format!("serving {request} for {:.1}s", busy.as_secs_f64())
        }
        _ => match snap.state {
            crate::SlotState::Booting => "booting (no request yet)".to_string(),
            _ => "not serving a request".to_string(),
        },
    }
}

/// The next child that changed state, without waiting; `None` once none has (or on an error,
/// logged).
fn next_child_status() -> Option<WaitStatus> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return None,
            Ok(status) => return Some(status),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                error!("waitpid failed: {e}");
                return None;
            }
        }
    }
}

/// How the master started by USR2 ended.
fn log_reexec_exit(pid: Pid, code: Option<i32>, signal: Option<Signal>) {
    match (code, signal) {
        (Some(0), _) => info!("Re-executed master (pid:{pid}) exited"),
        (Some(code), _) => error!("Re-executed master (pid:{pid}) exited with code {code}."),
        (_, Some(sig)) => warn!("Re-executed master (pid:{pid}) was sent {sig}!"),
        (None, None) => {}
    }
}

/// Whether a worker's exit code says it could not start (gunicorn's codes).
fn is_boot_failure_code(code: i32) -> bool {
    matches!(code, WORKER_BOOT_ERROR | APP_LOAD_ERROR)
}

/// How a worker ended, in gunicorn's wording and levels.
fn log_worker_exit(pid: Pid, info: &WorkerInfo, code: Option<i32>, signal: Option<Signal>) {
    match (code, signal) {
        (Some(0), _) => info!("Worker exiting (pid: {pid})"),
        (Some(code), _) => error!("Worker (pid:{pid}) exited with code {code}."),
        (None, Some(Signal::SIGKILL)) if !info.killed => {
            error!("Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?")
        }
        (None, Some(Signal::SIGTERM)) => info!("Worker (pid:{pid}) was sent SIGTERM!"),
        (None, Some(sig)) => warn!("Worker (pid:{pid}) was sent {sig}!"),
        (None, None) => {}
    }
}

/// What the arbiter knows of why a reaped worker ended; `boot_code` is its exit code when that
/// says it could not start (and it had not booted).
fn exit_cause(
    info: &WorkerInfo,
    code: Option<i32>,
    signal: Option<Signal>,
    boot_code: Option<i32>,
) -> ExitCause {
    if info.aborted_at.is_some() || info.timed_out {
        return ExitCause::Timeout;
    }
    if let Some(code) = boot_code {
        return ExitCause::BootFailure(code);
    }
    match (code, signal) {
        _ if info.retiring => ExitCause::ScaleDown,
        (Some(0), _) => ExitCause::MaxRequests,
        (None, Some(Signal::SIGKILL)) if !info.killed => ExitCause::Memory,
        _ => ExitCause::Crash {
            code,
            signal: signal.map(|s| s as i32),
        },
    }
}

fn fork_process() -> nix::Result<ForkResult> {
    // SAFETY: the arbiter starts no threads (the signal queue is a self-pipe), but a preloaded
    // app may have (`warn_if_threaded` says so before the fork). Only this thread exists in the
    // child: glibc resets malloc's locks and CPython's `PyOS_AfterFork_Child` (the fork hooks)
    // its own; the master's Rust code holds no lock across the call. A lock one of the app's
    // threads holds at this instant stays held in the child: the risk the warning names.
    unsafe { fork() }
}
