//! The measured sweep behind `ferrocorn sizing`: which worker counts to try, when to stop, and
//! the recommendation with its one-sentence reason.
//!
//! The engine ([`sweep`]) knows nothing of processes or sockets: a [`Bench`] runs one step (start
//! the server with N workers, warm it up, load it, measure it, stop it) and the engine decides
//! the next count from the results so far. Everything here is a pure function of those results,
//! so it is tested on synthetic sweeps.

use std::time::Duration;

use crate::{human_bytes, ProcessMemory};

/// A step gaining less than this share of throughput over the best so far is a plateau.
pub const PLATEAU_GAIN: f64 = 0.05;
/// The recommendation is the fewest workers within this share of the best throughput.
pub const NEAR_BEST: f64 = 0.05;
/// More failed requests than this share means the server collapsed at that count.
pub const MAX_ERROR_RATE: f64 = 0.01;
/// Steps run before time is kept for the preload comparison.
pub const MIN_STEPS_BEFORE_RESERVE: usize = 3;
/// Steps in a row without a gain that end the sweep.
pub const PATIENCE: usize = 2;
/// Throughput falling below this share of the best means the server thrashes.
pub const COLLAPSE_RPS: f64 = 0.7;

/// A sweep step's load before its measurement and the measured window, for a run of
/// `duration`: about 25 windows in all, each 0.4 to 3 seconds, a half window of warm-up. The
/// step's memory is read when both are over, so a second measurement of the same server
/// (`cargo xtask bench`'s sizing truth) reads it after as much load.
pub fn step_timing(duration: Duration) -> StepTiming {
    let window = (duration / 25).clamp(Duration::from_millis(400), Duration::from_secs(3));
    StepTiming {
        warmup: window / 2,
        window,
    }
}

/// See [`step_timing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTiming {
    /// Load before the measurement.
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
}

impl StepTiming {
    /// Load from the first request to the memory reading.
    pub fn until_memory_read(&self) -> Duration {
        self.warmup + self.window
    }
}

/// What one step of the sweep runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// Workers to start (`-w`).
    pub workers: usize,
    /// App threads per worker (`--threads`, the same for every step).
    pub threads: usize,
    /// Whether the server runs with `--preload`.
    pub preload: bool,
    /// Simultaneous connections the load keeps busy.
    pub connections: usize,
    /// Load before measuring (imports, caches, copy-on-write faults).
    pub warmup: Duration,
    /// How long throughput, latency and CPU are measured.
    pub window: Duration,
}

/// What one step measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepResult {
    /// Workers the step ran (from its [`StepPlan`], like the next three).
    pub workers: usize,
    /// Threads per worker.
    pub threads: usize,
    /// Whether the server ran with `--preload`.
    pub preload: bool,
    /// Simultaneous connections the load kept busy.
    pub connections: usize,
    /// Requests answered with 1xx-3xx within the window.
    pub requests: u64,
    /// Requests that failed, timed out or were answered 4xx/5xx within the window.
    pub errors: u64,
    /// How long the measurement ran: `requests` and `worker_cpu` are over this.
    pub window: Duration,
    /// Median latency of the window's requests.
    pub p50: Duration,
    /// 99th-percentile latency of the window's requests.
    pub p99: Duration,
    /// Mean latency of the window's requests.
    pub mean_latency: Duration,
    /// CPU seconds all workers used during the window.
    pub worker_cpu: f64,
    /// Seconds the workers were runnable but waited for a CPU during the window (the run
    /// queue: other processes, or more busy workers than CPUs).
    pub worker_cpu_wait: f64,
    /// The master, after the window.
    pub master: ProcessMemory,
    /// Each worker (and any process the server started under them), after the window.
    pub worker_memory: Vec<ProcessMemory>,
    /// [`StepResult::total_pss`] after the warm-up, before the window (0: not measured): how
    /// much the footprint still moved during the window tells how much to leave free.
    pub total_pss_before: u64,
    /// Mean worker USS after the warm-up, before the window: the start of its growth.
    pub worker_uss_before: u64,
    /// Wall time of the whole step (start, warm-up, window, stop), for the time budget.
    pub elapsed: Duration,
}

impl StepResult {
    /// Requests the server can serve at once: workers x threads.
    pub fn slots(&self) -> usize {
        self.workers * self.threads.max(1)
    }

    /// Successful requests per second over the window (0 for an empty window).
    pub fn rps(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// Share of requests that failed, 0 to 1; 1 when nothing was answered at all.
    pub fn error_rate(&self) -> f64 {
        let all = self.requests + self.errors;
        if all == 0 {
            1.0
        } else {
            self.errors as f64 / all as f64
        }
    }

    /// The server's real footprint: the master's PSS plus every worker's.
    pub fn total_pss(&self) -> u64 {
        self.master.pss + self.worker_memory.iter().map(|m| m.pss).sum::<u64>()
    }

    fn mean(&self, field: impl Fn(&ProcessMemory) -> u64) -> u64 {
        let n = self.worker_memory.len() as u64;
        if n == 0 {
            return 0;
        }
        self.worker_memory.iter().map(field).sum::<u64>() / n
    }

    /// What one more worker costs: its private pages.
    pub fn mean_worker_uss(&self) -> u64 {
        self.mean(|m| m.uss)
    }

    /// Mean worker PSS (its private pages plus its share of the shared ones).
    pub fn mean_worker_pss(&self) -> u64 {
        self.mean(|m| m.pss)
    }

    /// CPU seconds a request costs the worker.
    pub fn cpu_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.worker_cpu / self.requests as f64)
    }

    /// Wall seconds a worker slot spends on one request. With more connections than slots every
    /// slot stays busy, so it is slots x window / requests; otherwise no request waits in a
    /// queue and the mean latency is that time.
    pub fn wall_per_request(&self) -> Option<f64> {
        if self.requests == 0 {
            return None;
        }
        if self.connections > self.slots() {
            Some(self.slots() as f64 * self.window.as_secs_f64() / self.requests as f64)
        } else {
            Some(self.mean_latency.as_secs_f64())
        }
    }

    /// The share of a request's time its worker sleeps on I/O: neither on a CPU nor waiting
    /// in the run queue for one.
    pub fn io_share(&self) -> Option<f64> {
        let cpu = self.cpu_per_request()?;
        let queued = self.worker_cpu_wait / self.requests as f64;
        let wall = self.wall_per_request()?;
        (wall > 0.0).then(|| (1.0 - (cpu + queued) / wall).clamp(0.0, 1.0))
    }

    /// The share of a request's time its worker waits for a free CPU.
    pub fn cpu_wait_share(&self) -> Option<f64> {
        let wall = self.wall_per_request()?;
        let queued = self.worker_cpu_wait / self.requests.max(1) as f64;
        (wall > 0.0).then(|| (queued / wall).clamp(0.0, 1.0))
    }

    /// How much a worker's USS grew per 1000 requests it served during the window, in bytes.
    /// USS also shrinks when another process starts mapping the same file pages (libpython);
    /// that counts as no growth.
    pub fn uss_growth_per_1000(&self) -> Option<f64> {
        let per_worker = self.requests as f64 / self.worker_memory.len().max(1) as f64;
        (per_worker >= 1.0 && self.worker_uss_before > 0).then(|| {
            let grown = self.mean_worker_uss() as f64 - self.worker_uss_before as f64;
            grown.max(0.0) * 1000.0 / per_worker
        })
    }

    fn collapsed(&self) -> bool {
        self.error_rate() > MAX_ERROR_RATE
    }
}

/// The sweep's worker counts: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ... (growing steps, so an
/// I/O-bound app that wants dozens gets there in a few steps).
pub fn next_count(n: usize) -> usize {
    if n < 4 {
        n + 1
    } else if n.is_power_of_two() {
        n + n / 2
    } else {
        // 6 -> 8, 12 -> 16, 24 -> 32: the next power of two.
        n.next_power_of_two()
    }
}

/// Connections the load keeps busy for `slots` worker slots: the expected peak when the user
/// stated one, else always more than the slots, so the load is never the bottleneck.
pub fn connections_for(slots: usize, concurrency: Option<usize>) -> usize {
    concurrency.unwrap_or(slots + (slots / 2).max(2))
}

/// Why the sweep stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// Throughput gained less than [`PLATEAU_GAIN`] at this many workers.
    Plateau {
        /// The worker count that gained too little.
        at: usize,
    },
    /// Errors or a throughput cliff at this many workers.
    Collapse {
        /// The worker count that collapsed.
        at: usize,
    },
    /// The next count would not fit the memory budget.
    MemoryBudget,
    /// `--duration` would run out during the next step.
    TimeLimit,
    /// Enough slots for every simultaneous request of `--concurrency`.
    ConcurrencyReached,
    /// The sweep's own cap on workers.
    MaxWorkers,
    /// A step could not run (the server did not start with that many workers).
    Failed {
        /// The worker count that could not run.
        at: usize,
        /// The [`Bench::Error`], as text.
        message: String,
    },
    /// Interrupted (Ctrl-C).
    Interrupted,
}

/// Runs one step of the sweep against a real (or simulated) server.
pub trait Bench {
    /// Why a step could not run; the sweep stops with [`StopReason::Failed`] and this message.
    type Error: std::fmt::Display;
    /// Run one step: start the server as `plan` says, warm it up, measure the window, stop it.
    fn step(&mut self, plan: &StepPlan) -> Result<StepResult, Self::Error>;
    /// Whether the run was interrupted (Ctrl-C): the sweep stops at once.
    fn interrupted(&self) -> bool {
        false
    }
    /// Whether the run's time is up (a step that failed for that is not the app's fault).
    fn out_of_time(&self) -> bool {
        false
    }
}

/// What the sweep may use.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepConfig {
    /// Total PSS (master and workers) allowed, in bytes.
    pub memory_budget: u64,
    /// Effective CPUs (quota and affinity applied).
    pub cpus: f64,
    /// Wall time for all steps, the preload comparison included.
    pub time: Duration,
    /// The most workers the sweep tries ([`StopReason::MaxWorkers`] beyond).
    pub max_workers: usize,
    /// The expected peak of simultaneous requests (`--concurrency`), if stated.
    pub concurrency: Option<usize>,
    /// Threads per worker (see [`StepPlan::threads`]).
    pub threads: usize,
    /// The mode of the sweep (`--preload` given or not).
    pub preload: bool,
    /// Also measure the recommended count in the other mode.
    pub compare_preload: bool,
    /// Load before each step's measurement (see [`StepPlan::warmup`]).
    pub warmup: Duration,
    /// How long each step measures.
    pub window: Duration,
}

/// Everything the sweep measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// In the order run, all in the sweep's preload mode.
    pub steps: Vec<StepResult>,
    /// Why the sweep stopped.
    pub stop: StopReason,
    /// The recommended count in the other preload mode, or why it was not measured.
    pub other_mode: Option<Result<StepResult, String>>,
    /// When memory ended the sweep and `--preload` saves: the sweep went on with it from the
    /// recommended count (that step first).
    pub preload_steps: Vec<StepResult>,
    /// Why the `--preload` continuation stopped, when it ran.
    pub preload_stop: Option<StopReason>,
}

impl Sweep {
    /// The steps in worker order (refinement runs counts out of order).
    pub fn by_workers(&self) -> Vec<&StepResult> {
        let mut steps: Vec<&StepResult> = self.steps.iter().collect();
        steps.sort_by_key(|s| s.workers);
        steps
    }
}

struct Engine<'a, B: Bench> {
    bench: &'a mut B,
    config: &'a SweepConfig,
    /// The mode of the steps being run.
    preload: bool,
    steps: Vec<StepResult>,
    spent: Duration,
}

impl<B: Bench> Engine<'_, B> {
    fn plan(&self, workers: usize, preload: bool) -> StepPlan {
        let slots = workers * self.config.threads.max(1);
        StepPlan {
            workers,
            threads: self.config.threads.max(1),
            preload,
            connections: connections_for(slots, self.config.concurrency),
            warmup: self.config.warmup,
            window: self.config.window,
        }
    }

    /// A step's likely wall time: the last one's, more for more workers to start.
    fn estimate(&self, workers: usize) -> Duration {
        match self.steps.last() {
            Some(last) if last.workers > 0 => {
                // Booting the workers grows with their number, the load window does not.
                let more = (workers as f64 / last.workers as f64).max(1.0);
                last.elapsed.mul_f64(more.sqrt())
            }
            _ => self.config.warmup + self.config.window,
        }
    }

    fn fits_in_time(&self, workers: usize, reserve: Duration) -> bool {
        self.spent + self.estimate(workers) + reserve <= self.config.time
    }

    fn run(&mut self, workers: usize, preload: bool) -> Result<StepResult, String> {
        let plan = self.plan(workers, preload);
        let result = self.bench.step(&plan).map_err(|e| e.to_string())?;
        self.spent += result.elapsed;
        Ok(result)
    }

    /// The step with the most throughput (the fewest workers among equals), among those that
    /// fit the budget and did not collapse.
    fn best(&self) -> Option<&StepResult> {
        self.steps
            .iter()
            .filter(|s| !s.collapsed() && fits_with_headroom(s, self.config.memory_budget))
            .fold(None, |best: Option<&StepResult>, s| match best {
                Some(b) if b.rps() > s.rps() || (b.rps() == s.rps() && b.workers < s.workers) => {
                    Some(b)
                }
                _ => Some(s),
            })
    }

    /// Time kept for the preload comparison at the end, once the sweep has its first few
    /// points (a sweep of one step would tell nothing).
    fn reserve(&self) -> Duration {
        if self.config.compare_preload && self.steps.len() >= MIN_STEPS_BEFORE_RESERVE {
            self.estimate(self.steps.last().map_or(1, |s| s.workers))
        } else {
            Duration::ZERO
        }
    }

    /// The count after `last`, capped by what fits in memory; or why the sweep ends.
    fn next(&self, last: &StepResult) -> Result<usize, StopReason> {
        if !fits_with_headroom(last, self.config.memory_budget) {
            return Err(StopReason::MemoryBudget);
        }
        if self.config.concurrency.is_some_and(|c| last.slots() >= c) {
            return Err(StopReason::ConcurrencyReached);
        }
        if last.workers >= self.config.max_workers {
            return Err(StopReason::MaxWorkers);
        }
        let fit = workers_that_fit(last, usable_budget(last, self.config.memory_budget));
        let mut next = next_count(last.workers);
        if self.scales_linearly() {
            // Far from the knee: skip a step (refinement comes back if it overshoots).
            next = next_count(next);
        }
        let next = next.min(fit).min(self.config.max_workers);
        if next <= last.workers {
            return Err(StopReason::MemoryBudget);
        }
        Ok(next)
    }

    /// Whether the last two steps (from 4 workers up) gained throughput in proportion to the
    /// workers added: the knee is still far.
    fn scales_linearly(&self) -> bool {
        let [.., prev, last] = self.steps.as_slice() else {
            return false;
        };
        let added = last.workers as f64 / prev.workers as f64;
        prev.workers >= 4 && added > 1.0 && last.rps() >= prev.rps() * (1.0 + 0.9 * (added - 1.0))
    }

    /// Judge the step just run against the ones before it: `Some` when it did not gain.
    fn verdict(&self, last: &StepResult) -> Option<StopReason> {
        if last.collapsed() {
            return Some(StopReason::Collapse { at: last.workers });
        }
        let before = self.steps[..self.steps.len() - 1]
            .iter()
            .filter(|s| !s.collapsed())
            .map(StepResult::rps)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        match before {
            Some(best) if last.rps() < best * COLLAPSE_RPS => {
                Some(StopReason::Collapse { at: last.workers })
            }
            Some(best) if last.rps() < best * (1.0 + PLATEAU_GAIN) => {
                Some(StopReason::Plateau { at: last.workers })
            }
            _ => None,
        }
    }

    /// Grow the worker count until a stop condition; the reason it stopped. A step that fails
    /// its requests stops at once; throughput must fail to rise [`PATIENCE`] steps in a row (one
    /// flat step on a busy machine is often noise).
    fn climb(&mut self, first: usize) -> StopReason {
        let mut workers = first;
        let mut misses = 0;
        loop {
            if self.bench.interrupted() {
                return StopReason::Interrupted;
            }
            let result = match self.run(workers, self.preload) {
                Ok(r) => r,
                Err(_) if self.bench.out_of_time() => return StopReason::TimeLimit,
                Err(message) => {
                    return StopReason::Failed {
                        at: workers,
                        message,
                    }
                }
            };
            self.steps.push(result.clone());
            match self.verdict(&result) {
                Some(stop) if result.collapsed() => return stop,
                Some(stop) => {
                    misses += 1;
                    if misses >= PATIENCE {
                        return stop;
                    }
                }
                None => misses = 0,
            }
            workers = match self.next(&result) {
                Ok(n) => n,
                Err(stop) => return stop,
            };
            if !self.fits_in_time(workers, self.reserve()) {
                return StopReason::TimeLimit;
            }
        }
    }

    /// When the count above the best failed or fell, bisect between them while time allows:
    /// the most workers that still work well.
    fn refine_up(&mut self) {
        while !self.bench.interrupted() {
            let Some((lo, best_rps)) = self.best().map(|b| (b.workers, b.rps())) else {
                return;
            };
            let worse = self
                .steps
                .iter()
                .filter(|s| s.workers > lo)
                .min_by_key(|s| s.workers)
                .filter(|s| s.collapsed() || s.rps() < best_rps * (1.0 - NEAR_BEST));
            let Some(hi) = worse.map(|s| s.workers) else {
                return;
            };
            if hi <= lo + 1 || !self.fits_in_time(lo + (hi - lo) / 2, self.reserve()) {
                return;
            }
            match self.run(lo + (hi - lo) / 2, self.preload) {
                Ok(result) => self.steps.push(result),
                Err(_) => return,
            }
        }
    }

    /// Bisect between the most workers measured below [`NEAR_BEST`] of the best throughput and
    /// the fewest measured within it, while time allows: where the knee really is.
    fn refine(&mut self) {
        while !self.bench.interrupted() {
            let Some(best) = self.best().map(StepResult::rps) else {
                return;
            };
            let good = |s: &&StepResult| !s.collapsed() && s.rps() >= best * (1.0 - NEAR_BEST);
            let Some(hi) = self.steps.iter().filter(good).map(|s| s.workers).min() else {
                return;
            };
            let lo = self
                .steps
                .iter()
                .filter(|s| s.workers < hi)
                .map(|s| s.workers)
                .max()
                .unwrap_or(hi);
            if hi <= lo + 1 {
                return;
            }
            let mid = lo + (hi - lo) / 2;
            if !self.fits_in_time(mid, self.reserve()) {
                return;
            }
            match self.run(mid, self.preload) {
                Ok(result) => self.steps.push(result),
                Err(_) => return,
            }
        }
    }

    /// The recommended count in the other preload mode, for the saving.
    fn other_mode(&mut self, recommended: usize) -> Result<StepResult, String> {
        if !self.fits_in_time(recommended, Duration::ZERO) {
            return Err("not measured: no time left within --duration".to_string());
        }
        self.run(recommended, !self.config.preload)
    }
}

/// The most workers whose projected total PSS fits `budget`, from a measured step: each worker
/// more costs what the measured ones cost on average.
pub fn workers_that_fit(step: &StepResult, budget: u64) -> usize {
    let per_worker = step.mean_worker_pss().max(1);
    let used = step.total_pss();
    if used > budget {
        return step.workers.saturating_sub(1);
    }
    step.workers + ((budget - used) / per_worker) as usize
}

/// Sweep the worker count upward (1, 2, 3, 4, 6, 8, ...) until throughput stops rising, the
/// server collapses, memory or time runs out; refine near the knee; then measure the
/// recommended count in the other preload mode if asked. An error only when the very first step
/// fails (the app does not start or answers errors).
pub fn sweep<B: Bench>(bench: &mut B, config: &SweepConfig) -> Result<Sweep, String> {
    let mut engine = Engine {
        bench,
        config,
        preload: config.preload,
        steps: Vec::new(),
        spent: Duration::ZERO,
    };
    let stop = engine.climb(1);
    if engine.steps.is_empty() {
        return Err(match stop {
            StopReason::Failed { message, .. } => message,
            StopReason::TimeLimit => {
                "the time ran out before one worker was measured (raise --duration)".to_string()
            }
            other => format!("nothing was measured ({other:?})"),
        });
    }
    if matches!(
        stop,
        StopReason::Plateau { .. } | StopReason::Collapse { .. }
    ) {
        engine.refine_up();
        engine.refine();
    }
    let other_mode = if config.compare_preload && stop != StopReason::Interrupted {
        let recommended = pick(
            &engine.steps,
            config.memory_budget,
            config.concurrency,
            config.cpus,
        )
        .map_or(1, |s| s.workers);
        Some(engine.other_mode(recommended))
    } else {
        None
    };
    let (preload_steps, preload_stop) = match &other_mode {
        Some(Ok(other))
            if stop == StopReason::MemoryBudget && preload_fits_more(&engine.steps, other) =>
        {
            engine.climb_with_preload(other.clone())
        }
        _ => (Vec::new(), None),
    };
    Ok(Sweep {
        steps: engine.steps,
        stop,
        other_mode,
        preload_steps,
        preload_stop,
    })
}

/// Whether `other`, measured with `--preload`, takes clearly less memory than the same count
/// without: then more workers fit a budget that stopped the sweep.
fn preload_fits_more(steps: &[StepResult], other: &StepResult) -> bool {
    other.preload
        && !other.collapsed()
        && steps
            .iter()
            .find(|s| s.workers == other.workers)
            .is_some_and(|s| (other.total_pss() as f64) < 0.95 * s.total_pss() as f64)
}

impl<B: Bench> Engine<'_, B> {
    /// Go on climbing with `--preload` from its measured step `first`; the steps and the reason
    /// that climb stopped. The sweep's own steps are left as they were.
    fn climb_with_preload(&mut self, first: StepResult) -> (Vec<StepResult>, Option<StopReason>) {
        let own = std::mem::replace(&mut self.steps, vec![first.clone()]);
        self.preload = true;
        let stop = match self.next(&first) {
            Ok(n) if self.fits_in_time(n, Duration::ZERO) => self.climb(n),
            Ok(_) => StopReason::TimeLimit,
            Err(stop) => stop,
        };
        self.preload = self.config.preload;
        (std::mem::replace(&mut self.steps, own), Some(stop))
    }
}

/// Share of the memory budget a recommendation leaves free at least: a worker's PSS moves by a
/// few hundred KiB between runs (pages the master or a sibling touch change who shares them),
/// so a count measured just under the budget can land just over it in production.
pub const BUDGET_HEADROOM: f64 = 0.02;

/// What of `budget` a server measured as `step` may fill: all but its headroom, the larger of
/// [`BUDGET_HEADROOM`] and what its total PSS still grew during the measured window (memory
/// that moves that much in one window will move as much again).
pub fn usable_budget(step: &StepResult, budget: u64) -> u64 {
    budget.saturating_sub(headroom(step, budget))
}

/// The memory a recommendation based on `step` leaves free within `budget`.
pub fn headroom(step: &StepResult, budget: u64) -> u64 {
    let fixed = (budget as f64 * BUDGET_HEADROOM) as u64;
    let drift = match step.total_pss_before {
        0 => 0,
        before => step.total_pss().saturating_sub(before),
    };
    fixed.max(drift)
}

/// Whether a measured step fits `budget` with its [`headroom`] to spare.
pub fn fits_with_headroom(step: &StepResult, budget: u64) -> bool {
    step.total_pss() <= usable_budget(step, budget)
}

/// The fewest workers within [`NEAR_BEST`] of the best throughput, among the steps that fit
/// the budget with their [`headroom`] to spare and did not collapse (and, with `--concurrency`,
/// no more slots than requests).
pub fn pick(
    steps: &[StepResult],
    memory_budget: u64,
    concurrency: Option<usize>,
    cpus: f64,
) -> Option<&StepResult> {
    let eligible: Vec<&StepResult> = steps
        .iter()
        .filter(|s| !s.collapsed() && fits_with_headroom(s, memory_budget))
        .filter(|s| concurrency.is_none_or(|c| s.slots() <= c.max(1)))
        .collect();
    // A "gain" far past what can keep the CPUs busy is the machine's noise, not the app's.
    let cap = useful_slots(steps, cpus).unwrap_or(usize::MAX);
    let credible: Vec<&StepResult> = match eligible.iter().any(|s| s.slots() <= cap) {
        true => eligible.into_iter().filter(|s| s.slots() <= cap).collect(),
        false => eligible,
    };
    let best = credible.iter().map(|s| s.rps()).fold(0.0, f64::max);
    credible
        .into_iter()
        .filter(|s| s.rps() >= best * (1.0 - NEAR_BEST))
        .min_by_key(|s| s.workers)
}

/// The most worker slots that can still add throughput, by Little's law: requests that spend a
/// share `io` of their time off the CPU keep `cpus / (1 - io)` slots' worth of CPUs busy; twice
/// that allows for error in the measured share (its median over the steps). `None` when no
/// step measured it.
pub fn useful_slots(steps: &[StepResult], cpus: f64) -> Option<usize> {
    let mut shares: Vec<f64> = steps.iter().filter_map(StepResult::io_share).collect();
    if shares.is_empty() {
        return None;
    }
    shares.sort_by(f64::total_cmp);
    let io = shares[shares.len() / 2];
    let bound = 2.0 * cpus.max(1.0) / (1.0 - io).max(0.01);
    Some(bound.ceil() as usize)
}

/// `1 worker`, `3 workers`.
pub fn workers_text(n: usize) -> String {
    format!("{n} worker{}", if n == 1 { "" } else { "s" })
}

/// `3 workers` with one thread each, `2 workers × 8 threads` with more: the slots a
/// recommendation or a step runs.
pub fn slots_text(workers: usize, threads: usize) -> String {
    match threads {
        0 | 1 => workers_text(workers),
        n => format!("{} × {n} threads", workers_text(workers)),
    }
}

/// What the machine gives, for the reason sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct AdviceContext {
    /// Effective CPUs (quota and affinity applied).
    pub cpus: f64,
    /// The memory budget (total PSS), in bytes.
    pub memory_budget: u64,
    /// Where the budget came from, e.g. `--memory-budget` or `MemAvailable`.
    pub budget_source: String,
    /// `--concurrency`, if stated.
    pub concurrency: Option<usize>,
}

/// The recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    /// Recommended workers.
    pub workers: usize,
    /// Threads per worker.
    pub threads: usize,
    /// Whether to run with `--preload`.
    pub preload: bool,
    /// One sentence: the count, why throughput says so, and the memory it takes.
    pub reason: String,
    /// Bytes of total PSS `--preload` saves at the recommended count (negative: it costs more),
    /// when both modes were measured.
    pub preload_saving: Option<i64>,
}

/// How a request spends its time, from the 1-worker step (every slot busy, no CPU contention).
pub fn workload_kind(steps: &[StepResult]) -> String {
    let Some(share) = steps
        .iter()
        .filter(|s| s.workers == 1)
        .find_map(StepResult::io_share)
    else {
        return "unknown load".to_string();
    };
    let pct = (share * 100.0).round();
    if share < 0.3 {
        format!("CPU bound, {pct:.0}% waiting")
    } else if share > 0.7 {
        format!("I/O bound, {pct:.0}% waiting")
    } else {
        format!("mixed, {pct:.0}% waiting on I/O")
    }
}

fn cores_text(cpus: f64) -> String {
    if cpus.fract() == 0.0 {
        let n = cpus as u64;
        format!("{n} core{}", if n == 1 { "" } else { "s" })
    } else {
        format!("{cpus:.2} cores")
    }
}

/// Why the throughput side chose `rec`.
fn throughput_reason(sweep: &Sweep, rec: &StepResult, ctx: &AdviceContext) -> String {
    let kind = workload_kind(&sweep.steps);
    let cores = cores_text(ctx.cpus);
    let largest = sweep
        .steps
        .iter()
        .filter(|s| !s.collapsed() && fits_with_headroom(s, ctx.memory_budget))
        .map(|s| s.workers)
        .max()
        .unwrap_or(rec.workers);
    if rec.workers < largest {
        return format!(
            "throughput stops rising at {} ({kind}, {cores})",
            rec.workers
        );
    }
    match &sweep.stop {
        StopReason::MemoryBudget => {
            format!("throughput still rose but the memory budget fits no more ({kind}, {cores})")
        }
        StopReason::TimeLimit | StopReason::Interrupted => format!(
            "throughput still rising at {} when the time ran out ({kind}, {cores}; a longer \
             --duration may find more)",
            rec.workers
        ),
        StopReason::ConcurrencyReached => format!(
            "one slot for each of the {} simultaneous requests of --concurrency ({kind})",
            ctx.concurrency.unwrap_or(rec.slots())
        ),
        StopReason::MaxWorkers => format!("the sweep's cap of {} workers ({kind})", rec.workers),
        StopReason::Failed { at, message } => {
            format!("{at} workers failed to run ({message}); {kind}, {cores}")
        }
        StopReason::Plateau { .. } | StopReason::Collapse { .. } => {
            format!(
                "throughput stops rising at {} ({kind}, {cores})",
                rec.workers
            )
        }
    }
}

/// When the sweep went on with `--preload` (memory-bound) and that found clearly more
/// throughput within the budget: that recommendation.
fn preload_advice(
    sweep: &Sweep,
    rec: &StepResult,
    ctx: &AdviceContext,
    budget: &str,
) -> Option<Advice> {
    let pre = pick(
        &sweep.preload_steps,
        ctx.memory_budget,
        ctx.concurrency,
        ctx.cpus,
    )?;
    if pre.rps() < rec.rps() * (1.0 + PLATEAU_GAIN) {
        return None;
    }
    let reason = format!(
        "{} with --preload: sharing the app's pages, {} fit the {budget} where {} fit without \
         ({:.0} vs {:.0} req/s, {}); {} x {} ({} PSS with the master)",
        slots_text(pre.workers, pre.threads),
        pre.workers,
        rec.workers,
        pre.rps(),
        rec.rps(),
        workload_kind(&sweep.steps),
        pre.workers,
        human_bytes(pre.mean_worker_pss()),
        human_bytes(pre.total_pss()),
    );
    let preload_saving = match &sweep.other_mode {
        Some(Ok(other)) => Some(rec.total_pss() as i64 - other.total_pss() as i64),
        _ => None,
    };
    Some(Advice {
        workers: pre.workers,
        threads: pre.threads.max(1),
        preload: true,
        reason,
        preload_saving,
    })
}

/// Switch preload modes only for a clear saving (5% of the footprint) at no throughput cost.
fn worth_switching(rec: &StepResult, other: &StepResult, memory_budget: u64) -> bool {
    (other.total_pss() as f64) < 0.95 * rec.total_pss() as f64
        && other.rps() >= rec.rps() * (1.0 - 2.0 * NEAR_BEST)
        && fits_with_headroom(other, memory_budget)
}

/// No step fits the budget or works: 1 worker, and why that is not enough.
fn nothing_fits(sweep: &Sweep, budget: &str, preload: bool) -> Advice {
    let first = sweep.steps.iter().min_by_key(|s| s.workers);
    let reason = match first {
        Some(s) if s.collapsed() => format!(
            "1 worker, though even 1 fails {:.0}% of requests: fix the app first",
            s.error_rate() * 100.0
        ),
        Some(s) => format!(
            "1 worker, though even 1 does not fit: it takes {} with the master, over the {budget}",
            human_bytes(s.total_pss())
        ),
        None => "1 worker: nothing could be measured".to_string(),
    };
    Advice {
        workers: 1,
        // The threads every step ran: the app was measured with them.
        threads: first.map_or(1, |s| s.threads.max(1)),
        preload,
        reason,
        preload_saving: None,
    }
}

/// The recommendation and its reason from a finished sweep.
pub fn advise(sweep: &Sweep, ctx: &AdviceContext, preload: bool) -> Advice {
    let budget = format!(
        "{} budget ({})",
        human_bytes(ctx.memory_budget),
        ctx.budget_source
    );
    let Some(rec) = pick(&sweep.steps, ctx.memory_budget, ctx.concurrency, ctx.cpus) else {
        return nothing_fits(sweep, &budget, preload);
    };
    if let Some(advice) = preload_advice(sweep, rec, ctx, &budget) {
        return advice;
    }
    let why = throughput_reason(sweep, rec, ctx);
    let other = match &sweep.other_mode {
        Some(Ok(other)) if !other.collapsed() && other.workers == rec.workers => Some(other),
        _ => None,
    };
    let switch = other.is_some_and(|o| worth_switching(rec, o, ctx.memory_budget));
    let chosen = match other {
        Some(o) if switch => o,
        _ => rec,
    };
    let memory = format!(
        "{} x {} fits the {budget} ({} PSS with the master)",
        chosen.workers,
        human_bytes(chosen.mean_worker_pss()),
        human_bytes(chosen.total_pss())
    );
    let preload_saving = other.map(|o| {
        let (with, without) = if preload { (rec, o) } else { (o, rec) };
        without.total_pss() as i64 - with.total_pss() as i64
    });
    let preload = preload != switch;
    let mode = if switch {
        if preload {
            ", with --preload"
        } else {
            ", without --preload"
        }
    } else {
        ""
    };
    Advice {
        workers: rec.workers,
        threads: rec.threads.max(1),
        preload,
        reason: format!(
            "{}{mode}: {why}; {memory}",
            slots_text(rec.workers, rec.threads)
        ),
        preload_saving,
    }
}
