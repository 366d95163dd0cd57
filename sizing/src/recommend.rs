//! The worker-count heuristic.

use crate::{human_bytes, CpuBudget, MemoryBudget, ProcessMemory};

/// Share of the memory room kept free (page cache, request spikes, worker growth).
pub const DEFAULT_HEADROOM: f64 = 0.2;

/// How many workers to run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommendation {
    /// The count to run: `cpu_workers`, capped by `memory_workers`.
    pub workers: usize,
    /// gunicorn's rule: `2 * cores + 1`.
    pub cpu_workers: usize,
    /// Workers that fit in memory beside the master; `None` when no worker was measured.
    pub memory_workers: Option<usize>,
    /// One sentence explaining the numbers, for logs.
    pub reason: String,
}

/// [`recommend_with_headroom`] with [`DEFAULT_HEADROOM`].
pub fn recommend(
    cpu: &CpuBudget,
    memory: &MemoryBudget,
    master: &ProcessMemory,
    per_worker: Option<&ProcessMemory>,
) -> Recommendation {
    recommend_with_headroom(cpu, memory, master, per_worker, DEFAULT_HEADROOM)
}

/// gunicorn's `2 * cores + 1`, capped by the workers that fit in memory.
///
/// A forked worker shares the master's pages until it writes them, so the master costs its RSS
/// once and each worker costs its USS (private pages; measure a worker that has served traffic,
/// since copy-on-write makes it grow). The room is [`MemoryBudget::room`] after the master,
/// less `headroom` (a fraction, clamped to 0..0.9). Always at least one worker.
pub fn recommend_with_headroom(
    cpu: &CpuBudget,
    memory: &MemoryBudget,
    master: &ProcessMemory,
    per_worker: Option<&ProcessMemory>,
    headroom: f64,
) -> Recommendation {
    let cores = cpu.cores();
    let cpu_workers = 2 * cores + 1;
    let cpu_part = format!("2 x {cores} cores + 1 = {cpu_workers} for {cpu}");
    let Some(worker) = per_worker.filter(|w| w.uss > 0) else {
        return Recommendation {
            workers: cpu_workers,
            cpu_workers,
            memory_workers: None,
            reason: format!(
                "{cpu_workers} workers: {cpu_part}; worker memory not measured, so no memory cap"
            ),
        };
    };
    let headroom = clamp_headroom(headroom);
    let room = (memory.room(master.rss) as f64 * (1.0 - headroom)) as u64;
    let fit = (room / worker.uss) as usize;
    let memory_part = memory_reason(memory, master, worker, room, headroom);
    let (workers, reason) = capped_by_memory(cpu_workers, fit, &cpu_part, &memory_part);
    Recommendation {
        workers,
        cpu_workers,
        memory_workers: Some(fit),
        reason,
    }
}

/// The headroom fraction kept within 0..0.9; [`DEFAULT_HEADROOM`] if it is not a number.
fn clamp_headroom(headroom: f64) -> f64 {
    if headroom.is_finite() {
        headroom.clamp(0.0, 0.9)
    } else {
        DEFAULT_HEADROOM
    }
}

/// The memory half of the reason: the room for workers and how it was worked out.
fn memory_reason(
    memory: &MemoryBudget,
    master: &ProcessMemory,
    worker: &ProcessMemory,
    room: u64,
    headroom: f64,
) -> String {
    let available = memory
        .mem_available
        .map(|a| format!(", {} available", human_bytes(a)))
        .unwrap_or_default();
    format!(
        "{} for workers = min({memory} - master {} RSS{available}) - {:.0}% headroom, at {} USS per worker",
        human_bytes(room),
        human_bytes(master.rss),
        headroom * 100.0,
        human_bytes(worker.uss),
    )
}

/// The worker count (`cpu_workers` capped by the `fit` in memory, at least one) and its reason.
fn capped_by_memory(
    cpu_workers: usize,
    fit: usize,
    cpu_part: &str,
    memory_part: &str,
) -> (usize, String) {
    if fit >= cpu_workers {
        (
            cpu_workers,
            format!("{cpu_workers} workers: {cpu_part}; memory fits {fit}: {memory_part}"),
        )
    } else if fit >= 1 {
        (
            fit,
            format!(
                "{fit} workers, capped by memory: {cpu_part}, but only {fit} fit: {memory_part}"
            ),
        )
    } else {
        (
            1,
            format!(
                "1 worker, though memory fits none: {memory_part}; expect swapping or the OOM killer \
                 (raise the memory limit or shrink the app)"
            ),
        )
    }
}

/// Measure this machine and the running processes, then [`recommend`]: `master` is the master's
/// pid, `worker` one worker's pid (if one runs yet).
pub fn recommend_now(master: i32, worker: Option<i32>) -> Result<Recommendation, crate::Error> {
    let cpu = crate::cpu_budget()?;
    let memory = crate::memory_budget()?;
    let master = crate::process_memory(master)?;
    let worker = worker.map(crate::process_memory).transpose()?;
    Ok(recommend(&cpu, &memory, &master, worker.as_ref()))
}
