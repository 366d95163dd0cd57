//! Answering a request stuck past `--timeout`: the arbiter sends SIGABRT, and a Python-level
//! handler (Python's C handler interrupts `time.sleep` and other blocking calls with EINTR, then
//! runs it on the main thread, which is the thread calling the app) logs the stack of every thread
//! and raises [`WorkerTimeout`](abort.py) where the app was. The adapter turns that into
//! [`AppError::Aborted`]: the worker answers 500 and exits, and the arbiter replaces it.

use std::cell::RefCell;
use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyModule};

use ferrocorn_worker::AppError;

use crate::LoadError;

const ABORT_PY: &str = include_str!("abort.py");

/// The helper module, once the handler was installed in this process.
static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

thread_local! {
    /// `METHOD path` of the request being served, for the handler's log line (it runs on the
    /// serving thread). Reused between requests, so no allocation per request once warm.
    static CURRENT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Install the SIGABRT handler (Python must be running, and this must be the main thread: call
/// it in a worker after the app is loaded, never in a master).
pub fn install() -> Result<(), LoadError> {
    Python::attach(|py| {
        let module = MODULE.get_or_try_init(py, || {
            let code = CString::new(ABORT_PY).expect("abort.py has no NUL");
            PyModule::from_code(py, &code, c"<ferrocorn abort>", c"_ferrocorn_abort")
                .map(Bound::unbind)
        })?;
        let log = PyCFunction::new_closure(py, None, None, |_args, _kwargs| {
            CURRENT.with_borrow(|request| {
                let doing = if request.is_empty() {
                    "between requests".to_string()
                } else {
                    format!("serving {request}")
                };
                log::error!(
                    "Worker timed out {doing}: aborting it; Python stack of every thread (most \
                     recent call first):"
                )
            });
        })?;
        module.bind(py).call_method1("install", (log,))?;
        Ok(())
    })
    .map_err(|e: PyErr| LoadError::Init(format!("installing the SIGABRT handler: {e}")))
}

/// Remember the request about to be served (see [`CURRENT`]).
pub(crate) fn set_current(method: &str, path: &str) {
    CURRENT.with_borrow_mut(|current| {
        current.clear();
        current.push_str(method);
        current.push(' ');
        current.push_str(path);
    });
}

/// The request is over (an abort from now on lands between requests).
pub(crate) fn clear_current() {
    CURRENT.with_borrow_mut(String::clear);
}

/// Whether `err` is the handler's `WorkerTimeout`.
pub(crate) fn is_abort(py: Python<'_>, err: &PyErr) -> bool {
    MODULE
        .get(py)
        .and_then(|m| m.bind(py).getattr("WorkerTimeout").ok())
        .is_some_and(|class| err.is_instance(py, &class))
}

pub(crate) fn aborted(err: &PyErr) -> AppError {
    AppError::Aborted(err.to_string())
}

/// Run pending Python signal handlers: an abort that arrived while no Python code ran (just
/// before or after the app) surfaces here instead of in the next request's first line.
pub(crate) fn check_pending(py: Python<'_>) -> Result<(), AppError> {
    match py.check_signals() {
        Ok(()) => Ok(()),
        Err(e) if is_abort(py, &e) => Err(aborted(&e)),
        Err(e) => {
            // An app's own signal handler raised outside any request: log it, serve on.
            log::error!("a Python signal handler raised: {e}");
            Ok(())
        }
    }
}

/// Have the SIGABRT handler call `hook` (no arguments; it must not raise) before it raises
/// `WorkerTimeout`. No-op when the handler is not installed in this process.
pub(crate) fn set_hook(py: Python<'_>, hook: &Bound<'_, PyAny>) -> PyResult<()> {
    match MODULE.get(py) {
        Some(module) => module.bind(py).setattr("hook", hook),
        None => Ok(()),
    }
}
