//! Embedded CPython serving a WSGI (PEP 3333) callable as a ferrocorn [`App`].
//!
//! The only crate that links Python. The arbiter never initializes Python unless `--preload` asks
//! for the app to be imported before forking; then [`before_fork`], [`after_fork_parent`] and
//! [`after_fork_child`] must wrap every fork.
//!
//! INTERFACE STUB — the wsgi helper owns this crate and replaces the `todo!()`s. Keep the public
//! names and signatures (adding is fine).

use std::path::PathBuf;

use ferrocorn_worker::{App, AppError, Request, Response};

/// Exit code of a worker (and then of the master) whose app could not be loaded (gunicorn's).
pub const APP_LOAD_ERROR: i32 = 4;

/// How to find and load the app.
#[derive(Debug, Clone, Default)]
pub struct WsgiConfig {
    /// `module:callable`, `module:factory(args)` or `module`.
    pub app: String,
    /// `--chdir`: change directory before loading (and put it first on sys.path).
    pub chdir: Option<PathBuf>,
    /// `--pythonpath` entries, prepended to sys.path.
    pub pythonpath: Vec<PathBuf>,
    /// `--virtualenv` or `$VIRTUAL_ENV`.
    pub virtualenv: Option<PathBuf>,
}

/// Why the app could not be loaded. Every message names the module and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid application spec {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },
    #[error("failed to find application module {module:?}: {reason}")]
    ModuleNotFound { module: String, reason: String },
    #[error("error importing application module {module:?}:\n{traceback}")]
    ImportFailed { module: String, traceback: String },
    #[error("failed to find attribute {name:?} in {module:?}")]
    AttributeMissing { module: String, name: String },
    #[error("application object {spec:?} is not callable")]
    NotCallable { spec: String },
    #[error("virtualenv {venv} uses Python {venv_version} but ferrocorn was built with Python {built_version}")]
    VenvVersion { venv: PathBuf, venv_version: String, built_version: String },
    #[error("initializing Python: {0}")]
    Init(String),
}

/// A loaded WSGI callable.
#[derive(Debug)]
pub struct WsgiApp {
    _todo: (),
}

/// Initialize the interpreter (once per process) with the venv/paths from `config`, then import the app.
pub fn load(_config: &WsgiConfig) -> Result<WsgiApp, LoadError> {
    todo!()
}

impl App for WsgiApp {
    fn call(&mut self, _req: &mut Request<'_>, _res: &mut Response<'_>) -> Result<(), AppError> {
        todo!()
    }
}

/// Before fork in a process where Python is initialized (`--preload`): `gc.freeze()` and
/// `PyOS_BeforeFork`. No-op if Python was never initialized here.
pub fn before_fork() {}

/// `PyOS_AfterFork_Parent` in the parent after fork.
pub fn after_fork_parent() {}

/// `PyOS_AfterFork_Child` in the child after fork.
pub fn after_fork_child() {}
