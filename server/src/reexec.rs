//! USR2: start this server again as a new master that adopts our listening sockets, as gunicorn
//! does (its START_CTX, GUNICORN_FD and GUNICORN_PID).

use ferrocorn_listener::{BindSpec, ListenOptions, Listener};
use log::{error, info};

use crate::error::{Context, Result};

/// Listening fds a re-executing master (USR2) passes on, comma-separated (gunicorn: GUNICORN_FD).
const REEXEC_FDS_ENV: &str = "FERROCORN_FD";
/// The pid of the master that re-executed us (gunicorn: GUNICORN_PID).
const REEXEC_PARENT_ENV: &str = "FERROCORN_PID";

/// Take a variable out of the environment, so neither workers nor apps see it.
fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    // Still single-threaded (called before any fork or thread), so no concurrent reader exists.
    std::env::remove_var(name);
    value
}

/// Whether this master was started by USR2 (it is then already detached if the first was).
pub(crate) fn is_reexec() -> bool {
    std::env::var_os(REEXEC_PARENT_ENV).is_some()
}

/// The pid of the master that started us by USR2, if it did.
pub(crate) fn take_parent_master() -> Option<i32> {
    take_env(REEXEC_PARENT_ENV).and_then(|pid| pid.parse::<i32>().ok())
}

/// The listeners of the master that re-executed us, if we were started by USR2.
pub(crate) fn inherited_listeners(listen: &ListenOptions) -> Result<Option<Vec<Listener>>> {
    let Some(list) = take_env(REEXEC_FDS_ENV) else {
        return Ok(None);
    };
    let listeners = list
        .split(',')
        .map(|fd| {
            let spec: BindSpec = format!("fd://{fd}")
                .parse()
                .with_context(|| format!("{REEXEC_FDS_ENV}={list:?}"))?;
            let listener = ferrocorn_listener::bind(&spec, listen)
                .with_context(|| format!("{REEXEC_FDS_ENV}={list:?}"))?;
            // The unix socket files are ours to remove at exit, as they were the old master's.
            Ok(match listener {
                Listener::Unix {
                    listener,
                    path: None,
                } => {
                    let path = listener
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(std::path::Path::to_path_buf));
                    Listener::Unix { listener, path }
                }
                other => other,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(listeners))
}

/// What USR2 needs to start this server again: gunicorn's START_CTX.
#[derive(Debug)]
pub(crate) struct StartContext {
    argv: Vec<std::ffi::OsString>,
    cwd: std::path::PathBuf,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl StartContext {
    pub(crate) fn capture() -> Result<Self> {
        Ok(StartContext {
            argv: std::env::args_os().collect(),
            cwd: std::env::current_dir().context("reading the working directory")?,
            env: std::env::vars_os()
                .filter(|(k, _)| {
                    !["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]
                        .iter()
                        .any(|name| k == name)
                })
                .collect(),
        })
    }

    /// Start the same command line in a new process that adopts `listeners` (USR2). Returns the
    /// new master's pid.
    pub(crate) fn reexec(&self, listeners: &[Listener]) -> Option<i32> {
        let set = |inheritable: bool| {
            listeners
                .iter()
                .try_for_each(|l| l.set_inheritable(inheritable))
        };
        if let Err(e) = set(true) {
            error!("USR2: cannot pass the listeners on: {e}");
            let _ = set(false);
            return None;
        }
        let fds: Vec<String> = listeners
            .iter()
            .map(|l| std::os::fd::AsRawFd::as_raw_fd(l).to_string())
            .collect();
        let spawned = std::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(REEXEC_FDS_ENV, fds.join(","))
            .env(REEXEC_PARENT_ENV, std::process::id().to_string())
            .spawn();
        // Only the new master may inherit them; our own later children (workers are forked,
        // not exec'ed) never need it.
        if let Err(e) = set(false) {
            error!("USR2: cannot restore close-on-exec on the listeners: {e}");
        }
        match spawned {
            Ok(child) => {
                info!("Re-executing: new master (pid: {})", child.id());
                Some(child.id() as i32)
            }
            Err(e) => {
                error!("USR2: cannot start {:?}: {e}", self.argv[0]);
                None
            }
        }
    }
}
