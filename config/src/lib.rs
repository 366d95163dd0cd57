//! gunicorn-style configuration for ferrocorn: config files (Python, evaluated in a short-lived
//! child interpreter so the master stays free of Python), `GUNICORN_CMD_ARGS`, and the table of
//! every gunicorn setting with what ferrocorn does with it.
//!
//! Each source becomes flag tokens; the caller's flag parser decides the values and the
//! precedence (defaults < config file < `GUNICORN_CMD_ARGS` < `FERROCORN_CMD_ARGS` < command line).
#![warn(missing_docs)]

mod evaluate;
mod flags;
mod settings;
mod translate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use evaluate::{evaluate, Namespace, SCRIPT as EVALUATE_SCRIPT};
pub use flags::take_unsupported_flags;
pub use settings::{by_flag, lookup, Setting, Shape, Status, MASTER_HOOKS, SETTINGS, WORKER_HOOKS};
pub use translate::{translate, Translated};

/// The config file gunicorn reads when no `-c` is given, from the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "gunicorn.conf.py";

/// Why a configuration source could not be used; each names the source and the setting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `-c` file (or the default one asked for by name) is not there.
    #[error("config file {0} does not exist")]
    Missing(Location),
    /// The Python that evaluates config files could not be started.
    #[error("cannot run {python} to read config file {location}: {source}")]
    Spawn {
        /// The config file.
        location: Location,
        /// The interpreter tried.
        python: PathBuf,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// The config file raised; `output` is Python's traceback.
    #[error("failed to read config file {location}:\n{output}")]
    Raised {
        /// The config file.
        location: Location,
        /// What the evaluating child wrote (the traceback).
        output: String,
    },
    /// The evaluating child answered something other than its JSON.
    #[error("config file {location}: unexpected output from {python}: {reason}")]
    Protocol {
        /// The config file.
        location: Location,
        /// The interpreter that evaluated it.
        python: PathBuf,
        /// What was wrong with the answer.
        reason: String,
    },
    /// A setting's value has the wrong type or shape.
    #[error("{origin}: invalid value for {setting}: {value} ({expected})")]
    InvalidValue {
        /// The source (config file, variable) that set it.
        origin: String,
        /// The setting's name.
        setting: &'static str,
        /// The value, as JSON text.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A setting ferrocorn lacks, set to a value whose absence would change security or
    /// correctness.
    #[error("{origin}: {setting} = {value} is not supported: {why}")]
    Refused {
        /// The source (config file, variable, command line) that set it.
        origin: String,
        /// The setting's name.
        setting: &'static str,
        /// The value, as JSON text.
        value: String,
        /// Why ferrocorn refuses it.
        why: &'static str,
    },
    /// `$GUNICORN_CMD_ARGS` (or `$FERROCORN_CMD_ARGS`) cannot be split like a shell would.
    #[error("{var}: unbalanced quotes in {text:?}")]
    Quoting {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        text: String,
    },
}

/// Where a config file comes from: `-c PATH` (or `file:PATH`) or `-c python:module.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A Python file.
    File(PathBuf),
    /// An importable module (`python:NAME`).
    Module(String),
}

impl Location {
    /// Parse a `-c` value as gunicorn does.
    pub fn parse(value: &str) -> Location {
        if let Some(module) = value.strip_prefix("python:") {
            Location::Module(module.to_string())
        } else {
            Location::File(PathBuf::from(value.strip_prefix("file:").unwrap_or(value)))
        }
    }

    /// The config to read: the `-c` value if one was given, else `./gunicorn.conf.py` in `cwd`
    /// when it exists, else none.
    pub fn find(explicit: Option<&str>, cwd: &Path) -> Option<Location> {
        match explicit {
            Some(value) => Some(Location::parse(value)),
            None => {
                let default = cwd.join(DEFAULT_CONFIG_FILE);
                default
                    .is_file()
                    .then(|| Location::File(PathBuf::from(".").join(DEFAULT_CONFIG_FILE)))
            }
        }
    }

    /// The value to hand the evaluating script (`python:` kept for modules).
    pub fn argument(&self) -> String {
        match self {
            Location::File(path) => path.display().to_string(),
            Location::Module(name) => format!("python:{name}"),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.argument())
    }
}

/// Split an environment variable of flags (`GUNICORN_CMD_ARGS`) as a POSIX shell would, like
/// gunicorn's `shlex.split`.
pub fn split_cmd_args(var: &'static str, text: &str) -> Result<Vec<String>, Error> {
    shlex::split(text).ok_or_else(|| Error::Quoting {
        var,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_like_gunicorn() {
        assert_eq!(
            Location::parse("python:app.conf"),
            Location::Module("app.conf".into())
        );
        assert_eq!(
            Location::parse("file:/etc/g.py"),
            Location::File("/etc/g.py".into())
        );
        assert_eq!(Location::parse("g.py"), Location::File("g.py".into()));
    }

    #[test]
    fn cmd_args_split_like_a_shell() {
        assert_eq!(
            split_cmd_args("GUNICORN_CMD_ARGS", "--bind=127.0.0.1:1 -e 'A=b c'").unwrap(),
            ["--bind=127.0.0.1:1", "-e", "A=b c"]
        );
        assert!(matches!(
            split_cmd_args("GUNICORN_CMD_ARGS", "-e 'A=b"),
            Err(Error::Quoting { .. })
        ));
    }

    #[test]
    fn every_setting_is_listed_once() {
        let mut names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a setting is listed twice");
        for harmless in SETTINGS.iter().filter_map(|s| match s.status {
            Status::Unsupported { harmless, .. } => Some(harmless),
            _ => None,
        }) {
            for text in harmless {
                serde_json::from_str::<serde_json::Value>(text).expect(text);
            }
        }
    }
}
