//! Starting the embedded interpreter (once per process) and the fork hooks for `--preload`.
//!
//! The interpreter is started with our own `PyConfig` rather than pyo3's `Python::initialize` so
//! that a virtualenv can be selected (through `executable`, exactly how the venv's own `python`
//! finds its `pyvenv.cfg`) and Python installs no signal handlers (the worker owns signals). After
//! start-up the GIL is released: the worker waits on sockets without it and takes it per request.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::venv;
use crate::LoadError;

/// How this process's interpreter was started: `None` = not by us (yet).
/// `Some(venv)` = started here, with that virtualenv (or none).
static STARTED: Mutex<Option<Option<PathBuf>>> = Mutex::new(None);

/// The GIL state taken in [`before_fork`], released by the `after_fork_*` hooks.
static FORK_GIL: Mutex<Option<ffi::PyGILState_STATE>> = Mutex::new(None);

fn is_initialized() -> bool {
    // SAFETY: Py_IsInitialized may be called at any time, even before initialization.
    unsafe { ffi::Py_IsInitialized() != 0 }
}

/// Start the interpreter unless it already runs. A virtualenv can only be chosen by the call that
/// starts it; asking for a different one later is an error.
pub fn ensure_initialized(venv_dir: Option<&Path>) -> Result<(), LoadError> {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    let wanted = venv_dir
        .map(std::path::absolute)
        .transpose()
        .map_err(|e| LoadError::Init(e.to_string()))?;
    if let Some(current) = started.as_ref() {
        if *current != wanted {
            return Err(LoadError::Init(format!(
                "Python is already running in this process with virtualenv {}; cannot switch to {}",
                describe(current.as_deref()),
                describe(wanted.as_deref())
            )));
        }
        return Ok(());
    }
    if is_initialized() {
        // Someone else (an embedding host) started it: use it as it is.
        if wanted.is_some() {
            return Err(LoadError::Init(
                "Python was initialized outside ferrocorn; cannot apply a virtualenv".into(),
            ));
        }
        return Ok(());
    }
    let executable = match &wanted {
        Some(dir) => Some(venv::check(dir)?.executable),
        None => None,
    };
    start(executable.as_deref())?;
    *started = Some(wanted);
    Ok(())
}

fn describe(venv: Option<&Path>) -> String {
    venv.map_or_else(|| "(none)".to_string(), |p| p.display().to_string())
}

/// Owns a `PyConfig` and clears it on every exit path.
struct Config(Box<ffi::PyConfig>);

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: the config was set up by PyConfig_InitPythonConfig; clearing frees its strings.
        unsafe { ffi::PyConfig_Clear(&mut *self.0) }
    }
}

fn status_error(what: &str, status: ffi::PyStatus) -> LoadError {
    LoadError::Init(format!("{what}: {}", status_message(status)))
}

fn status_message(status: ffi::PyStatus) -> String {
    if status.err_msg.is_null() {
        return "unknown error".to_string();
    }
    // SAFETY: a non-null err_msg of a PyStatus is a static NUL-terminated C string.
    unsafe { CStr::from_ptr(status.err_msg) }
        .to_string_lossy()
        .into_owned()
}

/// `sys.argv` = this process's command line, as gunicorn's apps see gunicorn's (not parsed).
fn set_argv(config: &mut Config) -> Result<(), LoadError> {
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut ptrs: Vec<*const std::ffi::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    let len = ffi::Py_ssize_t::try_from(ptrs.len()).unwrap_or(0);
    // SAFETY: the config is initialized; ptrs holds `len` NUL-terminated strings that outlive
    // the call (Python copies them).
    let status = unsafe { ffi::PyConfig_SetBytesArgv(&mut *config.0, len, ptrs.as_mut_ptr()) };
    // SAFETY: plain inspection of a status value.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 {
        return Err(status_error("setting sys.argv", status));
    }
    Ok(())
}

fn start(executable: Option<&Path>) -> Result<(), LoadError> {
    // SAFETY: PyConfig is a plain C struct; all-zero is a valid value for
    // PyConfig_InitPythonConfig to overwrite.
    let mut config = Config(Box::new(unsafe { std::mem::zeroed() }));
    // SAFETY: the pointer is to a live, writable PyConfig.
    unsafe { ffi::PyConfig_InitPythonConfig(&mut *config.0) };
    // The worker and arbiter handle signals themselves.
    config.0.install_signal_handlers = 0;
    config.0.parse_argv = 0;
    // Like PYTHONUNBUFFERED: app output reaches the log at once, and none is left in a buffer
    // when a worker exits without finalizing Python.
    config.0.buffered_stdio = 0;
    set_argv(&mut config)?;
    if let Some(exe) = executable {
        let exe = CString::new(exe.as_os_str().as_bytes())
            .map_err(|_| LoadError::Init(format!("{} contains a NUL byte", exe.display())))?;
        let cfg: *mut ffi::PyConfig = &mut *config.0;
        // SAFETY: cfg points to an initialized PyConfig; the field pointer is derived from it and
        // exe is a NUL-terminated string that outlives the call (it is copied).
        let status = unsafe {
            ffi::PyConfig_SetBytesString(
                cfg,
                std::ptr::addr_of_mut!((*cfg).executable),
                exe.as_ptr(),
            )
        };
        // SAFETY: plain inspection of a status value.
        if unsafe { ffi::PyStatus_Exception(status) } != 0 {
            return Err(status_error("setting the virtualenv's python", status));
        }
    }
    // SAFETY: the interpreter is not initialized (checked under STARTED's lock) and the config is
    // fully set up.
    let status = unsafe { ffi::Py_InitializeFromConfig(&*config.0) };
    // SAFETY: plain inspection of a status value.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 {
        let hint = unreachable_stdlib()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        let why = status_message(status);
        return Err(LoadError::Init(format!("starting Python: {why}{hint}")));
    }
    // SAFETY: this thread holds the GIL right after initialization; release it so other code
    // (pyo3's attach, other threads) can take it. The thread state stays registered for this
    // thread, so PyGILState_Ensure here finds it again.
    unsafe { ffi::PyEval_SaveThread() };
    Python::attach(|py| -> Result<(), LoadError> {
        // Import threading on the thread that started Python so it is seen as the main thread.
        py.import("threading")
            .map_err(|e| LoadError::Init(e.to_string()))?;
        Ok(())
    })
}

/// Why Python could not start, when the cause can be seen from here: its standard library (next
/// to libpython) is out of this process's reach, as when `--user` switched to a user who cannot
/// enter the directory Python is installed in (pyenv's under /root, say).
fn unreachable_stdlib() -> Option<String> {
    let (version, library) = crate::python_build();
    let minor: Vec<&str> = version.split(['.', ' ']).take(2).collect();
    let stdlib = library?
        .parent()?
        .join(format!("python{}", minor.join(".")));
    // The first path on the way that cannot be looked at: its parent may not be entered.
    let first_denied = stdlib
        .ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|p| stat_denied(p))?;
    let blocking = first_denied.parent().unwrap_or(first_denied);
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    Some(format!(
        "its standard library {} is out of reach of uid {uid}: it may not enter {}; with \
         --user, install Python (and the virtualenv) where that user can read them",
        stdlib.display(),
        blocking.display()
    ))
}

fn stat_denied(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// See [`crate::before_fork`].
pub fn before_fork() {
    if STARTED.lock().unwrap_or_else(|e| e.into_inner()).is_none() || !is_initialized() {
        return;
    }
    Python::attach(|py| {
        // Move everything allocated so far (the preloaded app) out of the collector's reach, so
        // collections in the children do not write to (and so copy) the shared pages.
        if let Err(e) = py.import("gc").and_then(|gc| gc.call_method0("freeze")) {
            log::warn!("gc.freeze() failed: {e}");
        }
    });
    // SAFETY: Python is initialized. PyOS_BeforeFork must be called with the GIL held, and the
    // matching after-fork hook must run with it still held, so it is taken here without pyo3's
    // scoped guard and released by after_fork_parent/after_fork_child.
    let state = unsafe { ffi::PyGILState_Ensure() };
    // SAFETY: the GIL is held by this thread, as PyOS_BeforeFork requires.
    unsafe { ffi::PyOS_BeforeFork() };
    *FORK_GIL.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
}

fn take_fork_state() -> Option<ffi::PyGILState_STATE> {
    FORK_GIL.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// See [`crate::after_fork_parent`].
pub fn after_fork_parent() {
    let Some(state) = take_fork_state() else {
        return;
    };
    // SAFETY: before_fork took the GIL on this thread and called PyOS_BeforeFork.
    unsafe {
        ffi::PyOS_AfterFork_Parent();
        ffi::PyGILState_Release(state);
    }
}

/// See [`crate::after_fork_child`].
pub fn after_fork_child() {
    let Some(state) = take_fork_state() else {
        return;
    };
    // SAFETY: this is the child of a fork made between before_fork and now; the forking thread
    // (this one) holds the GIL as PyOS_AfterFork_Child requires. Releasing the state afterwards
    // leaves the GIL free for the worker's per-request attach.
    unsafe {
        ffi::PyOS_AfterFork_Child();
        ffi::PyGILState_Release(state);
    }
}

/// See [`crate::before_exit`].
pub fn before_exit() {
    if STARTED.lock().unwrap_or_else(|e| e.into_inner()).is_none() || !is_initialized() {
        return;
    }
    Python::attach(|py| {
        // Python is never finalized (the process just exits), so run what finalization would.
        let run = py
            .import("atexit")
            .and_then(|m| m.call_method0("_run_exitfuncs"));
        if let Err(e) = run {
            log::error!("atexit callbacks failed: {e}");
        }
        if let Ok(sys) = py.import("sys") {
            for name in ["stdout", "stderr"] {
                if let Ok(stream) = sys.getattr(name) {
                    let _ = stream.call_method0("flush");
                }
            }
        }
    });
}
