//! `ferrocorn top`: htop for ferrocorn. One row per worker (pid, state, req/s, current request
//! and its age, USS, PSS, CPU%) under a header of totals, memory against the budget, the accept
//! queue and the recommended worker count.
//!
//! The data comes from the master's `--stats` endpoint (JSON at `GET /`). With only `--pid
//! PIDFILE`, the master's children are read from /proc instead: pid, memory and CPU, but no state,
//! requests or queue (those live in the master's scoreboard, which only the endpoint shows).
//!
//! Keys: `+` add a worker (SIGTTIN), `-` remove one (SIGTTOU), `r` reload (SIGHUP), `s` change the
//! sort, `q` quit. They are signals to the master's pid, so only a user allowed to signal it can
//! use them; the stats endpoint itself takes no commands. `--once` prints one table and exits.
#![warn(missing_docs)]

mod model;
mod source;
mod view;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferrocorn_listener::BindSpec;

pub use model::{Row, Sort, Table};
pub use source::{Source, Stats};

/// `ferrocorn top` flags.
#[derive(Debug, Parser)]
#[command(
    name = "ferrocorn top",
    about = "A live view of a running ferrocorn's workers"
)]
pub struct TopArgs {
    /// The master's --stats address: `unix:PATH` or `HOST:PORT`.
    #[arg(long, value_name = "ADDRESS", value_parser = parse_bind)]
    pub stats: Option<BindSpec>,
    /// The master's pid file (its --pid). Without --stats, workers are read from /proc.
    #[arg(long = "pid", value_name = "PIDFILE")]
    pub pidfile: Option<PathBuf>,
    /// Print one table and exit (for scripts and pipes).
    #[arg(long)]
    pub once: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_interval)]
    pub interval: Duration,
}

fn parse_bind(s: &str) -> Result<BindSpec, String> {
    s.parse()
        .map_err(|e: ferrocorn_listener::Error| e.to_string())
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.1 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{s:?} is not a number of seconds (at least 0.1)")),
    }
}

/// Why `ferrocorn top` could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `--stats` nor `--pid` was given.
    #[error("give --stats ADDRESS or --pid PIDFILE")]
    NoSource,
    /// The `--pid` file could not be read.
    #[error("cannot read the pid file {}: {cause}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The `--pid` file does not hold a pid.
    #[error("the pid file {} holds no pid", .0.display())]
    BadPidFile(PathBuf),
    /// The stats endpoint could not be reached or read.
    #[error("stats at {address}: {cause}")]
    Stats {
        /// The `--stats` address.
        address: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The stats endpoint answered something other than its JSON.
    #[error("stats at {address}: {reason}")]
    BadStats {
        /// The `--stats` address.
        address: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// Drawing on or reading keys from the terminal failed.
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
}

/// Run `ferrocorn top` with `args` (the words after `top`).
pub fn run(args: TopArgs) -> Result<(), Error> {
    let source = Source::new(args.stats, args.pidfile)?;
    if args.once {
        let first = source.fetch()?;
        // Rates need two samples: a short second look gives req/s and CPU%.
        std::thread::sleep(Duration::from_millis(500));
        let second = source.fetch()?;
        let table = Table::new(Some(&first), &second, Sort::Pid);
        print!("{}", view::plain(&table));
        return Ok(());
    }
    view::live(&source, args.interval)
}
