//! The machine's side of `--workers auto`, autoscaling and memory recycling: CPU and memory
//! budgets from cgroups and /proc (ferrocorn-sizing), turned into the arbiter's policies.

use ferrocorn_arbiter::scaling::{
    AutoWorkers, Autoscale, MemoryBudget, MemoryFigures, MemoryPolicy, WorkerSizing,
};
use log::warn;

use crate::{Settings, WorkerMode};

pub(crate) fn worker_sizing(settings: &Settings) -> WorkerSizing {
    match settings.worker_mode {
        WorkerMode::Fixed => WorkerSizing::Fixed,
        WorkerMode::Auto => WorkerSizing::Auto(auto_workers()),
        WorkerMode::Scale { min, max } => WorkerSizing::Scale(Autoscale {
            min,
            max,
            scale_down_after: settings.scale_down_after,
        }),
    }
}

/// gunicorn's `2 x cores + 1` over the CPUs our cgroup quota and affinity allow.
fn auto_workers() -> AutoWorkers {
    match ferrocorn_sizing::cpu_budget() {
        Ok(cpu) => AutoWorkers {
            cpu_workers: 2 * cpu.cores() + 1,
            cpu: cpu.to_string(),
        },
        Err(e) => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            warn!("cannot read the CPU budget ({e}); using {cpus} available CPUs");
            AutoWorkers {
                cpu_workers: 2 * cpus + 1,
                cpu: format!("{cpus} CPUs (available parallelism)"),
            }
        }
    }
}

pub(crate) fn memory_policy(settings: &Settings) -> MemoryPolicy {
    MemoryPolicy {
        budget: memory_budget(settings),
        max_worker_memory: settings.max_worker_memory,
        min_worker_lifetime: settings.min_worker_lifetime,
        max_worker_lifetime: settings.max_worker_lifetime,
        max_worker_lifetime_jitter: settings.max_worker_lifetime_jitter,
    }
}

/// `--memory-budget`, else (only when sizing or scaling: `-w N` keeps gunicorn's behaviour) the
/// cgroup limit, else RAM.
fn memory_budget(settings: &Settings) -> Option<MemoryBudget> {
    if let Some(bytes) = settings.memory_budget {
        return Some(MemoryBudget {
            bytes,
            source: "--memory-budget".to_string(),
        });
    }
    if settings.worker_mode == WorkerMode::Fixed {
        return None;
    }
    match ferrocorn_sizing::memory_budget() {
        Ok(budget) => Some(MemoryBudget {
            bytes: budget.limit,
            source: match &budget.cgroup_file {
                Some(file) => format!("cgroup limit in {}", file.display()),
                None => "MemTotal".to_string(),
            },
        }),
        Err(e) => {
            warn!("cannot read the memory budget ({e}); workers are not capped by memory");
            None
        }
    }
}

/// One process's memory from /proc, for the arbiter.
pub(crate) fn process_memory(pid: i32) -> Option<MemoryFigures> {
    let m = ferrocorn_sizing::process_memory(pid).ok()?;
    Some(MemoryFigures {
        uss: m.uss,
        pss: m.pss,
        rss: m.rss,
    })
}
