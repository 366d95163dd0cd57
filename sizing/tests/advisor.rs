//! The sweep engine and the recommendation on simulated servers: no Python, no processes.

use std::time::Duration;

use ferrocorn_sizing::advisor::*;
use ferrocorn_sizing::ProcessMemory;

const MIB: u64 = 1024 * 1024;

/// A simulated app: throughput as a function of the worker count, fixed memory per worker.
struct Model {
    rps: Box<dyn Fn(usize) -> f64>,
    /// CPU and wall seconds one request takes in a worker.
    cpu_per_request: f64,
    wall_per_request: f64,
    worker_pss: u64,
    /// A worker's PSS with --preload (shared pages split).
    preload_worker_pss: u64,
    master_pss: u64,
    /// From this count on, half the requests fail.
    fails_from: Option<usize>,
    /// Steps that cannot start at all.
    broken: bool,
    step_time: Duration,
    plans: Vec<StepPlan>,
}

impl Model {
    fn new(rps: impl Fn(usize) -> f64 + 'static) -> Model {
        Model {
            rps: Box::new(rps),
            cpu_per_request: 0.010,
            wall_per_request: 0.010,
            worker_pss: 10 * MIB,
            preload_worker_pss: 10 * MIB,
            master_pss: 5 * MIB,
            fails_from: None,
            broken: false,
            step_time: Duration::from_millis(500),
            plans: Vec::new(),
        }
    }

    /// Requests of `cpu` seconds of CPU that wait `io` seconds, on `cores` CPUs.
    fn bound(cores: f64, cpu: f64, io: f64) -> Model {
        Model {
            cpu_per_request: cpu,
            wall_per_request: cpu + io,
            ..Model::new(move |n| (n as f64 / (cpu + io)).min(cores / cpu))
        }
    }

    fn counts(&self) -> Vec<usize> {
        self.plans.iter().map(|p| p.workers).collect()
    }
}

impl Bench for Model {
    type Error = String;

    fn step(&mut self, plan: &StepPlan) -> Result<StepResult, String> {
        self.plans.push(plan.clone());
        if self.broken {
            return Err("app failed to load".to_string());
        }
        let window = plan.window;
        let requests = ((self.rps)(plan.workers) * window.as_secs_f64()) as u64;
        let errors = match self.fails_from {
            Some(n) if plan.workers >= n => requests,
            _ => 0,
        };
        let pss = if plan.preload {
            self.preload_worker_pss
        } else {
            self.worker_pss
        };
        let worker = ProcessMemory {
            rss: pss * 2,
            pss,
            uss: pss * 8 / 10,
            swap: 0,
        };
        Ok(StepResult {
            workers: plan.workers,
            threads: plan.threads,
            preload: plan.preload,
            connections: plan.connections,
            requests,
            errors,
            window,
            p50: Duration::from_secs_f64(self.wall_per_request),
            p99: Duration::from_secs_f64(self.wall_per_request * 2.0),
            mean_latency: Duration::from_secs_f64(self.wall_per_request),
            worker_cpu: self.cpu_per_request * requests as f64,
            // Slot time not spent on the request itself was spent queued for a CPU.
            worker_cpu_wait: ((plan.workers * plan.threads.max(1)) as f64 * window.as_secs_f64()
                - requests as f64 * self.wall_per_request)
                .max(0.0),
            master: ProcessMemory {
                pss: self.master_pss,
                ..ProcessMemory::default()
            },
            worker_memory: vec![worker; plan.workers],
            // As measured after the warm-up: the model's memory does not move.
            total_pss_before: self.master_pss + pss * plan.workers as u64,
            worker_uss_before: worker.uss,
            elapsed: self.step_time,
        })
    }
}

fn config() -> SweepConfig {
    SweepConfig {
        memory_budget: 10_000 * MIB,
        cpus: 2.0,
        time: Duration::from_secs(60),
        max_workers: 128,
        concurrency: None,
        threads: 1,
        preload: false,
        compare_preload: false,
        warmup: Duration::from_millis(100),
        window: Duration::from_secs(1),
    }
}

fn context(config: &SweepConfig, cpus: f64) -> AdviceContext {
    AdviceContext {
        cpus,
        memory_budget: config.memory_budget,
        budget_source: "--memory-budget".to_string(),
        concurrency: config.concurrency,
    }
}

#[test]
fn counts_grow_in_growing_steps() {
    let mut n = 1;
    let mut seen = vec![n];
    while n < 100 {
        n = next_count(n);
        seen.push(n);
    }
    assert_eq!(seen, [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]);
}

#[test]
fn load_always_has_more_connections_than_slots_unless_stated() {
    for slots in [1, 2, 7, 64] {
        assert!(connections_for(slots, None) > slots);
    }
    assert_eq!(connections_for(64, Some(10)), 10);
}

#[test]
fn cpu_bound_app_stops_at_the_core_count() {
    let config = config();
    let mut model = Model::bound(2.0, 0.010, 0.0);
    let result = sweep(&mut model, &config).unwrap();
    assert_eq!(model.counts(), [1, 2, 3, 4], "two flat steps end it");
    assert_eq!(result.stop, StopReason::Plateau { at: 4 });
    let advice = advise(&result, &context(&config, 2.0), false);
    assert_eq!(advice.workers, 2);
    assert_eq!(advice.threads, 1);
    assert!(
        advice
            .reason
            .starts_with("2 workers: throughput stops rising at 2 (CPU bound"),
        "{}",
        advice.reason
    );
    assert!(advice.reason.contains("2 cores"), "{}", advice.reason);
    assert!(
        advice.reason.contains("fits the 9.8 GiB budget"),
        "{}",
        advice.reason
    );
}

#[test]
fn io_bound_app_reaches_dozens_quickly_then_refines_the_knee() {
    let config = config();
    // 2.5 ms of CPU and 47.5 ms of waiting: 2 cores saturate at 40 workers.
    let mut model = Model::bound(2.0, 0.0025, 0.0475);
    let result = sweep(&mut model, &config).unwrap();
    let counts = model.counts();
    assert!(counts.len() <= 16, "{counts:?}");
    // Linear gains double the count (6, 12, 24, 48), then refinement bisects 24..48.
    assert!(counts.contains(&24) && counts.contains(&48), "{counts:?}");
    let advice = advise(&result, &context(&config, 2.0), false);
    assert!(
        (36..=44).contains(&advice.workers),
        "{counts:?} -> {advice:?}"
    );
    assert!(advice.reason.contains("I/O bound"), "{}", advice.reason);
    assert!(workload_kind(&result.steps).contains("95% waiting"));
}

#[test]
fn threads_multiply_the_slots_so_fewer_workers_serve_an_io_bound_app() {
    // 2.5 ms of CPU and 47.5 ms of waiting: 2 cores saturate at 40 slots.
    let (cpu, io) = (0.0025, 0.0475);
    let mut config = config();
    config.threads = 4;
    let mut model = Model::bound(2.0, cpu, io);
    model.rps = Box::new(move |workers| ((4 * workers) as f64 / (cpu + io)).min(2.0 / cpu));
    let result = sweep(&mut model, &config).unwrap();
    for plan in &model.plans {
        assert_eq!(plan.threads, 4, "{plan:?}");
        assert!(plan.connections > plan.workers * 4, "{plan:?}");
    }
    let threaded = advise(&result, &context(&config, 2.0), false);
    assert_eq!(threaded.threads, 4);
    assert!(
        (9..=11).contains(&threaded.workers),
        "40 slots are about 10 workers of 4 threads: {threaded:?}"
    );
    assert!(
        threaded
            .reason
            .starts_with(&format!("{} workers × 4 threads: ", threaded.workers)),
        "{}",
        threaded.reason
    );

    config.threads = 1;
    let mut model = Model::bound(2.0, cpu, io);
    let single = advise(
        &sweep(&mut model, &config).unwrap(),
        &context(&config, 2.0),
        false,
    );
    assert_eq!(single.threads, 1);
    assert!(
        threaded.workers * 3 < single.workers,
        "{threaded:?} vs {single:?}"
    );
}

#[test]
fn slots_are_written_as_workers_times_threads() {
    assert_eq!(slots_text(1, 1), "1 worker");
    assert_eq!(slots_text(3, 1), "3 workers");
    assert_eq!(slots_text(1, 4), "1 worker × 4 threads");
    assert_eq!(slots_text(2, 8), "2 workers × 8 threads");
}

#[test]
fn the_memory_budget_is_never_exceeded() {
    let mut config = config();
    // Master 5 MiB + 10 MiB per worker: 60 MiB fits 5 workers.
    config.memory_budget = 60 * MIB;
    let mut model = Model::bound(2.0, 0.001, 0.049);
    let result = sweep(&mut model, &config).unwrap();
    assert_eq!(result.stop, StopReason::MemoryBudget);
    assert_eq!(
        model.counts(),
        [1, 2, 3, 4, 5],
        "the last step is the most that fit"
    );
    let advice = advise(&result, &context(&config, 2.0), false);
    assert_eq!(advice.workers, 5);
    assert!(
        advice.reason.contains("memory budget fits no more"),
        "{}",
        advice.reason
    );
    assert!(
        result.steps.iter().all(|s| s.total_pss() <= 60 * MIB),
        "no step ran over the budget"
    );
}

#[test]
fn under_a_memory_budget_the_sweep_goes_on_with_preload_when_it_saves() {
    let mut config = config();
    config.memory_budget = 60 * MIB;
    config.compare_preload = true;
    let mut model = Model::bound(2.0, 0.001, 0.049);
    // Forked from a loaded master, a worker's PSS is 2.5 MiB instead of 10.
    model.preload_worker_pss = 5 * MIB / 2;
    let result = sweep(&mut model, &config).unwrap();
    assert_eq!(result.stop, StopReason::MemoryBudget);
    assert_eq!(result.preload_stop, Some(StopReason::MemoryBudget));
    // 5 fit without; with --preload 5 MiB + n x 2.5 MiB fills the 60 MiB at 22, and 21 leave
    // the 2 % BUDGET_HEADROOM free.
    let most = result.preload_steps.iter().map(|s| s.workers).max();
    assert_eq!(most, Some(21), "{:?}", model.counts());
    assert!(result
        .preload_steps
        .iter()
        .all(|s| s.preload && s.total_pss() <= 60 * MIB));
    let advice = advise(&result, &context(&config, 2.0), false);
    assert!(advice.preload);
    assert_eq!(advice.workers, 21);
    assert!(
        advice.reason.contains("21 fit the 60 MiB budget")
            && advice.reason.contains("where 5 fit without"),
        "{}",
        advice.reason
    );
}

#[test]
fn when_even_one_worker_does_not_fit_it_says_so() {
    let mut config = config();
    config.memory_budget = 8 * MIB;
    let mut model = Model::bound(2.0, 0.01, 0.0);
    let result = sweep(&mut model, &config).unwrap();
    assert_eq!(model.counts(), [1]);
    let advice = advise(&result, &context(&config, 2.0), false);
    assert_eq!(advice.workers, 1);
    assert_eq!(advice.threads, 1);
    assert!(advice.reason.contains("does not fit"), "{}", advice.reason);

    // Measured with threads: the advice keeps them.
    config.threads = 4;
    let result = sweep(&mut Model::bound(2.0, 0.01, 0.0), &config).unwrap();
    let advice = advise(&result, &context(&config, 2.0), false);
    assert_eq!((advice.workers, advice.threads), (1, 4), "{advice:?}");
}

#[test]
fn the_time_limit_ends_the_sweep_and_the_reason_says_so() {
    let mut config = config();
    config.time = Duration::from_secs(3);
    let mut model = Model::bound(64.0, 0.001, 0.049);
    model.step_time = Duration::from_secs(1);
    let result = sweep(&mut model, &config).unwrap();
    assert_eq!(result.stop, StopReason::TimeLimit);
    assert!(model.counts().len() <= 3, "{:?}", model.counts());
    let advice = advise(&result, &context(&config, 64.0), false);
    assert!(advice.reason.contains("time ran out"), "{}", advice.reason);
}

#[test]
fn errors_at_a_count_stop_the_sweep_below_it() {
    let config = config();
    let mut model = Model::bound(64.0, 0.001, 0.049);
    model.fails_from = Some(8);
    let result = sweep(&mut model, &config).unwrap();
    assert_eq!(result.stop, StopReason::Collapse { at: 12 });
    // Refinement between 6 (fine) and 12 (failing) finds the last count that works.
    assert_eq!(model.counts(), [1, 2, 3, 4, 6, 12, 9, 7, 8]);
    let advice = advise(&result, &context(&config, 64.0), false);
    assert_eq!(advice.workers, 7, "{advice:?}");
}

#[test]
fn an_app_that_cannot_start_is_an_error() {
    let mut model = Model::bound(2.0, 0.01, 0.0);
    model.broken = true;
    assert_eq!(
        sweep(&mut model, &config()).unwrap_err(),
        "app failed to load"
    );
}

#[test]
fn no_time_for_even_one_step_is_an_error() {
    struct Slow;
    impl Bench for Slow {
        type Error = String;
        fn step(&mut self, _: &StepPlan) -> Result<StepResult, String> {
            Err("the --duration ran out".to_string())
        }
        fn out_of_time(&self) -> bool {
            true
        }
    }
    let err = sweep(&mut Slow, &config()).unwrap_err();
    assert!(err.contains("raise --duration"), "{err}");
}

#[test]
fn a_stated_concurrency_caps_the_workers() {
    let mut config = config();
    config.concurrency = Some(3);
    let mut model = Model::bound(64.0, 0.001, 0.049);
    let result = sweep(&mut model, &config).unwrap();
    assert!(model.plans.iter().all(|p| p.connections == 3));
    assert_eq!(result.stop, StopReason::ConcurrencyReached);
    let advice = advise(&result, &context(&config, 64.0), false);
    assert_eq!(advice.workers, 3);
    assert!(advice.reason.contains("--concurrency"), "{}", advice.reason);
}

#[test]
fn preload_is_recommended_when_it_saves_memory() {
    let mut config = config();
    config.compare_preload = true;
    let mut model = Model::bound(2.0, 0.010, 0.0);
    model.preload_worker_pss = 4 * MIB;
    let result = sweep(&mut model, &config).unwrap();
    let last = model.plans.last().unwrap();
    assert!(last.preload && last.workers == 2, "{last:?}");
    let advice = advise(&result, &context(&config, 2.0), false);
    assert!(advice.preload);
    // 2 workers: 5 + 2 x 10 MiB without, 5 + 2 x 4 MiB with.
    assert_eq!(advice.preload_saving, Some(12 * MIB as i64));
    assert!(
        advice.reason.contains("with --preload"),
        "{}",
        advice.reason
    );

    // No saving: keep the mode asked for.
    let mut model = Model::bound(2.0, 0.010, 0.0);
    let result = sweep(&mut model, &config).unwrap();
    let advice = advise(&result, &context(&config, 2.0), false);
    assert!(!advice.preload);
    assert_eq!(advice.preload_saving, Some(0));
}

#[test]
fn gains_past_what_can_keep_the_cpus_busy_are_noise() {
    let config = config();
    // A CPU-bound app on a busy machine: 6 workers happened to run while others were idle.
    let mut model = Model::new(|n| match n {
        1 => 100.0,
        2 => 200.0,
        4 => 210.0,
        6 => 400.0,
        _ => 150.0,
    });
    let result = sweep(&mut model, &config).unwrap();
    assert!(model.counts().contains(&6), "{:?}", model.counts());
    assert_eq!(useful_slots(&result.steps, 2.0), Some(4));
    let advice = advise(&result, &context(&config, 2.0), false);
    assert_eq!(advice.workers, 2, "{advice:?}");
}

#[test]
fn step_arithmetic() {
    let step = StepResult {
        workers: 2,
        threads: 1,
        connections: 4,
        requests: 100,
        window: Duration::from_secs(1),
        worker_cpu: 0.5,
        worker_cpu_wait: 0.5,
        ..StepResult::default()
    };
    assert_eq!(step.rps(), 100.0);
    assert_eq!(step.cpu_per_request(), Some(0.005));
    // Both slots busy for 1 s over 100 requests: 20 ms each, 5 on a CPU, 5 queued for one.
    assert!((step.wall_per_request().unwrap() - 0.020).abs() < 1e-9);
    assert!((step.io_share().unwrap() - 0.5).abs() < 1e-9);
    assert!((step.cpu_wait_share().unwrap() - 0.25).abs() < 1e-9);
}

#[test]
fn memory_still_growing_during_the_window_is_left_free() {
    let pss = |pss| ProcessMemory {
        pss,
        ..ProcessMemory::default()
    };
    let mut step = StepResult {
        workers: 4,
        master: pss(10 * MIB),
        worker_memory: vec![pss(10 * MIB); 4],
        // 50 MiB after the window, 45 MiB before it.
        total_pss_before: 45 * MIB,
        ..StepResult::default()
    };
    assert_eq!(headroom(&step, 60 * MIB), 5 * MIB, "the growth, not 2 %");
    assert!(!fits_with_headroom(&step, 54 * MIB));
    assert!(fits_with_headroom(&step, 55 * MIB));
    // Not measured before the window: the fixed share.
    step.total_pss_before = 0;
    assert_eq!(headroom(&step, 100 * MIB), 2 * MIB);
    assert!(fits_with_headroom(&step, 52 * MIB));
    assert!(!fits_with_headroom(&step, 51 * MIB));
}
