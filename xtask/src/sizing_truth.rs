//! `cargo xtask bench` section "Sizing truth": does `ferrocorn sizing` recommend a worker count
//! that really serves well within a memory budget?
//!
//! For each app (CPU-bound, I/O-bound, the Django demo) the same release ferrocorn is measured at
//! a ladder of worker counts, with and without `--preload`, under the bench's own load generator;
//! the memory of each point is the total PSS of master and workers read as the advisor reads
//! it (see [`measure`]). The budget
//! is set from that ladder so that it binds: a little more than `BUDGET_WORKERS` workers take
//! without `--preload`. Then `ferrocorn sizing --json --memory-budget` is asked, and its
//! recommendation is compared with the best point that fits, and with gunicorn's `2 x cores + 1`
//! (those three measured twice more, in turns, and their median taken: the machine's load
//! drifts, and the ladder's best is the luckiest of noisy numbers).
//!
//! Target: the recommendation fits the budget and serves at least 90% of the best that fits.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bench::load;
use crate::servers::{start, Env, ServerKind, Target, SERVERS};

/// The recommendation must reach this share of the best throughput within the budget.
const TARGET_SHARE: f64 = 0.9;
/// A point with more failed requests than this share does not count as serving.
const MAX_ERROR_RATE: f64 = 0.01;
/// The budget is this much above the measured total PSS of `budget_workers` workers (PSS varies
/// a little between runs).
const BUDGET_SLACK: f64 = 1.05;
/// Extra measurements of each compared point, taken in turns, whose median counts.
const CONFIRM_ROUNDS: usize = 2;

/// An app of the section and the worker counts it is measured at.
struct App {
    name: &'static str,
    target: Target,
    /// The budget fits about this many workers without `--preload`.
    budget_workers: usize,
    ladder: &'static [usize],
}

fn apps(root: &Path) -> Vec<App> {
    let sizing_app = |spec| Target {
        dir: root.join("tests/apps"),
        spec,
        path: "/",
    };
    vec![
        App {
            name: "CPU-bound (sizing_apps:cpu_app)",
            target: sizing_app("sizing_apps:cpu_app"),
            // Fewer than 2 x cores + 1 on any small machine; the CPUs still fill.
            budget_workers: 3,
            ladder: &[1, 2, 3, 4, 5, 6],
        },
        App {
            name: "I/O-bound (sizing_apps:io_app, 50 ms wait)",
            target: sizing_app("sizing_apps:io_app"),
            // Throughput would want dozens: memory decides.
            budget_workers: 8,
            ladder: &[1, 2, 4, 6, 8, 10, 12, 16, 24],
        },
        App {
            name: "Django demo (mysite.wsgi)",
            target: Target {
                dir: root.join("tests/apps/django_demo"),
                spec: "mysite.wsgi:application",
                path: "/",
            },
            budget_workers: 3,
            ladder: &[1, 2, 3, 4, 5, 6],
        },
    ]
}

/// One measured configuration.
#[derive(Debug, Clone, Copy)]
struct Point {
    workers: usize,
    preload: bool,
    rps: f64,
    requests: u64,
    errors: u64,
    /// Master and workers, after the load.
    total_pss: u64,
}

impl Point {
    fn serves(&self) -> bool {
        self.errors as f64 <= MAX_ERROR_RATE * (self.requests + self.errors) as f64
    }
}

fn kind(name: &str) -> &'static ServerKind {
    SERVERS
        .iter()
        .find(|k| k.name == name)
        .expect("a known server")
}

/// Start `server` with `workers`, warm it up, load it for the pace's window with more
/// connections than workers (so the load is never the bottleneck). Its memory is read as
/// `ferrocorn sizing` reads it: the total PSS of the master and every process under it
/// (smaps_rollup), after as much load as the advisor's step has had when it reads it (its
/// warm-up and window), while this load goes on. Read later, after more requests, the same
/// server takes more: Python's heap and copy-on-write faults grow for a while.
fn measure(
    env: &Env,
    server: &str,
    target: &Target,
    (workers, preload): (usize, bool),
    pace: &Pace,
) -> Result<Point> {
    let running = start(kind(server), env, target, workers, preload)?;
    let connections = 2 * workers + 4;
    let pid = running.child.id() as i32;
    let memory_read = pace.memory_read();
    let memory = std::thread::spawn(move || {
        std::thread::sleep(memory_read);
        ferrocorn_sizing::tree_memory(pid)
    });
    load(running.addr, target.path, connections, pace.window / 3);
    let result = load(running.addr, target.path, connections, pace.window);
    let memory = memory
        .join()
        .map_err(|_| anyhow::anyhow!("the memory reader panicked"))??;
    Ok(Point {
        workers,
        preload,
        rps: result.rps,
        requests: result.requests,
        errors: result.errors,
        total_pss: memory.total.pss,
    })
}

/// The points of one app, measured once each and looked up after.
struct Ladder<'a> {
    env: &'a Env,
    target: &'a Target,
    pace: &'a Pace,
    points: Vec<Point>,
}

impl Ladder<'_> {
    fn point(&mut self, workers: usize, preload: bool) -> Result<Point> {
        if let Some(p) = self
            .points
            .iter()
            .find(|p| p.workers == workers && p.preload == preload)
        {
            return Ok(*p);
        }
        let p = measure(
            self.env,
            "ferrocorn",
            self.target,
            (workers, preload),
            self.pace,
        )
        .with_context(|| format!("ferrocorn -w {workers} (preload {preload})"))?;
        eprintln!(
            "sizing truth: -w {workers} preload {preload}: {:.0} req/s, {} errors, {:.1} MiB PSS",
            p.rps,
            p.errors,
            mib(p.total_pss)
        );
        self.points.push(p);
        Ok(p)
    }

    /// The point with the most throughput among those that serve and fit `budget`.
    fn best_within(&self, budget: u64) -> Option<Point> {
        best_of(self.points.iter().copied(), budget)
    }

    /// Measure the (measured) `configs` [`CONFIRM_ROUNDS`] more times, in turns, and keep each
    /// one's median throughput: the ladder's best is the highest of noisy numbers and the
    /// machine's load drifts, so the points compared are measured back to back.
    fn confirm(&mut self, configs: &[(usize, bool)]) -> Result<Vec<Point>> {
        let mut configs = configs.to_vec();
        configs.sort_unstable();
        configs.dedup();
        let mut samples: Vec<Vec<f64>> = Vec::new();
        for &(workers, preload) in &configs {
            samples.push(vec![self.point(workers, preload)?.rps]);
        }
        for _ in 0..CONFIRM_ROUNDS {
            for (config, rps) in configs.iter().zip(&mut samples) {
                rps.push(measure(self.env, "ferrocorn", self.target, *config, self.pace)?.rps);
            }
        }
        let mut confirmed = Vec::new();
        for (&(workers, preload), mut rps) in configs.iter().zip(samples) {
            rps.sort_by(f64::total_cmp);
            eprintln!("sizing truth: -w {workers} preload {preload} again: {rps:.0?} req/s");
            let mut point = self.point(workers, preload)?;
            point.rps = rps[rps.len() / 2];
            confirmed.push(point);
        }
        Ok(confirmed)
    }
}

/// The point with the most throughput among `points` that serve and fit `budget`.
fn best_of(points: impl Iterator<Item = Point>, budget: u64) -> Option<Point> {
    points
        .filter(|p| p.serves() && p.total_pss <= budget)
        .max_by(|a, b| a.rps.total_cmp(&b.rps))
}

/// What `ferrocorn sizing` recommended.
struct Advice {
    workers: usize,
    preload: bool,
}

/// Run `ferrocorn sizing --json` on `target` with `budget` bytes for `duration`.
fn advise(env: &Env, target: &Target, budget: u64, duration: Duration) -> Result<Advice> {
    let log_dir = env.root.join("target/bench-logs");
    std::fs::create_dir_all(&log_dir)?;
    let stem = target.spec.replace([':', '.'], "-");
    let log = std::fs::File::create(log_dir.join(format!("sizing-{stem}.log")))?;
    let mut cmd = Command::new(&env.ferrocorn);
    cmd.arg("sizing")
        .arg("--json")
        .args(["--duration", &format!("{:.0}", duration.as_secs_f64())])
        .args(["--memory-budget", &format!("{}K", budget / 1024)])
        .arg("--chdir")
        .arg(&target.dir)
        .arg(target.spec)
        .env("VIRTUAL_ENV", &env.venv)
        .env_remove("WEB_CONCURRENCY")
        .stdin(Stdio::null())
        .stderr(log);
    eprintln!("$ {cmd:?}");
    let out = cmd.output().context("running ferrocorn sizing")?;
    std::fs::write(log_dir.join(format!("sizing-{stem}.json")), &out.stdout)?;
    if !out.status.success() {
        bail!("ferrocorn sizing failed with {}", out.status);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading ferrocorn sizing's JSON")?;
    let rec = &json["recommended"];
    Ok(Advice {
        workers: rec["workers"]
            .as_u64()
            .context("no recommended.workers in the JSON")? as usize,
        preload: rec["preload"]
            .as_bool()
            .context("no recommended.preload in the JSON")?,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// How fast the section runs: each point's load window and the advisor's `--duration`.
pub(crate) struct Pace {
    pub window: Duration,
    pub sizing: Duration,
}

impl Pace {
    /// From the bench's `--duration`: a third of it per point (2 to 5 s), ten points' worth for
    /// the advisor.
    pub(crate) fn from_duration(duration: Duration) -> Self {
        let window = (duration / 3).clamp(Duration::from_secs(2), Duration::from_secs(5));
        Pace {
            window,
            sizing: window * 10,
        }
    }

    /// How long after its load starts a point's memory is read: when the advisor, given
    /// `sizing`, reads a step's.
    fn memory_read(&self) -> Duration {
        ferrocorn_sizing::advisor::step_timing(self.sizing).until_memory_read()
    }
}

/// One row of the table, and whether the target was met.
struct Row {
    app: &'static str,
    budget: u64,
    budget_workers: usize,
    best: Point,
    recommended: Point,
    rule: Point,
    gunicorn_rule: Option<f64>,
}

impl Row {
    fn share(&self, p: &Point) -> f64 {
        p.rps / self.best.rps
    }

    fn fits(&self, p: &Point) -> bool {
        p.total_pss <= self.budget
    }

    fn failure(&self) -> Option<String> {
        let r = &self.recommended;
        let share = self.share(r);
        if self.fits(r) && r.serves() && share >= TARGET_SHARE {
            return None;
        }
        Some(format!(
            "{}: ferrocorn sizing's -w {} (preload {}) serves {:.0}% of the best within the \
             budget, {:.1} of {:.1} MiB (target ≥ {:.0}%, inside the budget)",
            self.app,
            r.workers,
            r.preload,
            share * 100.0,
            mib(r.total_pss),
            mib(self.budget),
            TARGET_SHARE * 100.0
        ))
    }
}

fn app_row(env: &Env, app: &App, pace: &Pace, cores: usize) -> Result<Row> {
    let mut ladder = Ladder {
        env,
        target: &app.target,
        pace,
        points: Vec::new(),
    };
    for &workers in app.ladder {
        for preload in [false, true] {
            ladder.point(workers, preload)?;
        }
    }
    let at_budget = ladder.point(app.budget_workers, false)?;
    let budget = (at_budget.total_pss as f64 * BUDGET_SLACK) as u64;
    let advice = advise(env, &app.target, budget, pace.sizing)?;
    let rule = (2 * cores + 1, false);
    let candidate = ladder
        .best_within(budget)
        .context("no measured point fits the budget")?;
    let compared = [
        (candidate.workers, candidate.preload),
        (advice.workers, advice.preload),
        rule,
    ];
    let confirmed = ladder.confirm(&compared)?;
    let find = |(workers, preload): (usize, bool)| {
        *confirmed
            .iter()
            .find(|p| p.workers == workers && p.preload == preload)
            .expect("every compared point is confirmed")
    };
    let best = best_of(confirmed.iter().copied(), budget).unwrap_or(candidate);
    let recommended = find(compared[1]);
    let rule = find(rule);
    let gunicorn_rule = measure(env, "gunicorn", &app.target, (2 * cores + 1, false), pace)
        .map_err(|e| eprintln!("sizing truth: gunicorn skipped: {e:#}"))
        .ok()
        .map(|p| p.rps);
    Ok(Row {
        app: app.name,
        budget,
        budget_workers: app.budget_workers,
        best,
        recommended,
        rule,
        gunicorn_rule,
    })
}

fn workers_text(p: &Point) -> String {
    format!("{}{}", p.workers, if p.preload { " --preload" } else { "" })
}

fn print_table(rows: &[Row], cores: usize) {
    let rule = 2 * cores + 1;
    println!(
        "| app | budget | best within budget: workers, req/s, PSS | ferrocorn sizing: workers, \
         req/s, PSS | % of best | 2×{cores}+1 = {rule}: req/s, PSS | % of best | fits? | \
         gunicorn -w {rule} req/s |"
    );
    println!("| --- | --- | --- | --- | ---: | --- | ---: | --- | ---: |");
    for r in rows {
        let point = |p: &Point| {
            format!(
                "{}, {:.0}, {:.1} MiB",
                workers_text(p),
                p.rps,
                mib(p.total_pss)
            )
        };
        println!(
            "| {} | {:.1} MiB (≈{} workers) | {} | {} | {:.0}% | {:.0}, {:.1} MiB | {:.0}% | {} | {} |",
            r.app,
            mib(r.budget),
            r.budget_workers,
            point(&r.best),
            point(&r.recommended),
            r.share(&r.recommended) * 100.0,
            r.rule.rps,
            mib(r.rule.total_pss),
            r.share(&r.rule) * 100.0,
            if r.fits(&r.rule) { "yes" } else { "no" },
            r.gunicorn_rule
                .map_or("not run".to_string(), |rps| format!("{rps:.0}")),
        );
    }
}

/// The section: the table, and a failure for each app whose recommendation misses the target.
pub(crate) fn sizing_truth(env: &Env, pace: &Pace) -> Result<Vec<String>> {
    let cores = ferrocorn_sizing::cpu_budget()
        .context("reading the CPU budget")?
        .cores();
    println!(
        "\n## Sizing truth: ferrocorn sizing's recommendation against the measured best within a \
         memory budget ({:.0} s per point, {:.0} s of advisor, {cores} cores)\n",
        pace.window.as_secs_f64(),
        pace.sizing.as_secs_f64()
    );
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for app in apps(&env.root) {
        match app_row(env, &app, pace, cores) {
            Ok(row) => rows.push(row),
            Err(e) => failures.push(format!("{}: not measured: {e:#}", app.name)),
        }
    }
    print_table(&rows, cores);
    failures.extend(rows.iter().filter_map(Row::failure));
    for f in &failures {
        println!("\nmissed: {f}");
    }
    Ok(failures)
}
