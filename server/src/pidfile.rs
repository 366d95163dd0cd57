//! `--pid FILE`: the master's pid, for scripts that signal it.

use std::path::PathBuf;

use log::error;

use crate::error::{Context, Result};

/// The pid file this master wrote, if any. A master started by USR2 writes `FILE.2` while the old
/// master lives (which still owns `FILE`), as gunicorn, and renames it to `FILE` once promoted.
#[derive(Debug, Default)]
pub struct PidFile {
    /// The file written now.
    current: Option<PathBuf>,
    /// The configured name, taken over on promotion.
    configured: Option<PathBuf>,
}

impl PidFile {
    /// Write our pid to `path`.
    pub fn create(path: Option<PathBuf>) -> Result<Self> {
        Self::write(path.clone(), path)
    }

    /// Write our pid to `path` + `.2`: we were started by USR2 and the old master still runs.
    pub fn create_for_successor(path: Option<PathBuf>) -> Result<Self> {
        let current = path.clone().map(|p| {
            let mut name = p.into_os_string();
            name.push(".2");
            PathBuf::from(name)
        });
        Self::write(current, path)
    }

    fn write(current: Option<PathBuf>, configured: Option<PathBuf>) -> Result<Self> {
        if let Some(path) = &current {
            std::fs::write(path, format!("{}\n", std::process::id()))
                .with_context(|| format!("cannot write pid file {}", path.display()))?;
        }
        Ok(PidFile {
            current,
            configured,
        })
    }

    /// The old master is gone: take over the configured name.
    pub fn promote(&mut self) {
        if let (Some(from), Some(to)) = (self.current.as_ref(), self.configured.as_ref()) {
            if from == to {
                return;
            }
            match std::fs::rename(from, to) {
                Ok(()) => self.current = Some(to.clone()),
                Err(e) => error!("cannot rename {} to {}: {e}", from.display(), to.display()),
            }
        }
    }

    /// Remove the file at exit.
    pub fn remove(&self) {
        if let Some(path) = &self.current {
            let _ = std::fs::remove_file(path);
        }
    }
}
