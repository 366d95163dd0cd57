//! Run a config file in a child Python and read back its globals as data.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::{Error, Location};

/// The config evaluator: run as `__main__` it prints the globals; imported, its `load(location)`
/// executes a config file and returns its globals (how workers get their hook callables).
pub const SCRIPT: &str = include_str!("evaluate.py");

/// A config file's module globals (names starting with `_` and modules left out).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Namespace {
    /// Plain data: str, int, float, bool, None, lists and dicts of those.
    #[serde(default)]
    pub values: BTreeMap<String, serde_json::Value>,
    /// Functions and classes, by their `__qualname__`.
    #[serde(default)]
    pub callables: BTreeMap<String, String>,
    /// Anything else, by its `repr()`.
    #[serde(default)]
    pub others: BTreeMap<String, String>,
    /// What the config file wrote to stdout or stderr while it ran.
    #[serde(skip)]
    pub output: String,
}

/// Execute the config at `location` with `python` (`python -c SCRIPT LOCATION`), in the current
/// working directory, as gunicorn does.
pub fn evaluate(location: &Location, python: &Path) -> Result<Namespace, Error> {
    if let Location::File(path) = location {
        if !path.exists() {
            return Err(Error::Missing(location.clone()));
        }
    }
    let output = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(location.argument())
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            location: location.clone(),
            python: python.to_path_buf(),
            source,
        })?;
    let printed = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(Error::Raised {
            location: location.clone(),
            output: printed.trim_end().to_string(),
        });
    }
    let mut namespace: Namespace =
        serde_json::from_slice(&output.stdout).map_err(|e| Error::Protocol {
            location: location.clone(),
            python: python.to_path_buf(),
            reason: e.to_string(),
        })?;
    namespace.output = printed;
    Ok(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(name: &str, text: &str) -> (std::path::PathBuf, Location) {
        let dir =
            std::env::temp_dir().join(format!("ferrocorn-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gunicorn.conf.py");
        std::fs::write(&path, text).unwrap();
        (dir, Location::File(path))
    }

    #[test]
    fn globals_come_back_as_data_hooks_and_reprs() {
        let (dir, location) = write_config(
            "globals",
            "import multiprocessing\nprint('hello from the config')\nworkers = 2 + 3\nbind = ('a:1',)\n\
             _private = 1\ndef post_fork(server, worker): pass\nmarker = object()\n",
        );
        let ns = evaluate(&location, Path::new("python3")).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(ns.values["workers"], 5);
        assert_eq!(ns.values["bind"], serde_json::json!(["a:1"]));
        assert!(!ns.values.contains_key("_private") && !ns.values.contains_key("multiprocessing"));
        assert_eq!(ns.callables["post_fork"], "post_fork");
        assert!(
            ns.others["marker"].starts_with("<object object"),
            "{:?}",
            ns.others
        );
        assert!(
            ns.output.contains("hello from the config"),
            "{:?}",
            ns.output
        );
    }

    #[test]
    fn a_raising_config_reports_its_traceback_and_name() {
        let (dir, location) = write_config("raises", "workers = 1\nraise ValueError('boom')\n");
        let err = evaluate(&location, Path::new("python3")).unwrap_err();
        std::fs::remove_dir_all(dir).unwrap();
        let text = err.to_string();
        assert!(
            text.contains("failed to read config file") && text.contains("gunicorn.conf.py"),
            "{text}"
        );
        assert!(
            text.contains("Traceback") && text.contains("ValueError: boom"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let location = Location::File("/nonexistent/g.py".into());
        let err = evaluate(&location, Path::new("python3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/g.py does not exist"
        );
    }
}
