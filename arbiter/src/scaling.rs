//! How many workers to run and which to replace: pure policies over what the arbiter observed
//! (scoreboard slots, the listen queue, memory figures, clocks). Each returns a decision and the
//! reason the arbiter logs; the arbiter only gathers the inputs and applies the decisions.
//!
//! uWSGI's "cheaper" algorithms each watch one signal: `spare` counts cycles with no idle worker,
//! `backlog` the listen queue, `busyness` the share of time workers were busy over a period; its
//! memory caps (`cheaper-rss-limit-*`, `reload-on-rss`) use RSS, which counts the pages workers
//! share with the master once per worker and so overstates a pre-fork server. Here a worker is
//! added only when both hold for a short window (every worker busy *and* connections waiting),
//! so a burst the workers absorb forks nothing and a queue that drains by itself neither; the
//! server's footprint is the PSS sum and the cost of one more worker the largest warmed USS, so
//! no worker is forked that the memory budget cannot hold; and a worker is retired only after it
//! alone has been idle for `--scale-down-after`, the longest-idle first.

use std::time::{Duration, Instant};

use crate::SlotState;

/// How long every app thread must stay busy with requests waiting before one more worker is
/// forked.
pub const PRESSURE_WINDOW: Duration = Duration::from_millis(500);

/// A process's memory, in bytes (as `/proc/PID/smaps_rollup` gives it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryFigures {
    /// Private pages: what the kernel gets back when the process exits.
    pub uss: u64,
    /// Shared pages split between their sharers: summed over the server, its real footprint.
    pub pss: u64,
    /// Resident pages, shared ones counted in full by each sharer (what `ps` shows).
    pub rss: u64,
}

/// The memory the whole server may use, and where that figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The budget in bytes.
    pub bytes: u64,
    /// `--memory-budget`, `cgroup limit in ...`, `MemTotal`.
    pub source: String,
}

/// `--workers auto`: the CPU side is known before any fork; the memory side needs a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoWorkers {
    /// `2 x cores + 1`.
    pub cpu_workers: usize,
    /// How the CPU count was found, e.g. `1 CPUs (cgroup quota in ...)`.
    pub cpu: String,
}

/// `--workers-min/--workers-max/--scale-down-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscale {
    /// Fewest workers: scaling down stops here.
    pub min: usize,
    /// Most workers: scaling up stops here.
    pub max: usize,
    /// A worker idle this long is retired (down to `min`).
    pub scale_down_after: Duration,
}

/// How the number of workers is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WorkerSizing {
    /// `-w N`: exactly N (TTIN/TTOU move it), as gunicorn.
    #[default]
    Fixed,
    /// `-w auto`: the CPU count before the first fork, capped by memory once a worker is measured.
    Auto(AutoWorkers),
    /// `-w MIN:MAX`: follows the load between the bounds.
    Scale(Autoscale),
}

/// When workers are replaced for their memory or age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// `--memory-budget` or the machine's: no worker is forked past it; over it, one is replaced.
    pub budget: Option<MemoryBudget>,
    /// `--max-worker-memory`: a worker whose USS is above it is replaced.
    pub max_worker_memory: Option<u64>,
    /// `--min-worker-lifetime`: no worker is replaced for memory before it lived this long.
    pub min_worker_lifetime: Duration,
    /// `--max-worker-lifetime`: a worker older than this (plus its jitter) is replaced.
    pub max_worker_lifetime: Option<Duration>,
    /// `--max-worker-lifetime-jitter`: up to this much more per worker (see [`lifetime_jitter`]),
    /// so workers started together are not all replaced together.
    pub max_worker_lifetime_jitter: Duration,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        MemoryPolicy {
            budget: None,
            max_worker_memory: None,
            min_worker_lifetime: Duration::from_secs(60),
            max_worker_lifetime: None,
            max_worker_lifetime_jitter: Duration::ZERO,
        }
    }
}

impl MemoryPolicy {
    /// Whether any rule needs the workers' memory measured.
    pub fn reads_memory(&self) -> bool {
        self.budget.is_some() || self.max_worker_memory.is_some()
    }
}

/// One active worker as the policies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// The worker's process id.
    pub pid: i32,
    /// What its scoreboard slot says it is doing (`Busy`: at least one thread is).
    pub state: SlotState,
    /// Its app threads (`--threads`).
    pub threads: usize,
    /// Of those, the ones serving a request now.
    pub busy_threads: usize,
    /// Complete request heads queued in it for a free thread.
    pub waiting: u64,
    /// Since it last served a request (or since it was forked, if it never did).
    pub idle_for: Duration,
    /// Since it was forked.
    pub lifetime: Duration,
    /// Requests it has served.
    pub served: u64,
    /// The last reading, if any.
    pub memory: Option<MemoryFigures>,
}

/// Bytes as MiB with one decimal (GiB from 1 GiB on), for log lines.
pub fn mib(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// Workers of `per_worker` private bytes each that fit in `budget` beside a master of
/// `master_rss` (forked workers share the master's pages, so it counts once), at least 1.
pub fn workers_that_fit(budget: u64, master_rss: u64, per_worker: u64) -> usize {
    let room = budget.saturating_sub(master_rss);
    (room / per_worker.max(1)).max(1) as usize
}

/// The `--workers auto` count once the first worker's USS is known, and the sentence saying why.
pub fn auto_count(
    auto: &AutoWorkers,
    budget: &MemoryBudget,
    master_rss: u64,
    worker_uss: Option<u64>,
) -> (usize, String) {
    let cpu = format!("2 x {} + 1 = {}", auto.cpu, auto.cpu_workers);
    let Some(uss) = worker_uss.filter(|&u| u > 0) else {
        return (
            auto.cpu_workers,
            format!("{cpu}; worker memory unreadable, so no memory cap"),
        );
    };
    let fit = workers_that_fit(budget.bytes, master_rss, uss);
    let count = auto.cpu_workers.min(fit);
    let memory = format!(
        "{fit} fit in the memory budget {} ({}) beside the master's {} RSS at {} USS per worker",
        mib(budget.bytes),
        budget.source,
        mib(master_rss),
        mib(uss)
    );
    let bound = if fit < auto.cpu_workers {
        "memory"
    } else {
        "CPU"
    };
    (count, format!("{cpu}; {memory}; bound by {bound}"))
}

/// The re-check once the workers have served: how many still fit at the largest warmed USS.
/// `Some` (count, reason) only when fewer than `current` do.
pub fn warmed_count(
    current: usize,
    budget: &MemoryBudget,
    master_rss: u64,
    workers: &[WorkerView],
) -> Option<(usize, String)> {
    let uss = workers
        .iter()
        .filter_map(|w| w.memory.map(|m| m.uss))
        .max()?;
    let fit = workers_that_fit(budget.bytes, master_rss, uss);
    (fit < current).then(|| {
        (
            fit,
            format!(
                "after serving, workers use up to {} USS: only {fit} fit in the memory budget {} \
                 ({}) beside the master's {} RSS",
                mib(uss),
                mib(budget.bytes),
                budget.source,
                mib(master_rss)
            ),
        )
    })
}

/// What the autoscaler wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleDecision {
    /// Keep the current number of workers.
    Hold,
    /// Fork one more worker.
    Grow(String),
    /// One more is needed but a bound forbids it (say so once, not every tick).
    Capped(String),
    /// Retire this (idle) worker.
    Shrink {
        /// The worker to retire.
        pid: i32,
        /// Why, for the log.
        reason: String,
    },
}

/// The memory side of growing: the server's footprint now and what one more worker would add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headroom {
    /// The budget the footprint is measured against.
    pub budget: MemoryBudget,
    /// PSS of the master and every worker.
    pub used: u64,
    /// The largest worker's USS: the cost of one more once it warms up.
    pub per_worker: u64,
}

impl Headroom {
    /// From the master's and the workers' readings; `None` without a budget or any reading.
    pub fn measure(
        budget: Option<&MemoryBudget>,
        master: Option<MemoryFigures>,
        workers: &[WorkerView],
    ) -> Option<Headroom> {
        let budget = budget?.clone();
        let readings: Vec<MemoryFigures> = workers.iter().filter_map(|w| w.memory).collect();
        let per_worker = readings.iter().map(|m| m.uss).max()?;
        let used = master.map_or(0, |m| m.pss) + readings.iter().map(|m| m.pss).sum::<u64>();
        Some(Headroom {
            budget,
            used,
            per_worker,
        })
    }

    fn fits_one_more(&self) -> bool {
        self.used.saturating_add(self.per_worker) <= self.budget.bytes
    }
}

/// The state the autoscaler keeps between ticks: since when the workers have been saturated.
#[derive(Debug, Default)]
pub struct Autoscaler {
    pressure_since: Option<Instant>,
}

/// Every app thread of every worker serves a request (none is booting): one more request has to
/// wait.
pub fn all_threads_busy(workers: &[WorkerView]) -> bool {
    !workers.is_empty()
        && workers
            .iter()
            .all(|w| w.state == SlotState::Busy && w.busy_threads >= w.threads)
}

/// Request heads queued inside the workers for a thread, all workers together.
fn heads_waiting(workers: &[WorkerView]) -> u64 {
    workers.iter().map(|w| w.waiting).sum()
}

/// Requests wait: in the accept queue (`None`: unknown, so assumed) or in a worker.
fn requests_waiting(workers: &[WorkerView], queue: Option<(u32, u32)>) -> bool {
    queue.is_none_or(|(queued, _)| queued > 0) || heads_waiting(workers) > 0
}

impl Autoscaler {
    /// One decision for this tick. `workers` are the active ones; `queue` is the listeners'
    /// accept queue (`None` when unknown, e.g. unix sockets: then all-busy alone is pressure);
    /// heads queued in the workers count as waiting as well.
    pub fn decide(
        &mut self,
        bounds: &Autoscale,
        workers: &[WorkerView],
        queue: Option<(u32, u32)>,
        headroom: Option<&Headroom>,
        now: Instant,
    ) -> ScaleDecision {
        if !(all_threads_busy(workers) && requests_waiting(workers, queue)) {
            self.pressure_since = None;
            return shrink(bounds, workers, queue);
        }
        let since = *self.pressure_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        if waited < PRESSURE_WINDOW {
            return ScaleDecision::Hold;
        }
        let pressure = pressure_text(workers, queue, waited);
        if workers.len() >= bounds.max {
            return ScaleDecision::Capped(format!(
                "{pressure}, but --workers-max is {}",
                bounds.max
            ));
        }
        if let Some(room) = headroom.filter(|h| !h.fits_one_more()) {
            return ScaleDecision::Capped(format!(
                "{pressure}, but one more worker ({} USS) would take the server past its memory \
                 budget {} ({}): it uses {}",
                mib(room.per_worker),
                mib(room.budget.bytes),
                room.budget.source,
                mib(room.used)
            ));
        }
        // The next step needs a fresh window, and the new worker to boot (a booting worker is
        // not busy, so there is no pressure until it serves).
        self.pressure_since = None;
        ScaleDecision::Grow(pressure)
    }
}

fn pressure_text(workers: &[WorkerView], queue: Option<(u32, u32)>, waited: Duration) -> String {
    let mut waiting = match queue {
        Some((queued, limit)) => format!("{queued} of {limit} connections queued"),
        None => "queue length unknown".to_string(),
    };
    let heads = heads_waiting(workers);
    if heads > 0 {
        waiting += &format!(", {heads} requests queued in workers");
    }
    let threads: usize = workers.iter().map(|w| w.threads).sum();
    let busy = if threads == workers.len() {
        format!("all {} workers busy", workers.len())
    } else {
        format!("all {threads} threads of {} workers busy", workers.len())
    };
    format!("{busy} for {:.1}s ({waiting})", waited.as_secs_f64())
}

/// Retire the longest-idle worker once it has been idle for `scale_down_after`, down to `min`.
fn shrink(bounds: &Autoscale, workers: &[WorkerView], queue: Option<(u32, u32)>) -> ScaleDecision {
    let queued = queue.is_some_and(|(queued, _)| queued > 0) || heads_waiting(workers) > 0;
    if workers.len() <= bounds.min || queued {
        return ScaleDecision::Hold;
    }
    let idlest = workers
        .iter()
        .filter(|w| w.state == SlotState::Idle && w.idle_for >= bounds.scale_down_after)
        .max_by_key(|w| w.idle_for);
    match idlest {
        Some(w) => ScaleDecision::Shrink {
            pid: w.pid,
            reason: format!(
                "idle for {:.0}s (--scale-down-after {}s), {} workers left of --workers-min {}",
                w.idle_for.as_secs_f64(),
                bounds.scale_down_after.as_secs_f64(),
                workers.len() - 1,
                bounds.min
            ),
        },
        None => ScaleDecision::Hold,
    }
}

/// A worker to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recycle {
    /// The worker to replace.
    pub pid: i32,
    /// Fork the replacement and let it boot before the old one stops (capacity does not dip);
    /// false when the server is over its budget, so the memory is freed first.
    pub replacement_first: bool,
    /// Why, for the log.
    pub reason: String,
}

/// At most one worker to replace this tick: over the server's budget, the largest; else one
/// above `--max-worker-memory`; else one past `--max-worker-lifetime`. Workers younger than
/// `--min-worker-lifetime` are never replaced for memory, so a big app does not flap.
pub fn recycle(
    policy: &MemoryPolicy,
    workers: &[WorkerView],
    master: Option<MemoryFigures>,
) -> Option<Recycle> {
    over_budget(policy, workers, master)
        .or_else(|| over_worker_limit(policy, workers))
        .or_else(|| past_lifetime(policy, workers))
}

fn largest_grown(policy: &MemoryPolicy, workers: &[WorkerView]) -> Option<(i32, MemoryFigures)> {
    workers
        .iter()
        .filter(|w| w.lifetime >= policy.min_worker_lifetime)
        .filter_map(|w| w.memory.map(|m| (w.pid, m)))
        .max_by_key(|(_, m)| m.uss)
}

fn over_budget(
    policy: &MemoryPolicy,
    workers: &[WorkerView],
    master: Option<MemoryFigures>,
) -> Option<Recycle> {
    let budget = policy.budget.as_ref()?;
    let used = master.map_or(0, |m| m.pss)
        + workers
            .iter()
            .filter_map(|w| w.memory.map(|m| m.pss))
            .sum::<u64>();
    if used <= budget.bytes {
        return None;
    }
    let (pid, memory) = largest_grown(policy, workers)?;
    Some(Recycle {
        pid,
        replacement_first: false,
        reason: format!(
            "the server uses {} PSS, over its memory budget {} ({}); this is the largest worker \
             at {} USS",
            mib(used),
            mib(budget.bytes),
            budget.source,
            mib(memory.uss)
        ),
    })
}

fn over_worker_limit(policy: &MemoryPolicy, workers: &[WorkerView]) -> Option<Recycle> {
    let limit = policy.max_worker_memory?;
    let (pid, memory) = largest_grown(policy, workers).filter(|(_, m)| m.uss > limit)?;
    Some(Recycle {
        pid,
        replacement_first: true,
        reason: format!(
            "USS {} is over --max-worker-memory {} (RSS {})",
            mib(memory.uss),
            mib(limit),
            mib(memory.rss)
        ),
    })
}

fn past_lifetime(policy: &MemoryPolicy, workers: &[WorkerView]) -> Option<Recycle> {
    let max = policy.max_worker_lifetime?;
    workers.iter().find_map(|w| {
        let limit = max + lifetime_jitter(w.pid, policy.max_worker_lifetime_jitter);
        (w.lifetime >= limit).then(|| Recycle {
            pid: w.pid,
            replacement_first: true,
            reason: format!(
                "lived {:.0}s, past --max-worker-lifetime {:.0}s (with its jitter)",
                w.lifetime.as_secs_f64(),
                limit.as_secs_f64()
            ),
        })
    })
}

/// A worker's share of `--max-worker-lifetime-jitter`, spread by pid so workers started together
/// are not all replaced together.
pub fn lifetime_jitter(pid: i32, jitter: Duration) -> Duration {
    let ms = jitter.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    // Knuth's multiplicative hash: consecutive pids land far apart.
    Duration::from_millis(u64::from(pid.unsigned_abs()).wrapping_mul(2_654_435_761) % (ms + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn worker(pid: i32, state: SlotState, idle_secs: u64) -> WorkerView {
        WorkerView {
            pid,
            state,
            threads: 1,
            busy_threads: usize::from(state == SlotState::Busy),
            waiting: 0,
            idle_for: Duration::from_secs(idle_secs),
            lifetime: Duration::from_secs(600),
            served: 10,
            memory: None,
        }
    }

    fn with_memory(mut w: WorkerView, uss_mb: u64) -> WorkerView {
        w.memory = Some(MemoryFigures {
            uss: uss_mb * MB,
            pss: uss_mb * MB,
            rss: 2 * uss_mb * MB,
        });
        w
    }

    fn budget(mb: u64) -> MemoryBudget {
        MemoryBudget {
            bytes: mb * MB,
            source: "--memory-budget".into(),
        }
    }

    fn bounds(min: usize, max: usize) -> Autoscale {
        Autoscale {
            min,
            max,
            scale_down_after: Duration::from_secs(30),
        }
    }

    fn one_core() -> AutoWorkers {
        AutoWorkers {
            cpu_workers: 3,
            cpu: "1 CPUs (cgroup quota)".into(),
        }
    }

    #[test]
    fn auto_takes_the_cpu_rule_when_memory_is_plenty() {
        let (n, why) = auto_count(&one_core(), &budget(1024), 10 * MB, Some(20 * MB));
        assert_eq!(n, 3);
        assert!(why.contains("2 x 1 CPUs (cgroup quota) + 1 = 3"), "{why}");
        assert!(why.contains("bound by CPU"), "{why}");
    }

    #[test]
    fn auto_takes_what_fits_when_memory_is_short() {
        // (100 - 10) / 40 = 2 workers fit.
        let (n, why) = auto_count(&one_core(), &budget(100), 10 * MB, Some(40 * MB));
        assert_eq!(n, 2);
        assert!(
            why.contains("2 fit in the memory budget 100.0 MiB"),
            "{why}"
        );
        assert!(why.contains("40.0 MiB USS per worker"), "{why}");
        assert!(why.contains("bound by memory"), "{why}");
    }

    #[test]
    fn auto_runs_one_worker_even_when_none_fits() {
        assert_eq!(
            auto_count(&one_core(), &budget(10), 20 * MB, Some(40 * MB)).0,
            1
        );
        assert_eq!(auto_count(&one_core(), &budget(10), 0, None).0, 3);
    }

    #[test]
    fn the_warm_recheck_only_ever_lowers_the_count() {
        let grown = [
            with_memory(worker(1, SlotState::Idle, 0), 30),
            with_memory(worker(2, SlotState::Idle, 0), 45),
        ];
        let (n, why) = warmed_count(3, &budget(100), 10 * MB, &grown).unwrap();
        assert_eq!(n, 2, "(100 - 10) / 45");
        assert!(why.contains("45.0 MiB USS"), "{why}");
        assert_eq!(warmed_count(2, &budget(100), 10 * MB, &grown), None);
        assert_eq!(warmed_count(3, &budget(100), 10 * MB, &[]), None);
    }

    #[test]
    fn grows_only_after_all_are_busy_with_a_queue_for_the_window() {
        let t0 = Instant::now();
        let busy = [worker(1, SlotState::Busy, 0), worker(2, SlotState::Busy, 0)];
        let mut scaler = Autoscaler::default();
        let b = bounds(1, 4);
        assert_eq!(
            scaler.decide(&b, &busy, Some((3, 128)), None, t0),
            ScaleDecision::Hold
        );
        let later = t0 + PRESSURE_WINDOW;
        match scaler.decide(&b, &busy, Some((3, 128)), None, later) {
            ScaleDecision::Grow(why) => {
                assert!(why.contains("all 2 workers busy"), "{why}");
                assert!(why.contains("3 of 128 connections queued"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // The window starts over after each step.
        assert_eq!(
            scaler.decide(&b, &busy, Some((3, 128)), None, later),
            ScaleDecision::Hold
        );
    }

    #[test]
    fn busy_workers_with_an_empty_queue_or_one_idle_worker_are_no_pressure() {
        let t0 = Instant::now();
        let b = bounds(1, 4);
        let mut scaler = Autoscaler::default();
        let busy = [worker(1, SlotState::Busy, 0), worker(2, SlotState::Busy, 0)];
        scaler.decide(&b, &busy, Some((0, 128)), None, t0);
        let at = t0 + 2 * PRESSURE_WINDOW;
        assert_eq!(
            scaler.decide(&b, &busy, Some((0, 128)), None, at),
            ScaleDecision::Hold
        );
        let one_idle = [worker(1, SlotState::Busy, 0), worker(2, SlotState::Idle, 0)];
        scaler.decide(&b, &one_idle, Some((5, 128)), None, t0);
        assert_eq!(
            scaler.decide(&b, &one_idle, Some((5, 128)), None, at),
            ScaleDecision::Hold
        );
        let booting = [
            worker(1, SlotState::Busy, 0),
            worker(2, SlotState::Booting, 0),
        ];
        scaler.decide(&b, &booting, Some((5, 128)), None, t0);
        assert_eq!(
            scaler.decide(&b, &booting, Some((5, 128)), None, at),
            ScaleDecision::Hold
        );
    }

    fn threaded(pid: i32, threads: usize, busy_threads: usize, waiting: u64) -> WorkerView {
        let state = if busy_threads > 0 {
            SlotState::Busy
        } else {
            SlotState::Idle
        };
        WorkerView {
            threads,
            busy_threads,
            waiting,
            ..worker(pid, state, 0)
        }
    }

    /// Two decisions a window apart, from a fresh autoscaler: what it does under steady input.
    fn decide_after_window(workers: &[WorkerView], queue: Option<(u32, u32)>) -> ScaleDecision {
        let t0 = Instant::now();
        let mut scaler = Autoscaler::default();
        scaler.decide(&bounds(1, 8), workers, queue, None, t0);
        scaler.decide(&bounds(1, 8), workers, queue, None, t0 + PRESSURE_WINDOW)
    }

    #[test]
    fn with_threads_busy_means_every_thread_of_every_worker() {
        let one_thread_free = [threaded(1, 4, 4, 0), threaded(2, 4, 3, 0)];
        assert!(!all_threads_busy(&one_thread_free));
        assert_eq!(
            decide_after_window(&one_thread_free, Some((5, 128))),
            ScaleDecision::Hold,
            "a free thread takes the next request"
        );
        let full = [threaded(1, 4, 4, 0), threaded(2, 4, 4, 0)];
        assert!(all_threads_busy(&full));
        match decide_after_window(&full, Some((5, 128))) {
            ScaleDecision::Grow(why) => {
                assert!(why.contains("all 8 threads of 2 workers busy"), "{why}");
                assert!(why.contains("5 of 128 connections queued"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heads_waiting_in_workers_count_like_the_listen_queue() {
        let full = [threaded(1, 2, 2, 3), threaded(2, 2, 2, 0)];
        match decide_after_window(&full, Some((0, 128))) {
            ScaleDecision::Grow(why) => {
                assert!(why.contains("0 of 128 connections queued"), "{why}");
                assert!(why.contains("3 requests queued in workers"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let drained = [threaded(1, 2, 2, 0), threaded(2, 2, 2, 0)];
        assert_eq!(
            decide_after_window(&drained, Some((0, 128))),
            ScaleDecision::Hold
        );
        // Nor is an idle worker retired while requests wait in a sibling.
        let mut idle = threaded(3, 2, 0, 0);
        idle.idle_for = Duration::from_secs(45);
        let busy = threaded(4, 2, 1, 2);
        assert_eq!(
            decide_after_window(&[idle.clone(), busy.clone()], Some((0, 8))),
            ScaleDecision::Hold
        );
        let calm = threaded(4, 2, 1, 0);
        assert!(matches!(
            decide_after_window(&[idle, calm], Some((0, 8))),
            ScaleDecision::Shrink { pid: 3, .. }
        ));
    }

    #[test]
    fn an_unknown_queue_counts_all_busy_as_pressure() {
        let t0 = Instant::now();
        let mut scaler = Autoscaler::default();
        let busy = [worker(1, SlotState::Busy, 0)];
        scaler.decide(&bounds(1, 2), &busy, None, None, t0);
        let d = scaler.decide(&bounds(1, 2), &busy, None, None, t0 + PRESSURE_WINDOW);
        assert!(matches!(d, ScaleDecision::Grow(ref why) if why.contains("queue length unknown")));
    }

    #[test]
    fn never_grows_past_the_maximum_or_the_memory_budget() {
        let t0 = Instant::now();
        let later = t0 + PRESSURE_WINDOW;
        let busy = [
            with_memory(worker(1, SlotState::Busy, 0), 40),
            with_memory(worker(2, SlotState::Busy, 0), 40),
        ];
        let mut scaler = Autoscaler::default();
        scaler.decide(&bounds(1, 2), &busy, Some((1, 8)), None, t0);
        let d = scaler.decide(&bounds(1, 2), &busy, Some((1, 8)), None, later);
        assert!(matches!(d, ScaleDecision::Capped(ref why) if why.contains("--workers-max is 2")));
        // 2 x 40 used + 40 more > 100.
        let room = Headroom::measure(Some(&budget(100)), None, &busy).unwrap();
        assert_eq!(room.used, 80 * MB);
        let mut scaler = Autoscaler::default();
        scaler.decide(&bounds(1, 8), &busy, Some((1, 8)), Some(&room), t0);
        let d = scaler.decide(&bounds(1, 8), &busy, Some((1, 8)), Some(&room), later);
        assert!(matches!(d, ScaleDecision::Capped(ref why) if why.contains("memory budget")));
        let roomy = Headroom::measure(Some(&budget(200)), None, &busy).unwrap();
        let mut scaler = Autoscaler::default();
        scaler.decide(&bounds(1, 8), &busy, Some((1, 8)), Some(&roomy), t0);
        let d = scaler.decide(&bounds(1, 8), &busy, Some((1, 8)), Some(&roomy), later);
        assert!(matches!(d, ScaleDecision::Grow(_)), "{d:?}");
    }

    #[test]
    fn retires_the_longest_idle_worker_after_the_delay_but_not_below_the_minimum() {
        let now = Instant::now();
        let workers = [
            worker(1, SlotState::Idle, 31),
            worker(2, SlotState::Idle, 45),
            worker(3, SlotState::Busy, 0),
        ];
        let mut scaler = Autoscaler::default();
        match scaler.decide(&bounds(1, 4), &workers, Some((0, 8)), None, now) {
            ScaleDecision::Shrink { pid, reason } => {
                assert_eq!(pid, 2);
                assert!(reason.contains("idle for 45s"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            scaler.decide(&bounds(3, 4), &workers, Some((0, 8)), None, now),
            ScaleDecision::Hold
        );
        let fresh = [
            worker(1, SlotState::Idle, 29),
            worker(2, SlotState::Idle, 1),
        ];
        assert_eq!(
            scaler.decide(&bounds(1, 4), &fresh, Some((0, 8)), None, now),
            ScaleDecision::Hold
        );
    }

    fn policy() -> MemoryPolicy {
        MemoryPolicy {
            max_worker_memory: Some(50 * MB),
            ..MemoryPolicy::default()
        }
    }

    #[test]
    fn a_worker_over_the_limit_is_replaced_replacement_first() {
        let workers = [
            with_memory(worker(1, SlotState::Idle, 0), 40),
            with_memory(worker(2, SlotState::Busy, 0), 60),
        ];
        let r = recycle(&policy(), &workers, None).unwrap();
        assert_eq!(r.pid, 2);
        assert!(r.replacement_first);
        assert!(r.reason.contains("USS 60.0 MiB"), "{}", r.reason);
        assert!(
            r.reason.contains("--max-worker-memory 50.0 MiB"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn a_young_worker_is_not_replaced_for_memory() {
        let mut young = with_memory(worker(1, SlotState::Idle, 0), 60);
        young.lifetime = Duration::from_secs(59);
        assert_eq!(recycle(&policy(), &[young], None), None);
    }

    #[test]
    fn over_the_server_budget_the_largest_goes_first() {
        let policy = MemoryPolicy {
            budget: Some(budget(100)),
            ..MemoryPolicy::default()
        };
        let workers = [
            with_memory(worker(1, SlotState::Idle, 0), 30),
            with_memory(worker(2, SlotState::Idle, 0), 45),
        ];
        let master = Some(MemoryFigures {
            uss: 0,
            pss: 30 * MB,
            rss: 30 * MB,
        });
        let r = recycle(&policy, &workers, master).unwrap();
        assert_eq!(r.pid, 2);
        assert!(!r.replacement_first, "over budget: free memory first");
        assert!(r.reason.contains("105.0 MiB PSS"), "{}", r.reason);
        assert_eq!(recycle(&policy, &workers, None), None, "75 MiB fits");
    }

    #[test]
    fn a_worker_past_its_lifetime_is_replaced_with_its_jitter() {
        let policy = MemoryPolicy {
            max_worker_lifetime: Some(Duration::from_secs(600)),
            max_worker_lifetime_jitter: Duration::from_secs(60),
            ..MemoryPolicy::default()
        };
        let mut w = worker(1234, SlotState::Idle, 0);
        let jitter = lifetime_jitter(1234, Duration::from_secs(60));
        assert!(jitter <= Duration::from_secs(60));
        w.lifetime = Duration::from_secs(600) + jitter;
        let r = recycle(&policy, std::slice::from_ref(&w), None).unwrap();
        assert!(r.replacement_first && r.reason.contains("--max-worker-lifetime"));
        w.lifetime = Duration::from_secs(599);
        assert_eq!(recycle(&policy, &[w], None), None);
        let spread: std::collections::BTreeSet<Duration> = (1000..1050)
            .map(|pid| lifetime_jitter(pid, Duration::from_secs(60)))
            .collect();
        assert!(spread.len() > 10, "{spread:?}");
    }

    #[test]
    fn sizes_read_as_mib_or_gib() {
        assert_eq!(mib(20 * MB), "20.0 MiB");
        assert_eq!(mib(1536 * MB), "1.5 GiB");
    }

    #[test]
    fn workers_that_fit_counts_the_master_once() {
        assert_eq!(workers_that_fit(100 * MB, 10 * MB, 30 * MB), 3);
        assert_eq!(workers_that_fit(100 * MB, 200 * MB, 30 * MB), 1);
    }
}
