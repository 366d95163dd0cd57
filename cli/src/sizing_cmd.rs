//! `ferrocorn sizing [SERVE FLAGS] APP`: measure what a worker of this app really costs (memory
//! after warm-up, CPU and wall time per request) while sweeping the worker count, and recommend
//! a count that fits the machine's CPU and memory budgets.
//!
//! The measuring engine and the decision are in `ferrocorn_sizing::advisor`; this module starts
//! the real server (this binary, re-launched with the user's flags on a private loopback port),
//! loads it ([`load`]) and prints the result.

mod load;
mod plot;
mod report;
mod server;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches};
use ferrocorn_sizing::advisor::{self, Advice, AdviceContext, SweepConfig};
use ferrocorn_sizing::{CpuBudget, MemoryBudget};

use ferrocorn_flags::Options;
use load::Target;

/// The most workers the sweep tries.
const MAX_WORKERS: usize = 128;
const MIB: f64 = 1024.0 * 1024.0;

fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// The advisor's own flags; everything else is a serve flag, passed on to the server.
#[derive(Debug, Clone, Args)]
struct AdvisorArgs {
    /// A URL to request: `PATH` or `METHOD PATH` (repeatable; default `GET /`).
    #[arg(long = "url", value_name = "[METHOD] PATH")]
    url: Vec<String>,

    /// A file of URLs, one `PATH` or `METHOD PATH` a line (`#` comments).
    #[arg(long = "urls", value_name = "FILE")]
    urls_file: Option<PathBuf>,

    /// The expected peak of simultaneous requests (default: always more than the workers).
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    concurrency: Option<usize>,

    /// Seconds the whole run may take.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = parse_duration)]
    duration: Duration,

    /// The Host header of the requests (an app may allow only its own names).
    #[arg(long = "host", default_value = "localhost", value_name = "NAME")]
    host: String,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,

    /// Draw throughput and memory against the worker count into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

fn command() -> clap::Command {
    // Options brings its own name, about and after_help: ours are set after it.
    Options::augment_args(AdvisorArgs::augment_args(clap::Command::new(
        "ferrocorn sizing",
    )))
    .name("ferrocorn sizing")
    .bin_name("ferrocorn sizing")
    .about(
        "Measure what a worker of APP costs and recommend how many to run: starts APP as \
             `ferrocorn APP` would (same flags), on a private loopback port, and sweeps the worker \
             count under load until throughput stops rising, latency collapses, or memory or \
             --duration runs out.",
    )
    .after_help(
        "-w/--workers, -b/--bind, --preload, --pid, --log-level, --log-file and \
             --capture-output are the advisor's to set for each step; the rest are passed on. \
             With --threads N every step runs N app threads per worker and the sweep counts \
             workers of N threads. An app whose module is named `sizing` is written \
             `sizing:application`.",
    )
    .override_usage("ferrocorn sizing [ADVISOR FLAGS] [SERVE FLAGS] APP")
}

/// Serve flags the advisor sets itself for each step, or reads itself (`--memory-budget`, the
/// budget the recommendation must fit, is not passed on: with it each step's server would
/// recycle workers to stay inside it while being measured; `--threads` is given to each step and
/// to the recommended command from the sweep's plan): removed from what is passed on.
const OWN_SERVE_FLAGS: &[&str] = &[
    "memory-budget",
    "threads",
    "workers",
    "bind",
    "preload",
    "pid",
    "log-level",
    "log-file",
    "capture-output",
];

/// A flag as written on the command line: its long and short names, whether it takes a value.
struct FlagSpec {
    longs: Vec<String>,
    short: Option<char>,
    takes_value: bool,
}

fn flag_specs(cmd: &clap::Command, keep: impl Fn(&clap::Arg) -> bool) -> Vec<FlagSpec> {
    cmd.get_arguments()
        .filter(|a| !a.is_positional() && keep(a))
        .map(|a| FlagSpec {
            longs: a
                .get_long_and_visible_aliases()
                .unwrap_or_default()
                .into_iter()
                .map(str::to_string)
                .chain(
                    a.get_all_aliases()
                        .unwrap_or_default()
                        .into_iter()
                        .map(str::to_string),
                )
                .collect(),
            short: a.get_short(),
            takes_value: a.get_action().takes_values(),
        })
        .collect()
}

/// `args` without the flags in `drop` (with their values, in any spelling: `--f v`, `--f=v`,
/// `-f v`, `-fv`).
fn without_flags(args: &[OsString], drop: &[FlagSpec]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let text = args[i].to_string_lossy();
        if text == "--" {
            out.extend_from_slice(&args[i..]);
            break;
        }
        let hit = drop.iter().find_map(|f| {
            if let Some(long) = text.strip_prefix("--") {
                let (name, inline) = long
                    .split_once('=')
                    .map_or((long, false), |(n, _)| (n, true));
                f.longs.iter().any(|l| l == name).then_some((f, inline))
            } else {
                let mut chars = text.strip_prefix('-')?.chars();
                let c = chars.next()?;
                (f.short == Some(c)).then_some((f, chars.next().is_some()))
            }
        });
        match hit {
            Some((f, inline)) => i += if f.takes_value && !inline { 2 } else { 1 },
            None => {
                out.push(args[i].clone());
                i += 1;
            }
        }
    }
    out
}

/// The serve flags and APP to pass on to each server.
fn serve_args(args: &[OsString]) -> Vec<OsString> {
    let advisor = AdvisorArgs::augment_args(clap::Command::new("advisor"));
    let mut drop = flag_specs(&advisor, |_| true);
    let serve = Options::command();
    drop.extend(flag_specs(&serve, |a| {
        a.get_long().is_some_and(|l| OWN_SERVE_FLAGS.contains(&l))
    }));
    without_flags(args, &drop)
}

fn targets(advisor: &AdvisorArgs) -> Result<Vec<Target>> {
    let mut lines = advisor.url.clone();
    if let Some(file) = &advisor.urls_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --urls {}", file.display()))?;
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if lines.is_empty() {
        lines.push("/".to_string());
    }
    lines.iter().map(|l| Target::parse(l)).collect()
}

/// The machine's budgets and the memory the sweep may use.
struct Budget {
    cpu: CpuBudget,
    memory: MemoryBudget,
    flag: Option<u64>,
    /// The tightest of the flag, the cgroup limit (or MemTotal) and MemAvailable.
    effective: u64,
    source: String,
}

fn budget(flag: Option<u64>) -> Result<Budget> {
    let cpu = ferrocorn_sizing::cpu_budget().context("reading the CPU budget")?;
    let memory = ferrocorn_sizing::memory_budget().context("reading the memory budget")?;
    let mut candidates = vec![(
        memory.limit,
        if memory.cgroup_file.is_some() {
            "cgroup limit"
        } else {
            "MemTotal"
        },
    )];
    candidates.extend(memory.mem_available.map(|a| (a, "MemAvailable")));
    candidates.extend(flag.map(|f| (f, "--memory-budget")));
    let (effective, source) = candidates
        .into_iter()
        .min_by_key(|(bytes, _)| *bytes)
        .expect("the limit is always there");
    Ok(Budget {
        cpu,
        memory,
        flag,
        effective,
        source: source.to_string(),
    })
}

/// Run `ferrocorn sizing` with the process's arguments (after `sizing`).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let matches = command().get_matches_from(
        std::iter::once(OsString::from("ferrocorn sizing")).chain(args.iter().cloned()),
    );
    let parsed = AdvisorArgs::from_arg_matches(&matches)
        .and_then(|a| Options::from_arg_matches(&matches).map(|o| (a, o)));
    let (advisor, options) = match parsed {
        Ok(p) => p,
        Err(e) => e.exit(),
    };
    ferrocorn_server::logging::init(log::LevelFilter::Warn);
    warn_overridden(&matches);
    match run(&advisor, &options, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("ferrocorn sizing: interrupted; every server it started is stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("ferrocorn sizing: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serve flags given on the command line that each step sets itself: said, not silently dropped.
fn warn_overridden(matches: &clap::ArgMatches) {
    let overridden = [
        (
            "workers",
            "-w/--workers",
            "the advisor sweeps the worker count",
        ),
        (
            "bind",
            "-b/--bind",
            "each step listens on a private loopback port",
        ),
        ("pidfile", "--pid", "the advisor follows its servers itself"),
        (
            "log_level",
            "--log-level",
            "the advisor reads its servers' info log",
        ),
        (
            "log_file",
            "--log-file",
            "the advisor reads its servers' log on stderr",
        ),
        (
            "capture_output",
            "--capture-output",
            "the servers' output is the advisor's",
        ),
    ];
    for (id, flag, why) in overridden {
        if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            eprintln!("ferrocorn sizing: {flag} is not used: {why}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

fn check_serve_options(options: &Options) -> Result<()> {
    if options.app.is_none() {
        bail!("no APP given: ferrocorn sizing [FLAGS] module:callable");
    }
    ferrocorn_flags::check_options(options, ferrocorn_flags::AppArgument::Optional)?;
    Ok(())
}

fn run(advisor: &AdvisorArgs, options: &Options, raw: &[OsString]) -> Result<()> {
    check_serve_options(options)?;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing Ctrl-C")?;
    }
    let budget = budget(options.memory_budget)?;
    let targets = targets(advisor)?;
    let serve = serve_args(raw);
    let mut bench = server::ProcessBench {
        launch: server::Launch {
            exe: std::env::current_exe().context("finding the ferrocorn binary")?,
            args: serve.clone(),
            targets: targets.clone(),
            host: advisor.host.clone(),
            deadline: started + advisor.duration,
        },
        stop: stop.clone(),
        progress: !advisor.json,
    };
    let config = sweep_config(advisor, options, &budget);
    if !advisor.json {
        eprintln!(
            "ferrocorn sizing: sweeping workers for up to {:.1} s ({} per step, {:.1} s warm-up + {:.1} s measured)",
            advisor.duration.as_secs_f64(),
            load_text(advisor.concurrency),
            config.warmup.as_secs_f64(),
            config.window.as_secs_f64()
        );
    }
    let result = advisor::sweep(&mut bench, &config);
    if stop.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    let sweep = result.map_err(|e| anyhow::anyhow!("the app cannot be measured: {e}"))?;
    let ctx = AdviceContext {
        cpus: budget.cpu.cpus,
        memory_budget: budget.effective,
        budget_source: budget.source.clone(),
        concurrency: advisor.concurrency,
    };
    let advice = advisor::advise(&sweep, &ctx, options.preload);
    let command = command_line(&advice, &serve);
    if let Some(path) = &advisor.plot {
        plot::draw(path, &sweep.by_workers(), advice.workers)?;
    }
    if advisor.json {
        let report = report::json_report(&sweep, &advice, &budget, advisor, &targets, &command);
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report::print_report(&sweep, &advice, &budget, advisor, &command);
    }
    Ok(())
}

/// Step length from the time budget ([`ferrocorn_sizing::advisor::step_timing`]).
fn sweep_config(advisor: &AdvisorArgs, options: &Options, budget: &Budget) -> SweepConfig {
    let timing = ferrocorn_sizing::advisor::step_timing(advisor.duration);
    SweepConfig {
        memory_budget: budget.effective,
        cpus: budget.cpu.cpus,
        // Keep a little for the report and for stopping the last server.
        time: advisor.duration.mul_f64(0.95),
        max_workers: MAX_WORKERS,
        concurrency: advisor.concurrency,
        threads: options.threads,
        preload: options.preload,
        compare_preload: true,
        warmup: timing.warmup,
        window: timing.window,
    }
}

fn load_text(concurrency: Option<usize>) -> String {
    match concurrency {
        Some(n) => format!("{n} simultaneous requests (--concurrency)"),
        None => "saturating load: more connections than workers".to_string(),
    }
}

/// Quote an argument for a POSIX shell when it needs it.
fn shell_word(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn command_line(advice: &Advice, serve: &[OsString]) -> String {
    let mut words = vec![
        "ferrocorn".to_string(),
        "-w".to_string(),
        advice.workers.to_string(),
    ];
    words.extend(server::threads_args(advice.threads));
    if advice.preload {
        words.push("--preload".to_string());
    }
    words.extend(serve.iter().map(|a| shell_word(&a.to_string_lossy())));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// The advisor's flags and the serve flags share one command: no name may be defined twice.
    #[test]
    fn the_advisor_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn advisor_and_own_flags_are_not_passed_on() {
        let args = os(&[
            "--url",
            "/a",
            "--url=POST /b",
            "-w",
            "3",
            "--workers=4",
            "-w5",
            "--chdir",
            "proj",
            "--preload",
            "--json",
            "--memory-budget",
            "600M",
            "--threads=4",
            "-e",
            "A=1",
            "-b",
            "0.0.0.0:80",
            "--duration",
            "10",
            "--log-level",
            "debug",
            "--log-file=/tmp/x.log",
            "--capture-output",
            "app:application",
        ]);
        assert_eq!(
            serve_args(&args),
            os(&["--chdir", "proj", "-e", "A=1", "app:application"])
        );
    }

    #[test]
    fn command_line_quotes_what_needs_it() {
        let advice = Advice {
            workers: 3,
            threads: 1,
            preload: true,
            reason: String::new(),
            preload_saving: None,
        };
        assert_eq!(
            command_line(&advice, &os(&["--chdir", "/srv/my app", "site.wsgi"])),
            "ferrocorn -w 3 --preload --chdir '/srv/my app' site.wsgi"
        );
    }

    #[test]
    fn the_command_line_runs_the_recommended_threads() {
        let advice = Advice {
            workers: 2,
            threads: 4,
            preload: false,
            reason: String::new(),
            preload_saving: None,
        };
        assert_eq!(
            command_line(&advice, &os(&["app:application"])),
            "ferrocorn -w 2 --threads 4 app:application"
        );
    }
}
