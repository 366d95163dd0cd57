//! gunicorn-style error log lines: `[2026-11-25 13:00:00 +0000] [PID] [INFO] message`.
//!
//! `--log-file PATH` points fd 2 itself at the file (so Python tracebacks written to stderr land there
//! too); SIGUSR1 reopens it for logrotate. [`WorkerLogs`] keeps every file workers reopen owned by
//! their `--user`, so they can open the one the master re-creates after logrotate moved the old.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Context, Result};
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::privileges::Owner;

struct ErrorLog {
    level: LevelFilter,
}

impl Log for ErrorLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARNING",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let line = format!(
            "[{}] [{}] [{level}] {}\n",
            timestamp(SystemTime::now()),
            std::process::id(),
            record.args()
        );
        // One write per line so lines from several processes sharing the file do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// `--log-level` names as gunicorn spells them.
pub fn parse_level(name: &str) -> Result<LevelFilter, String> {
    match name.to_ascii_lowercase().as_str() {
        "debug" => Ok(LevelFilter::Debug),
        "info" => Ok(LevelFilter::Info),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "error" | "critical" => Ok(LevelFilter::Error),
        other => Err(format!(
            "invalid log level {other:?} (expected debug, info, warning, error or critical)"
        )),
    }
}

/// Install the gunicorn-style error log on stderr, showing `level` and above.
pub fn init(level: LevelFilter) {
    // Only fails if a logger is already set, which happens only in tests that call this twice.
    let _ = log::set_boxed_logger(Box::new(ErrorLog { level }));
    log::set_max_level(level);
}

/// Where the error log goes: `None` = stderr as inherited. With `capture_output`, stdout (an
/// app's `print`) goes there too, as gunicorn's `--capture-output`.
#[derive(Debug, Clone)]
pub struct LogFile {
    path: Option<PathBuf>,
    capture_output: bool,
}

impl LogFile {
    /// `-` means stderr, as in gunicorn.
    pub fn new(path: Option<&Path>, capture_output: bool) -> Self {
        LogFile {
            path: path.filter(|p| *p != Path::new("-")).map(Path::to_path_buf),
            capture_output,
        }
    }

    /// The file, unless the log goes to the inherited stderr.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// (Re)open the file in append mode and make it fd 2.
    pub fn open(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        nix::unistd::dup2_stderr(&file)
            .with_context(|| format!("cannot redirect stderr to {}", path.display()))?;
        if self.capture_output {
            nix::unistd::dup2_stdout(&file)
                .with_context(|| format!("cannot redirect stdout to {}", path.display()))?;
        }
        debug_assert!(file.as_raw_fd() != 2);
        Ok(())
    }
}

/// The log files workers write to and reopen on SIGUSR1 (the error log; an access log too, once
/// there is one). The master creates them, as root when started as root, then hands them to the
/// workers' user and group: an unprivileged worker could not open a root-owned 0644 file for
/// appending, and would go on writing into the file logrotate moved away.
#[derive(Debug)]
pub struct WorkerLogs {
    owner: Owner,
    paths: Vec<PathBuf>,
}

impl WorkerLogs {
    /// Keep `paths` owned by `owner` (the workers' user and group).
    pub fn new(owner: Owner, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        WorkerLogs {
            owner,
            paths: paths.into_iter().collect(),
        }
    }

    /// Chown each file (at start, and after each reopen created it anew). Only regular files: a
    /// `--log-file /dev/null` or a FIFO is not ours to give away.
    pub fn hand_over(&self) -> Result<()> {
        for path in &self.paths {
            let is_file = std::fs::metadata(path)
                .with_context(|| format!("cannot inspect log file {}", path.display()))?
                .is_file();
            if is_file {
                self.owner.chown(path)?;
            }
        }
        Ok(())
    }
}

/// UTC time as `YYYY-MM-DD HH:MM:SS +0000`.
fn timestamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = ferrocorn_http::UtcTime::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 +0000");
        // 2024-02-29 12:34:56 UTC, a leap day.
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(timestamp(t), "2024-02-29 12:34:56 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        assert_eq!(timestamp(t), "2026-12-31 23:59:59 +0000");
    }

    #[test]
    fn log_levels_parse_like_gunicorn() {
        assert_eq!(parse_level("WARNING"), Ok(LevelFilter::Warn));
        assert_eq!(parse_level("critical"), Ok(LevelFilter::Error));
        assert!(parse_level("loud").unwrap_err().contains("loud"));
    }
}
