//! What `ferrocorn sizing` prints: the table and summary for people, the JSON for scripts.

use std::time::Duration;

use ferrocorn_sizing::advisor::{self, Advice, StepResult, Sweep};
use ferrocorn_sizing::human_bytes;
use serde_json::{json, Value};

use super::load::Target;
use super::{load_text, AdvisorArgs, Budget, MAX_WORKERS, MIB};

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / MIB * 10.0).round() / 10.0
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn step_json(s: &StepResult) -> Value {
    json!({
        "workers": s.workers,
        "threads": s.threads,
        "preload": s.preload,
        "connections": s.connections,
        "requests": s.requests,
        "errors": s.errors,
        "rps": (s.rps() * 10.0).round() / 10.0,
        "p50_ms": ms(s.p50),
        "p99_ms": ms(s.p99),
        "cpu_ms_per_request": s.cpu_per_request().map(|c| (c * 1e4).round() / 10.0),
        "wall_ms_per_request": s.wall_per_request().map(|w| (w * 1e4).round() / 10.0),
        "io_wait_share": s.io_share().map(|x| (x * 100.0).round() / 100.0),
        "cpu_wait_share": s.cpu_wait_share().map(|x| (x * 100.0).round() / 100.0),
        "master_pss_mib": mib(s.master.pss),
        "worker_uss_mib": mib(s.mean_worker_uss()),
        "worker_pss_mib": mib(s.mean_worker_pss()),
        "total_pss_mib": mib(s.total_pss()),
        "worker_uss_growth_kib_per_1000_requests": s.uss_growth_per_1000().map(|g| (g / 1024.0).round()),
    })
}

pub(super) fn stop_text(stop: &advisor::StopReason) -> String {
    use advisor::StopReason::*;
    match stop {
        Plateau { at } => format!("throughput stopped rising at {at} workers"),
        Collapse { at } => format!("errors or falling throughput at {at} workers"),
        MemoryBudget => "the memory budget fits no more workers".to_string(),
        TimeLimit => "the --duration ran out".to_string(),
        ConcurrencyReached => "every --concurrency request has a worker".to_string(),
        MaxWorkers => format!("the sweep's cap of {MAX_WORKERS} workers"),
        Failed { at, message } => format!("{at} workers failed: {message}"),
        Interrupted => "interrupted".to_string(),
    }
}

pub(super) fn json_report(
    sweep: &Sweep,
    advice: &Advice,
    budget: &Budget,
    advisor: &AdvisorArgs,
    targets: &[Target],
    command: &str,
) -> Value {
    let other = match &sweep.other_mode {
        Some(Ok(step)) => json!({"measured": true, "step": step_json(step)}),
        Some(Err(e)) => json!({"measured": false, "why": e}),
        None => json!({"measured": false, "why": "not tried"}),
    };
    json!({
        "recommended": {
            "workers": advice.workers,
            "threads": advice.threads,
            "preload": advice.preload,
            "reason": advice.reason,
            "command": command,
        },
        "budget": {
            "cpus": budget.cpu.cpus,
            "cpu_source": budget.cpu.to_string(),
            "affinity_cpus": budget.cpu.affinity,
            "cpu_quota": budget.cpu.quota,
            "memory_limit_bytes": budget.memory.limit,
            "memory_limit_source": budget.memory.to_string(),
            "mem_available_bytes": budget.memory.mem_available,
            "memory_budget_flag_bytes": budget.flag,
            "memory_budget_bytes": budget.effective,
            "memory_budget_mib": mib(budget.effective),
            "memory_budget_source": budget.source,
        },
        "load": {
            "assumed": load_text(advisor.concurrency),
            "concurrency": advisor.concurrency,
            "urls": targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "workload": advisor::workload_kind(&sweep.steps),
        "stop": stop_text(&sweep.stop),
        "sweep": sweep.by_workers().into_iter().map(step_json).collect::<Vec<_>>(),
        "preload_sweep": sweep.preload_steps.iter().map(step_json).collect::<Vec<_>>(),
        "preload_stop": sweep.preload_stop.as_ref().map(stop_text),
        "preload": {
            "saving_mib": advice.preload_saving.map(|s| (s as f64 / MIB * 10.0).round() / 10.0),
            "workers_that_would_fit": preload_fit(sweep, budget.effective),
            "other_mode": other,
        },
    })
}

/// The table's first column: the workers, and their threads when a worker runs more than one.
fn slots_cell(s: &StepResult) -> String {
    match s.threads {
        0 | 1 => s.workers.to_string(),
        n => format!("{} × {n}", s.workers),
    }
}

fn print_table(sweep: &Sweep, recommended: usize) {
    let threaded = sweep.steps.iter().any(|s| s.threads > 1);
    let (header, width) = match threaded {
        true => ("workers × threads", 17),
        false => ("workers", 8),
    };
    println!(
        "{:>width$} {:>6} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6} {:>10} {:>10}",
        header,
        "conns",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU ms",
        "I/O",
        "queued",
        "worker USS",
        "total PSS"
    );
    let mut rows = sweep.by_workers();
    rows.extend(sweep.preload_steps.iter().skip(1));
    for s in rows {
        let mark = match (s.workers == recommended, s.preload) {
            (true, _) => " <-",
            (false, true) => " (preload)",
            _ => "",
        };
        println!(
            "{:>width$} {:>6} {:>9.1} {:>8.1} {:>8.1} {:>8.2} {:>5.0}% {:>5.0}% {:>10} {:>10}{mark}",
            slots_cell(s),
            s.connections,
            s.rps(),
            ms(s.p50),
            ms(s.p99),
            s.cpu_per_request().unwrap_or(0.0) * 1e3,
            s.io_share().unwrap_or(0.0) * 100.0,
            s.cpu_wait_share().unwrap_or(0.0) * 100.0,
            human_bytes(s.mean_worker_uss()),
            human_bytes(s.total_pss()),
        );
    }
}

fn memory_text(sweep: &Sweep) -> Option<String> {
    let first = sweep.steps.iter().find(|s| s.workers == 1)?;
    let growth = first
        .uss_growth_per_1000()
        .map(|g| {
            format!(
                ", growing {} per 1000 requests",
                human_bytes(g.max(0.0) as u64)
            )
        })
        .unwrap_or_default();
    Some(format!(
        "master {} PSS; a worker {} USS / {} PSS after warm-up{growth}",
        human_bytes(first.master.pss),
        human_bytes(first.mean_worker_uss()),
        human_bytes(first.mean_worker_pss()),
    ))
}

fn preload_text(sweep: &Sweep, advice: &Advice, budget: u64) -> String {
    let fit = match (
        sweep.preload_steps.iter().map(|s| s.workers).max(),
        &sweep.preload_stop,
    ) {
        (Some(most), Some(stop)) => format!(
            "; the sweep went on with it up to {most} workers ({})",
            stop_text(stop)
        ),
        _ => preload_fit(sweep, budget)
            .map(|n| format!("; with it about {n} workers fit the budget (not measured)"))
            .unwrap_or_default(),
    };
    let text = match (&sweep.other_mode, advice.preload_saving) {
        (Some(Ok(step)), Some(saving)) => format!(
            "--preload saves {} at {} workers ({})",
            if saving >= 0 {
                human_bytes(saving as u64)
            } else {
                format!("-{}", human_bytes(saving.unsigned_abs()))
            },
            step.workers,
            if saving >= 0 {
                "shared pages"
            } else {
                "it costs more here"
            }
        ),
        (Some(Ok(step)), None) => format!("the other mode failed at {} workers", step.workers),
        (Some(Err(e)), _) => format!("not compared: {e}"),
        (None, _) => "not compared".to_string(),
    };
    text + &fit
}

/// When memory ended the sweep and `--preload` was measured to save, how many workers would
/// fit with it (projected from its measured step).
pub(super) fn preload_fit(sweep: &Sweep, budget: u64) -> Option<usize> {
    let Some(Ok(other)) = &sweep.other_mode else {
        return None;
    };
    let saves = sweep
        .steps
        .iter()
        .find(|s| s.workers == other.workers)
        .is_some_and(|s| other.preload && other.total_pss() < s.total_pss());
    (sweep.stop == advisor::StopReason::MemoryBudget && saves)
        .then(|| advisor::workers_that_fit(other, budget))
}

pub(super) fn print_report(
    sweep: &Sweep,
    advice: &Advice,
    budget: &Budget,
    advisor: &AdvisorArgs,
    command: &str,
) {
    print_table(sweep, advice.workers);
    println!();
    println!(
        "Budget:      {}; memory {} ({}), limit {}{}",
        budget.cpu,
        human_bytes(budget.effective),
        budget.source,
        budget.memory,
        budget
            .memory
            .mem_available
            .map(|a| format!(", {} available", human_bytes(a)))
            .unwrap_or_default()
    );
    println!("Load:        {}", load_text(advisor.concurrency));
    println!("Workload:    {}", advisor::workload_kind(&sweep.steps));
    if let Some(memory) = memory_text(sweep) {
        println!("Memory:      {memory}");
    }
    println!(
        "Preload:     {}",
        preload_text(sweep, advice, budget.effective)
    );
    println!("Stopped:     {}", stop_text(&sweep.stop));
    println!();
    let slots = match advice.threads {
        0 | 1 => format!("{} x 1 thread", advisor::workers_text(advice.workers)),
        n => advisor::slots_text(advice.workers, n),
    };
    println!(
        "Recommended: {slots}{}",
        if advice.preload { ", --preload" } else { "" }
    );
    println!("Why:         {}", advice.reason);
    println!("Command:     {command}");
}
