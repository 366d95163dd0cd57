//! Embedded CPython serving a WSGI (PEP 3333) callable as a ferrocorn [`App`].
//!
//! The only crate that links Python. [`load`] starts the interpreter once per process (optionally
//! inside a virtualenv), imports the APP spec and returns a [`WsgiApp`]; the worker calls
//! [`App::call`] per request, which takes the GIL only for the call (the body is read and the
//! response written with the GIL released).
//!
//! # `--threads`
//! [`WsgiApp::for_threads`] gives one app per app thread (`wsgi.multithread` is true when there
//! are several); any number of them may be called at once, each from its own thread. Each app's
//! [`App::interrupter`], called once on its thread, keeps that thread's Python thread state for
//! the thread's life (so `threading.local` values last between requests) and is how the worker
//! interrupts a request past `--timeout` (`WorkerTimeout` raised in the thread).
//!
//! # `--preload`
//! The arbiter never initializes Python unless `--preload` asks for the app to be imported before
//! forking; then [`before_fork`], [`after_fork_parent`] and [`after_fork_child`] must wrap every
//! fork. The [`WsgiApp`] loaded in the master stays valid in each child after
//! [`after_fork_child`] (the child owns a copy-on-write image of the same interpreter): keep using
//! it, or call [`load`] again with the same config, which returns the already loaded app instead
//! of importing anew.
//!
//! Python is never finalized (processes just exit): call [`before_exit`] in a process that loaded
//! an app before it exits, to run `atexit` callbacks.
//!
//! # Environment variables read at load time (as gunicorn reads them)
//! - `SCRIPT_NAME`: the prefix the app is mounted under; stripped from `PATH_INFO`, and a request
//!   outside it is answered 500.
//! - `FORWARDED_ALLOW_IPS` (addresses and networks; `*` for all; unset: `127.0.0.1,::1`): the
//!   proxies whose secure-scheme headers ([`WsgiConfig::secure_scheme_headers`]; by default
//!   `X-Forwarded-Proto: https` / `X-Forwarded-Protocol: ssl` / `X-Forwarded-Ssl: on`) set
//!   `wsgi.url_scheme` (headers that disagree get a 400) and whose
//!   `SCRIPT_NAME` field replaces `$SCRIPT_NAME`. Unix-socket clients are always trusted. An
//!   invalid entry stops the load (exit 4) with a message naming it.
//!
//! Pieces are public for tests and other embedders: [`environ`] builds environs from plain
//! [`RequestInfo`], and [`WsgiApp::serve`] runs a request against any worker [`Response`] (one
//! in memory, [`ferrocorn_worker::MemoryConn`], in tests).
#![warn(missing_docs)]

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use ferrocorn_worker::{App, AppError, Interrupter, Request, Response};

mod abort;
pub mod environ;
mod hooks;
mod imported;
mod interp;
mod response;
mod serve;
mod spec;
mod stream;
pub mod venv;

pub use environ::RequestInfo;
pub use ferrocorn_worker::Headers;
pub use hooks::{
    load_config_hooks, ConfigHooks, HookFailed, HookedApp, MasterHooks, WorkerHooks, WorkerIdentity,
};
pub use imported::imported_files;
pub use interp::ensure_initialized;
pub use response::parse_status;

/// The embedded Python's version line (`3.11.2 (main, ...) [GCC ...]`) and the libpython file
/// this process mapped, for `ferrocorn --version`. Needs no initialized interpreter.
pub fn python_build() -> (String, Option<PathBuf>) {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string and may be called before
    // the interpreter is initialized.
    let version = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) };
    let library = std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|maps| {
            maps.lines()
                .filter_map(|line| line.split_whitespace().nth(5))
                .find(|path| path.contains("libpython"))
                .map(PathBuf::from)
        });
    (version.to_string_lossy().into_owned(), library)
}

/// How to find and load the app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WsgiConfig {
    /// `module:callable`, `module:factory(args)` or `module`.
    pub app: String,
    /// `--chdir`: change directory before loading (and put it first on sys.path).
    pub chdir: Option<PathBuf>,
    /// `--pythonpath` entries, prepended to sys.path (in the order given).
    pub pythonpath: Vec<PathBuf>,
    /// `--virtualenv` or `$VIRTUAL_ENV`.
    pub virtualenv: Option<PathBuf>,
    /// The config file's `secure_scheme_headers` (default: gunicorn's three).
    pub secure_scheme_headers: environ::SecureSchemeHeaders,
}

/// Why the app could not be loaded. Every message names the module and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The APP spec is not `module`, `module:name` or `module:factory(...)`.
    #[error("invalid application spec {spec:?}: {reason}")]
    BadSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The module itself is not on the path (not a missing import inside it).
    #[error("failed to find application module {module:?}: {reason}")]
    ModuleNotFound {
        /// The module name.
        module: String,
        /// Python's message, with a hint when a file name was given.
        reason: String,
    },
    /// Importing the module (or reading an attribute of it) raised.
    #[error("error importing application module {module:?}:\n{traceback}")]
    ImportFailed {
        /// The module name.
        module: String,
        /// The formatted Python traceback.
        traceback: String,
    },
    /// The module has no attribute of that name.
    #[error("failed to find attribute {name:?} in {module:?}")]
    AttributeMissing {
        /// The module name.
        module: String,
        /// The dotted attribute path, up to the missing part.
        name: String,
    },
    /// The object (or the factory to call) is not callable.
    #[error("application object {spec:?} is not callable")]
    NotCallable {
        /// The spec as given.
        spec: String,
    },
    /// Calling the factory of `module:factory(...)` raised.
    #[error("error calling application factory {spec:?}:\n{traceback}")]
    FactoryFailed {
        /// The spec as given.
        spec: String,
        /// The formatted Python traceback.
        traceback: String,
    },
    /// `--chdir` failed.
    #[error("cannot change directory to {dir}: {reason}")]
    Chdir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The virtualenv's Python is not the one ferrocorn links.
    #[error("virtualenv {venv} uses Python {venv_version} but ferrocorn was built with Python {built_version}")]
    VenvVersion {
        /// The virtualenv's directory.
        venv: PathBuf,
        /// Its Python's `major.minor`, from `pyvenv.cfg`.
        venv_version: String,
        /// The linked Python's `major.minor`.
        built_version: String,
    },
    /// The interpreter could not be started or set up; the text says which step failed.
    #[error("initializing Python: {0}")]
    Init(String),
    /// A setting from the environment (`FORWARDED_ALLOW_IPS`) is invalid.
    #[error("{0}")]
    Setting(String),
}

/// A loaded WSGI callable.
#[derive(Debug)]
pub struct WsgiApp {
    app: Py<PyAny>,
    /// The environ keys that never change, copied per request.
    base: Py<PyDict>,
    /// `$SCRIPT_NAME` and `$FORWARDED_ALLOW_IPS` as they were at load time.
    env_config: environ::EnvironConfig,
    /// The last request's environ, kept (only when asked) for the access log's `{var}e`.
    last_environ: Option<std::sync::Mutex<Option<Py<PyDict>>>>,
    /// The thread calling this app, for [`App::interrupter`] (each app has its own).
    thread: Arc<abort::ThreadSlot>,
}

/// Apps loaded in this process, so a second `load` of the same config (a preloaded app, in the
/// child) reuses the object instead of importing and calling factories again.
static LOADED: Mutex<Vec<(WsgiConfig, WsgiApp)>> = Mutex::new(Vec::new());

/// Initialize the interpreter (once per process) with the venv/paths from `config`, then import the
/// app. Returns the already loaded app when this config was loaded before in this process.
pub fn load(config: &WsgiConfig) -> Result<WsgiApp, LoadError> {
    interp::ensure_initialized(config.virtualenv.as_deref())?;
    // Locked before taking the GIL: importing releases the GIL now and then, and a thread
    // holding the GIL must never wait for this lock.
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    Python::attach(|py| {
        if let Some((_, app)) = loaded.iter().find(|(c, _)| c == config) {
            return Ok(app.clone_ref_with(py));
        }
        let app = load_new(py, config)?;
        loaded.push((config.clone(), app.clone_ref_with(py)));
        Ok(app)
    })
}

fn init_err(py: Python<'_>) -> impl Fn(PyErr) -> LoadError + '_ {
    move |e| LoadError::Init(format_traceback(py, &e))
}

/// Import the app named by `config` (after `--chdir` and `--pythonpath`) and read the environ
/// settings that come from the process environment.
fn load_new(py: Python<'_>, config: &WsgiConfig) -> Result<WsgiApp, LoadError> {
    let environ = py
        .import("os")
        .and_then(|os| os.getattr("environ"))
        .map_err(init_err(py))?;
    if let Some(dir) = &config.chdir {
        std::env::set_current_dir(dir).map_err(|e| LoadError::Chdir {
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
    }
    prepend_sys_path(py, config)?;
    let app = spec::import_app(py, &config.app)?;
    let base = environ::base_environ(py).map_err(init_err(py))?;
    let env_config = environ_config(py, &environ, config)?;
    Ok(WsgiApp {
        app: app.unbind(),
        base: base.unbind(),
        env_config,
        last_environ: None,
        thread: Default::default(),
    })
}

/// Like gunicorn: the working directory first on `sys.path`, the `--pythonpath` entries before it
/// (each added only when not already there).
fn prepend_sys_path(py: Python<'_>, config: &WsgiConfig) -> Result<(), LoadError> {
    let cwd =
        std::env::current_dir().map_err(|e| LoadError::Init(format!("current directory: {e}")))?;
    let mut front = Vec::new();
    for p in &config.pythonpath {
        front.push(
            std::path::absolute(p)
                .map_err(|e| LoadError::Init(format!("--pythonpath {}: {e}", p.display())))?,
        );
    }
    front.push(cwd);
    let sys_path = py
        .import("sys")
        .and_then(|s| s.getattr("path"))
        .map_err(init_err(py))?;
    for dir in front.iter().rev() {
        let dir = dir.to_string_lossy();
        if !sys_path.contains(dir.as_ref()).map_err(init_err(py))? {
            sys_path
                .call_method1("insert", (0, dir.as_ref()))
                .map_err(init_err(py))?;
        }
    }
    Ok(())
}

/// `$SCRIPT_NAME` (read through `os.environ` after the import, so a value the app sets there
/// counts) and `$FORWARDED_ALLOW_IPS`, with `config`'s secure-scheme headers.
fn environ_config(
    py: Python<'_>,
    environ: &Bound<'_, PyAny>,
    config: &WsgiConfig,
) -> Result<environ::EnvironConfig, LoadError> {
    let script_name = environ
        .call_method1("get", ("SCRIPT_NAME", ""))
        .and_then(|s| s.extract::<String>())
        .map_err(init_err(py))?
        .trim_end_matches('/')
        .to_string();
    // gunicorn's default for --forwarded-allow-ips is this variable, else the local host.
    // Unset means the default; set but empty means no proxy is trusted (as in gunicorn).
    let trusted = match std::env::var_os("FORWARDED_ALLOW_IPS") {
        Some(list) => {
            environ::TrustedPeers::parse(&list.to_string_lossy()).map_err(LoadError::Setting)?
        }
        None => environ::TrustedPeers::default(),
    };
    Ok(environ::EnvironConfig {
        script_name,
        trusted,
        secure_headers: config.secure_scheme_headers.clone(),
    })
}

impl WsgiApp {
    /// Wrap an already loaded WSGI callable (Python must be running), with no `SCRIPT_NAME` and
    /// gunicorn's default trusted proxies (the local host).
    pub fn from_object(app: Py<PyAny>) -> Result<WsgiApp, LoadError> {
        Python::attach(|py| {
            let base = environ::base_environ(py).map_err(init_err(py))?;
            Ok(WsgiApp {
                app,
                base: base.unbind(),
                env_config: environ::EnvironConfig::default(),
                last_environ: None,
                thread: Default::default(),
            })
        })
    }

    /// Keep each request's environ until the next one, for [`App::log_var`] (the access log's
    /// `%({NAME}e)s` atoms); otherwise it is released when the request is over.
    pub fn keeping_environ(mut self) -> WsgiApp {
        self.last_environ = Some(Default::default());
        self
    }

    /// The Python callable.
    pub fn object(&self) -> &Py<PyAny> {
        &self.app
    }

    /// Another handle to the same Python app (for a preloaded app used after fork, or threads).
    pub fn clone_ref(&self) -> WsgiApp {
        Python::attach(|py| self.clone_ref_with(py))
    }

    fn clone_ref_with(&self, py: Python<'_>) -> WsgiApp {
        WsgiApp {
            app: self.app.clone_ref(py),
            base: self.base.clone_ref(py),
            env_config: self.env_config.clone(),
            last_environ: self.last_environ.as_ref().map(|_| Default::default()),
            thread: Default::default(),
        }
    }

    /// One app per app thread (`--threads`), handles to this one: each keeps its own last
    /// environ and thread, and their environs say `wsgi.multithread` when `threads` > 1.
    pub fn for_threads(self, threads: usize) -> Vec<WsgiApp> {
        let threads = threads.max(1);
        Python::attach(|py| {
            let mut app = self;
            if threads > 1 {
                match multithread_base(app.base.bind(py)) {
                    Ok(base) => app.base = base.unbind(),
                    Err(e) => log::error!("setting wsgi.multithread: {e}"),
                }
            }
            let mut apps: Vec<WsgiApp> = (1..threads).map(|_| app.clone_ref_with(py)).collect();
            apps.insert(0, app);
            apps
        })
    }

    /// Run one request: `body` is the request body, the response goes to `res`. Takes the GIL
    /// for the duration; errors are logged here (tracebacks, invalid responses).
    pub fn serve(
        &self,
        info: &RequestInfo<'_>,
        body: &mut dyn Read,
        res: &mut Response<'_>,
    ) -> Result<(), AppError> {
        Python::attach(|py| {
            self.thread.begin(py);
            let source = serve::EnvironSource {
                base: self.base.bind(py),
                config: &self.env_config,
                keep: self.last_environ.as_ref(),
            };
            let result = serve::serve(py, self.app.bind(py), &source, info, body, res);
            self.thread.end(py);
            result
        })
    }
}

impl App for WsgiApp {
    fn call(&mut self, req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError> {
        let info = RequestInfo::from_request(req);
        self.serve(&info, req, res)
    }

    /// The last request's environ value `name`, as `str()` gives it.
    fn log_var(&self, name: &str) -> Option<String> {
        let kept = self.last_environ.as_ref()?.lock().ok()?;
        let environ = kept.as_ref()?;
        Python::attach(|py| {
            let value = environ.bind(py).get_item(name).ok()??;
            value.str().ok().map(|s| s.to_string())
        })
    }

    /// See [`abort`]: also keeps this thread's Python thread state for the thread's life.
    fn interrupter(&mut self) -> Option<Interrupter> {
        Some(abort::interrupter(&self.thread))
    }
}

/// A copy of `base` saying `wsgi.multithread`.
fn multithread_base<'py>(base: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
    let copy = base.copy()?;
    copy.set_item("wsgi.multithread", true)?;
    Ok(copy)
}

/// The traceback of `err` as Python prints it.
pub(crate) fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        // The traceback travels beside the exception until Python code catches it, so pass it
        // explicitly (value.__traceback__ may not be set yet).
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let joined = pyo3::types::PyString::new(py, "").call_method1("join", (lines,))?;
        joined.extract::<String>()
    });
    formatted.unwrap_or_else(|_| err.to_string())
}

/// In a worker, after the app is loaded (never in the master, even with `--preload`): on SIGABRT
/// (the arbiter's, for a worker that stopped beating or failed to end a timed-out request),
/// faulthandler dumps every thread's Python stack to the error log and the worker dies of the
/// signal (so does it of SIGSEGV and the other fatal signals, after the same dump). A request
/// past `--timeout` is interrupted by the worker itself (see [`App::interrupter`]).
pub fn install_abort_handler() -> Result<(), LoadError> {
    abort::install()
}

/// `SERVER_SOFTWARE`, in each request's environ and in the processes' environment. It starts
/// with gunicorn's token because apps tell gunicorn from other servers by it (httpbin, for one,
/// accepts chunked request bodies only when it starts with `gunicorn/`), and ferrocorn serves
/// them as gunicorn does; ferrocorn's own name and version follow.
pub const SERVER_SOFTWARE: &str = concat!(
    "gunicorn/27.0.1 (ferrocorn/",
    env!("CARGO_PKG_VERSION"),
    ")"
);

/// Set `$SERVER_SOFTWARE` to [`SERVER_SOFTWARE`], as gunicorn's arbiter does before it applies
/// `--env` (which may still change it): the hooks, the app and what it starts see it.
///
/// # Safety
/// No other thread may read or write the environment meanwhile (call it before starting any).
pub unsafe fn export_server_software() {
    // SAFETY: the caller promises no other thread touches the environment.
    unsafe { std::env::set_var("SERVER_SOFTWARE", SERVER_SOFTWARE) };
}

/// Before fork in a process where Python is initialized (`--preload`): `gc.freeze()` and
/// `PyOS_BeforeFork`, holding the GIL until the matching after-fork hook. No-op if Python was never
/// initialized here.
pub fn before_fork() {
    interp::before_fork()
}

/// `PyOS_AfterFork_Parent` in the parent after fork (releases the GIL taken by [`before_fork`]).
pub fn after_fork_parent() {
    interp::after_fork_parent()
}

/// `PyOS_AfterFork_Child` in the child after fork (releases the GIL taken by [`before_fork`]).
pub fn after_fork_child() {
    interp::after_fork_child()
}

/// Run Python's `atexit` callbacks and flush `sys.stdout`/`sys.stderr`: call once in a process
/// that loaded an app (a worker, or a master with `--preload`) just before it exits, since the
/// interpreter is never finalized. No-op if Python was never initialized here.
pub fn before_exit() {
    interp::before_exit()
}
