//! The arbiter's side of [`crate::scaling`]: each tick, gather what the policies need (scoreboard
//! slots, the accept queue, memory readings through [`Hooks`]) and apply what they decide.

use std::time::{Duration, Instant};

use log::{info, warn};
use nix::unistd::Pid;

use super::{Arbiter, ArbiterConfig, SCALING_TICK, TICK};
use crate::hooks::Hooks;
use crate::scaling::{
    all_threads_busy, auto_count, recycle, warmed_count, Autoscale, Autoscaler, Headroom,
    MemoryFigures, Recycle, ScaleDecision, WorkerSizing, WorkerView,
};
use crate::SlotState;

/// How often workers' memory is read (smaps_rollup walks their page tables).
const MEMORY_EVERY: Duration = Duration::from_secs(1);
/// How long a worker being replaced waits for its replacement to boot before it is retired anyway.
const REPLACEMENT_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(super) struct State {
    autoscaler: Autoscaler,
    auto: AutoPhase,
    /// Already said why the autoscaler cannot grow (until the pressure ends or it grows).
    capped: bool,
    memory_read_at: Option<Instant>,
    master_memory: Option<MemoryFigures>,
    /// Recycled while the server was over its budget: its replacement is forked once it is gone.
    freeing: Option<Pid>,
}

/// Where `--workers auto` stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum AutoPhase {
    /// One worker runs; its USS after boot sets the count.
    #[default]
    Probing,
    /// The count is set; re-checked once every worker has served (since `.0`, if so).
    Warming(Option<Instant>),
    Settled,
}

/// Workers to fork at start: `-w N`, one to measure for `auto`, `--workers-min` when scaling.
pub(super) fn initial_target(config: &ArbiterConfig) -> usize {
    match &config.sizing {
        WorkerSizing::Fixed => config.workers,
        WorkerSizing::Auto(_) => 1,
        WorkerSizing::Scale(bounds) => bounds.min,
    }
}

impl<H: Hooks> Arbiter<H> {
    pub(super) fn tick(&self) -> Duration {
        match self.config.sizing {
            WorkerSizing::Scale(_) => SCALING_TICK,
            _ => TICK,
        }
    }

    fn bounds(&self) -> Option<Autoscale> {
        match self.config.sizing {
            WorkerSizing::Scale(bounds) => Some(bounds),
            _ => None,
        }
    }

    /// TTIN: one more worker, within `--workers-max` when scaling.
    pub(super) fn increment_workers(&mut self) {
        let max = self.bounds().map_or(super::MAX_SLOTS, |b| b.max);
        if self.target >= max {
            warn!("Already at the maximum of {max} workers");
            return;
        }
        self.target += 1;
        self.hooks.worker_count_changed(self.target);
    }

    /// TTOU: one fewer, never below `--workers-min` (or one, as gunicorn).
    pub(super) fn decrement_workers(&mut self) {
        let min = self.bounds().map_or(1, |b| b.min.max(1));
        if self.target <= min {
            warn!("Already at the minimum of {min} workers");
            return;
        }
        self.target -= 1;
        self.hooks.worker_count_changed(self.target);
    }

    /// Everything autoscaling, `--workers auto` and recycling do in one tick.
    pub(super) fn adjust_workers(&mut self) {
        self.replace_freed();
        self.observe_activity();
        self.read_memory();
        self.size_auto();
        self.autoscale();
        self.recycle_workers();
        self.finish_replacements();
    }

    /// Note which workers served since the last tick (the scoreboard counts requests; a request
    /// shorter than a tick shows as a new count).
    fn observe_activity(&mut self) {
        let now = Instant::now();
        for info in self.workers.values_mut() {
            let snap = self.table.snapshot(info.slot);
            if snap.state == SlotState::Busy || snap.served != info.last_served {
                info.last_active = now;
                info.last_served = snap.served;
            }
        }
    }

    fn needs_memory(&self) -> bool {
        self.config.memory.reads_memory()
            || matches!(self.config.sizing, WorkerSizing::Auto(_))
                && self.adjust.auto != AutoPhase::Settled
    }

    fn read_memory(&mut self) {
        let due = self
            .adjust
            .memory_read_at
            .is_none_or(|at| at.elapsed() >= MEMORY_EVERY);
        if self.needs_memory() && due {
            self.refresh_memory();
        }
    }

    fn refresh_memory(&mut self) {
        for (pid, info) in &mut self.workers {
            if !info.retiring {
                info.memory = self.hooks.process_memory(pid.as_raw());
            }
        }
        self.adjust.master_memory = self.hooks.process_memory(self.pid);
        self.adjust.memory_read_at = Some(Instant::now());
    }

    /// The active workers, as the policies see them.
    fn views(&self) -> Vec<WorkerView> {
        let now = Instant::now();
        self.workers
            .iter()
            .filter(|(_, w)| w.is_active())
            .map(|(pid, w)| {
                let snap = self.table.snapshot(w.slot);
                WorkerView {
                    pid: pid.as_raw(),
                    state: snap.state,
                    threads: snap.lanes.len(),
                    busy_threads: snap.busy_lanes(),
                    waiting: snap.waiting,
                    idle_for: now.saturating_duration_since(w.last_active),
                    lifetime: now.saturating_duration_since(w.forked_at),
                    served: snap.served,
                    memory: w.memory,
                }
            })
            .collect()
    }

    fn master_rss(&self) -> u64 {
        self.adjust.master_memory.map_or(0, |m| m.rss)
    }

    /// `--workers auto`: set the count from the first booted worker, then re-check it once
    /// every worker has served.
    fn size_auto(&mut self) {
        let WorkerSizing::Auto(auto) = &self.config.sizing else {
            return;
        };
        let Some(budget) = self.config.memory.budget.clone() else {
            return;
        };
        match self.adjust.auto {
            AutoPhase::Probing => {
                let views = self.views();
                let Some(first) = views.iter().find(|w| w.state != SlotState::Booting) else {
                    return;
                };
                // Read now: the periodic reading may predate its boot.
                let uss = self.hooks.process_memory(first.pid).map(|m| m.uss);
                let master = self.hooks.process_memory(self.pid);
                self.adjust.master_memory = master.or(self.adjust.master_memory);
                let (count, reason) = auto_count(auto, &budget, self.master_rss(), uss);
                info!("Workers: {count} (--workers auto): {reason}");
                self.set_target(count);
                self.adjust.auto = AutoPhase::Warming(None);
            }
            AutoPhase::Warming(since) => self.recheck_auto(since, &budget),
            AutoPhase::Settled => {}
        }
    }

    fn recheck_auto(&mut self, since: Option<Instant>, budget: &crate::scaling::MemoryBudget) {
        let views = self.views();
        let all_served = views.len() == self.target && views.iter().all(|w| w.served > 0);
        let Some(since) = since else {
            if all_served {
                self.adjust.auto = AutoPhase::Warming(Some(Instant::now()));
            }
            return;
        };
        // Wait for a memory reading taken after they had all served.
        if self.adjust.memory_read_at.is_none_or(|at| at <= since) {
            return;
        }
        self.adjust.auto = AutoPhase::Settled;
        if let Some((count, reason)) = warmed_count(self.target, budget, self.master_rss(), &views)
        {
            info!(
                "Workers: {} -> {count} (--workers auto): {reason}; retiring {} gracefully",
                self.target,
                self.target - count
            );
            self.set_target(count);
        } else {
            info!(
                "Workers: {} (--workers auto) still fit once warmed",
                self.target
            );
        }
    }

    fn set_target(&mut self, target: usize) {
        let target = target.clamp(1, super::MAX_SLOTS);
        if target != self.target {
            self.target = target;
            self.hooks.worker_count_changed(target);
        }
    }

    /// `--workers-min/--workers-max`: one step at a time, each logged with its reason.
    fn autoscale(&mut self) {
        let Some(bounds) = self.bounds() else {
            return;
        };
        let mut views = self.views();
        let saturated = all_threads_busy(&views);
        if saturated && self.config.memory.budget.is_some() {
            // About to grow, perhaps: judge on what the workers hold now, not a second ago
            // (a worker that just started serving may have grown since).
            self.refresh_memory();
            views = self.views();
        }
        let headroom = Headroom::measure(
            self.config.memory.budget.as_ref(),
            self.adjust.master_memory,
            &views,
        );
        let queue = self.hooks.accept_queue();
        let decision = self.adjust.autoscaler.decide(
            &bounds,
            &views,
            queue,
            headroom.as_ref(),
            Instant::now(),
        );
        match decision {
            ScaleDecision::Hold => self.adjust.capped = false,
            ScaleDecision::Capped(reason) => {
                if !self.adjust.capped {
                    warn!("Not scaling up: {reason}");
                    self.adjust.capped = true;
                }
            }
            ScaleDecision::Grow(reason) => {
                self.adjust.capped = false;
                info!("Scaling up to {} workers: {reason}", self.target + 1);
                self.set_target(self.target + 1);
            }
            ScaleDecision::Shrink { pid, reason } => {
                info!(
                    "Scaling down to {} workers: retiring worker (pid:{pid}), {reason}",
                    self.target - 1
                );
                self.set_target(self.target - 1);
                self.retire(Pid::from_raw(pid));
            }
        }
    }

    /// Replace one worker for its memory or age, when the others are all up.
    fn recycle_workers(&mut self) {
        let settled = self.active_count() == self.target
            && self.adjust.freeing.is_none()
            && self.workers.values().all(|w| w.replaced_by.is_none())
            && self.workers.values().all(|w| self.table.booted(w.slot));
        if !settled {
            return;
        }
        let Some(Recycle {
            pid,
            replacement_first,
            reason,
        }) = recycle(
            &self.config.memory,
            &self.views(),
            self.adjust.master_memory,
        )
        else {
            return;
        };
        let pid = Pid::from_raw(pid);
        if replacement_first {
            info!("Replacing worker (pid:{pid}): {reason}; its replacement boots first");
            let next_age = self.next_age;
            if let Some(info) = self.workers.get_mut(&pid) {
                info.replaced_by = Some((next_age, Instant::now()));
            }
        } else {
            info!("Recycling worker (pid:{pid}) before forking its replacement: {reason}");
            // One fewer until it has exited and given its memory back.
            self.target -= 1;
            self.adjust.freeing = Some(pid);
            self.retire(pid);
        }
    }

    /// The worker recycled to free memory is gone: fork its replacement.
    fn replace_freed(&mut self) {
        if let Some(pid) = self.adjust.freeing {
            if !self.workers.contains_key(&pid) {
                self.adjust.freeing = None;
                self.target += 1;
            }
        }
    }

    /// Retire each worker being replaced once its replacement has booted.
    fn finish_replacements(&mut self) {
        let replaced: Vec<(Pid, u64, Instant)> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring)
            .filter_map(|(pid, w)| w.replaced_by.map(|(age, since)| (*pid, age, since)))
            .collect();
        for (old, age, since) in replaced {
            let booted = self
                .workers
                .iter()
                .find(|(_, w)| w.age >= age && w.is_active() && self.table.booted(w.slot));
            if let Some((new, _)) = booted {
                info!("Worker (pid:{new}) booted; retiring worker (pid:{old}) it replaces");
                self.retire(old);
            } else if since.elapsed() > REPLACEMENT_PATIENCE {
                warn!(
                    "No replacement booted within {}s; retiring worker (pid:{old}) anyway",
                    REPLACEMENT_PATIENCE.as_secs()
                );
                self.retire(old);
            }
        }
    }
}
