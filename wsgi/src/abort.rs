//! Answering a request stuck past `--timeout`. The worker's I/O thread calls the app thread's
//! [`Interrupter`] (see [`interrupter`]): it logs the request, dumps every thread's Python stack,
//! runs the `worker_abort` hook and raises [`WorkerTimeout`](abort.py) in the app thread
//! (`PyThreadState_SetAsyncExc`), so the app's call ends with [`AppError::Aborted`]: the worker
//! answers 500 and exits, and the arbiter replaces it. A thread stuck in C or in `time.sleep`
//! only sees the exception once it runs Python again; the worker abandons it before that.
//!
//! With one app thread the app runs on the main thread (the worker's I/O loop calls it): there
//! the interrupter sends the thread a signal whose Python handler raises `WorkerTimeout`, which
//! also ends a `time.sleep()` or another blocking call.
//!
//! The arbiter's SIGABRT (a worker that stopped beating) has no Python handler: faulthandler
//! dumps every thread's stack from C and the worker dies of the signal (as it does of the other
//! fatal signals, a crash in C included, after the same dump).

use std::cell::RefCell;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

use ferrocorn_worker::{AppError, Interrupter};

use crate::LoadError;

const ABORT_PY: &str = include_str!("abort.py");

/// The helper module (it defines `WorkerTimeout`).
static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let module = MODULE.get_or_try_init(py, || {
        let code = CString::new(ABORT_PY).expect("abort.py has no NUL");
        PyModule::from_code(py, &code, c"<ferrocorn abort>", c"_ferrocorn_abort").map(Bound::unbind)
    })?;
    Ok(module.bind(py))
}

/// Have SIGABRT (and the other fatal signals) dump every thread's Python stack before the
/// worker dies (Python must be running; call it in a worker after the app is loaded, never in a
/// master).
pub fn install() -> Result<(), LoadError> {
    Python::attach(|py| module(py)?.call_method0("install").map(drop))
        .map_err(|e: PyErr| LoadError::Init(format!("enabling faulthandler for SIGABRT: {e}")))
}

/// One app thread as an interrupter sees it. `serving` and `raised` change only with the GIL
/// held, so an exception is never raised in a thread that has left its request.
#[derive(Debug, Default)]
pub(crate) struct ThreadSlot {
    /// The thread's `threading.get_ident()`; 0 until [`interrupter`] ran on it.
    ident: AtomicU64,
    serving: AtomicBool,
    /// `WorkerTimeout` was raised in this request (it may still be pending).
    raised: AtomicBool,
    /// The process's main thread, interrupted by [`main_interrupt_signal`] (its pthread id).
    main: AtomicU64,
}

/// The signal that interrupts the app on the main thread: a real-time one, which nothing else
/// in a worker uses.
fn main_interrupt_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

impl ThreadSlot {
    /// The app thread starts a request (GIL held).
    pub(crate) fn begin(&self, _py: Python<'_>) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// The app thread's request is over (GIL held): a `WorkerTimeout` raised too late to
    /// surface in it must not surface in the next one.
    pub(crate) fn end(&self, py: Python<'_>) {
        self.serving.store(false, Ordering::Relaxed);
        if !self.raised.swap(false, Ordering::Relaxed) {
            return;
        }
        if self.main.load(Ordering::Relaxed) != 0 {
            if let Err(e) = module(py).and_then(|m| m.setattr("armed", false)) {
                log::error!("disarming the timeout handler: {e}");
            }
            return;
        }
        // SAFETY: the GIL is held; a NULL exception clears any pending one of that thread.
        unsafe { ffi::PyThreadState_SetAsyncExc(self.ident() as _, std::ptr::null_mut()) };
    }

    fn ident(&self) -> u64 {
        self.ident.load(Ordering::Relaxed)
    }

    /// Raise `WorkerTimeout` in the thread if it is serving a request.
    fn raise(&self, py: Python<'_>) -> PyResult<()> {
        if !self.serving.load(Ordering::Relaxed) || self.ident() == 0 {
            return Ok(());
        }
        let main = self.main.load(Ordering::Relaxed);
        if main != 0 {
            module(py)?.setattr("armed", true)?;
            self.raised.store(true, Ordering::Relaxed);
            signal_thread(main as libc::pthread_t);
            return Ok(());
        }
        let class = module(py)?.getattr("WorkerTimeout")?;
        // SAFETY: the GIL is held and `class` is a live exception type; Python keeps its own
        // reference until it raises it.
        unsafe { ffi::PyThreadState_SetAsyncExc(self.ident() as _, class.as_ptr()) };
        self.raised.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Send the main-thread interrupt to `thread` (its handler was installed by [`interrupter`]).
fn signal_thread(thread: libc::pthread_t) {
    // SAFETY: `thread` is the main thread's id, which lives as long as the process.
    let rc = unsafe { libc::pthread_kill(thread, main_interrupt_signal()) };
    if rc != 0 {
        log::error!(
            "signalling the main thread failed: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
}

/// Whether the calling thread is the process's main thread.
fn on_main_thread() -> bool {
    // SAFETY: neither call has preconditions.
    unsafe { libc::gettid() == libc::getpid() }
}

/// On the main thread: its interrupt signal's Python handler, and its pthread id.
fn arm_main_thread(slot: &ThreadSlot) {
    let installed = Python::attach(|py| {
        module(py)?.call_method1("install_main_interrupt", (main_interrupt_signal(),))?;
        Ok::<_, PyErr>(())
    });
    match installed {
        // SAFETY: pthread_self has no preconditions.
        Ok(()) => slot
            .main
            .store(unsafe { libc::pthread_self() } as u64, Ordering::Relaxed),
        Err(e) => log::warn!("installing the timeout handler of the main thread: {e}"),
    }
}

/// Called once on the app thread (see [`ferrocorn_worker::App::interrupter`]): keeps the
/// thread's Python thread state for the thread's life, remembers the thread, and returns what
/// the worker calls to interrupt its request.
pub(crate) fn interrupter(slot: &Arc<ThreadSlot>) -> Interrupter {
    slot.ident.store(keep_thread_state(), Ordering::Relaxed);
    if let Err(e) = Python::attach(|py| module(py).map(drop)) {
        log::warn!("loading the timeout helper: {e}");
    }
    if on_main_thread() {
        arm_main_thread(slot);
    }
    let slot = Arc::clone(slot);
    Box::new(move |request: &str| {
        let (slot, request) = (Arc::clone(&slot), request.to_string());
        // Off the caller's thread: the GIL may take a while to get (the stuck thread may hold it
        // between checks), and the worker's I/O loop must go on meanwhile.
        let spawned = std::thread::Builder::new()
            .name("ferrocorn-timeout".into())
            .spawn(move || interrupt(&slot, &request));
        if let Err(e) = spawned {
            log::error!("cannot start the thread interrupting a timed-out request: {e}");
        }
    })
}

fn interrupt(slot: &ThreadSlot, request: &str) {
    Python::attach(|py| {
        log::error!(
            "Worker timed out serving {request}: aborting it; Python stack of every thread (most \
             recent call first):"
        );
        let dumped = module(py).and_then(|m| m.call_method0("dump_and_hook"));
        if let Err(e) = dumped {
            log::error!("dumping the Python stacks: {e}");
        }
        if let Err(e) = slot.raise(py) {
            log::error!("interrupting the timed-out request: {e}");
        }
    });
}

thread_local! {
    /// The Python thread state [`keep_thread_state`] keeps, given back when the thread ends.
    static KEPT: RefCell<Option<KeptThreadState>> = const { RefCell::new(None) };
}

/// A count on this thread's Python thread state (its gilstate counter) that keeps it alive.
#[derive(Debug)]
struct KeptThreadState;

impl Drop for KeptThreadState {
    fn drop(&mut self) {
        release_thread_state();
    }
}

/// Give this thread a Python thread state that lasts as long as the thread, and return its
/// ident. Without one, each `Python::attach` creates a thread state and destroys it after (and
/// with it the app's `threading.local` values, such as Django's database connections).
fn keep_thread_state() -> u64 {
    KEPT.with_borrow_mut(|kept| {
        if kept.is_none() {
            take_thread_state();
            *kept = Some(KeptThreadState);
        }
    });
    // SAFETY: reads this thread's ident; no Python state is touched.
    let ident = unsafe { ffi::PyThread_get_thread_ident() };
    // c_ulong: 64 bits on the platforms ferrocorn runs on.
    ident as u64
}

fn take_thread_state() {
    // SAFETY: Python is initialized (an app was loaded). PyGILState_Ensure gives this thread a
    // thread state (or finds its own) and takes the GIL; its count is only given back by
    // release_thread_state, when the thread ends, so the state lives until then. If the thread
    // already held the GIL it keeps it; otherwise PyEval_SaveThread releases the GIL just taken,
    // keeping the thread state for the next attach.
    unsafe {
        let held = ffi::PyGILState_Check() == 1;
        let _kept = ffi::PyGILState_Ensure();
        if !held {
            ffi::PyEval_SaveThread();
        }
    }
}

fn release_thread_state() {
    // SAFETY: this thread's state carries the count take_thread_state left on it, and the thread
    // is ending outside any Python call, so it does not hold the GIL. Ensure takes the GIL;
    // giving back our count (LOCKED: no GIL change) and then Ensure's own (UNLOCKED) destroys the
    // state if nothing else counts on it, and releases the GIL either way.
    unsafe {
        let state = ffi::PyGILState_Ensure();
        ffi::PyGILState_Release(ffi::PyGILState_STATE::PyGILState_LOCKED);
        ffi::PyGILState_Release(state);
    }
}

/// Whether `err` is the handler's `WorkerTimeout`.
pub(crate) fn is_abort(py: Python<'_>, err: &PyErr) -> bool {
    MODULE
        .get(py)
        .and_then(|m| m.bind(py).getattr("WorkerTimeout").ok())
        .is_some_and(|class| err.is_instance(py, &class))
}

pub(crate) fn aborted() -> AppError {
    AppError::Aborted("the request ran past --timeout".to_string())
}

/// Have the interrupter call `hook` (no arguments; it must not raise) after dumping the stacks.
pub(crate) fn set_hook(py: Python<'_>, hook: &Bound<'_, PyAny>) -> PyResult<()> {
    module(py)?.setattr("hook", hook)
}
