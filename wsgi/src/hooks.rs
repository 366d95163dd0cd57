//! gunicorn's worker-side server hooks from a config file (`post_fork`, `post_worker_init`,
//! `pre_request`, `post_request`, `worker_int`, `worker_abort`, `worker_exit`).
//!
//! Hook callables are not data, so the process that calls them executes the config file itself:
//! each worker after fork, or the master once with `--preload` (the workers inherit the result).
//! A hook that raises is logged with its traceback; what happens next is gunicorn's: a raising
//! `post_fork`/`post_worker_init` fails the worker's boot, a raising `pre_request` answers 500,
//! the others are only logged.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyModule, PyTuple};

use ferrocorn_worker::{App, AppError, Interrupter, Request, Response};

use crate::environ::{build_environ, RequestInfo};
use crate::{format_traceback, LoadError, WsgiApp};

const HOOKS_PY: &str = include_str!("hooks.py");

/// The hooks a config file defines, executed in this process (Python must be initialized).
#[derive(Debug)]
pub struct ConfigHooks {
    helpers: Py<PyModule>,
    /// Setting name → callable.
    hooks: Py<PyDict>,
    /// The file's plain settings, as `server.cfg` / `worker.cfg` attributes.
    cfg: Py<PyAny>,
}

/// Who the worker is, for the `worker` and `server` objects hooks receive.
#[derive(Debug, Clone, Copy)]
pub struct WorkerIdentity {
    /// gunicorn's `worker.age`: 1 for the first worker forked, counting up.
    pub age: u64,
    /// The master's pid (`worker.ppid`, `server.pid`).
    pub master_pid: i32,
    /// `server.num_workers` as configured (0 when the count is decided at run time).
    pub num_workers: usize,
}

/// Execute the config file at `location` (a path or `python:module`) with `evaluate` (the
/// config crate's evaluator script) and keep the callables named `names`.
pub fn load_config_hooks(
    evaluate: &str,
    location: &str,
    names: &[&str],
) -> Result<ConfigHooks, LoadError> {
    Python::attach(|py| {
        let helpers = module(py, HOOKS_PY, c"<ferrocorn hooks>", c"_ferrocorn_hooks")?;
        let evaluator = module(py, evaluate, c"<ferrocorn evaluate>", c"_ferrocorn_config")?;
        let loaded = helpers.call_method1("load", (evaluator, location, names.to_vec()))?;
        let (hooks, cfg): (Bound<'_, PyDict>, Bound<'_, PyAny>) = loaded.extract()?;
        Ok(ConfigHooks {
            helpers: helpers.unbind(),
            hooks: hooks.unbind(),
            cfg: cfg.unbind(),
        })
    })
    .map_err(|e: PyErr| {
        let tb = Python::attach(|py| format_traceback(py, &e));
        LoadError::Init(format!(
            "executing the config file {location} for its hooks:\n{}",
            tb.trim_end()
        ))
    })
}

fn module<'py>(
    py: Python<'py>,
    code: &str,
    file: &std::ffi::CStr,
    name: &std::ffi::CStr,
) -> PyResult<Bound<'py, PyModule>> {
    let code = CString::new(code).expect("embedded Python has no NUL");
    PyModule::from_code(py, &code, file, name)
}

impl ConfigHooks {
    /// The hooks of this worker (call in the worker, after fork).
    pub fn for_worker(&self, who: WorkerIdentity) -> Result<Arc<WorkerHooks>, LoadError> {
        Python::attach(|py| {
            let emit = emitter(py)?;
            let objects = self.helpers.bind(py).call_method1(
                "objects",
                (
                    emit,
                    self.cfg.bind(py),
                    who.age,
                    who.master_pid,
                    who.num_workers,
                ),
            )?;
            let (server, worker): (Bound<'_, PyAny>, Bound<'_, PyAny>) = objects.extract()?;
            let hooks = self.hooks.bind(py);
            let get = |name: &str| -> PyResult<Option<Py<PyAny>>> {
                Ok(hooks.get_item(name)?.map(Bound::unbind))
            };
            Ok(Arc::new(WorkerHooks {
                helpers: self.helpers.clone_ref(py),
                pre_request: get("pre_request")?,
                post_request: get("post_request")?,
                hooks: self.hooks.clone_ref(py),
                server: server.unbind(),
                worker: worker.unbind(),
                exited: AtomicBool::new(false),
            }))
        })
        .map_err(|e: PyErr| LoadError::Init(format!("building the hooks' worker object: {e}")))
    }
}

fn log_level(python_level: u32) -> log::Level {
    match python_level {
        0..=10 => log::Level::Debug,
        11..=20 => log::Level::Info,
        21..=30 => log::Level::Warn,
        _ => log::Level::Error,
    }
}

/// One worker's hooks and the `server`/`worker` objects they receive.
#[derive(Debug)]
pub struct WorkerHooks {
    helpers: Py<PyModule>,
    hooks: Py<PyDict>,
    pre_request: Option<Py<PyAny>>,
    post_request: Option<Py<PyAny>>,
    server: Py<PyAny>,
    worker: Py<PyAny>,
    /// `worker_exit` runs once, whichever way the worker ends.
    exited: AtomicBool,
}

/// A hook raised where gunicorn lets that end the worker's boot; already logged.
#[derive(Debug)]
pub struct HookFailed;

impl WorkerHooks {
    /// `post_fork(server, worker)`: right after fork, before the app is loaded (unless
    /// preloaded). Raising fails the boot, as in gunicorn.
    pub fn post_fork(&self) -> Result<(), HookFailed> {
        self.boot_hook("post_fork", |py| {
            PyTuple::new(py, [self.server.bind(py), self.worker.bind(py)])
        })
    }

    /// `post_worker_init(worker)`: the app is loaded, the worker is about to serve.
    pub fn post_worker_init(&self) -> Result<(), HookFailed> {
        let result = self.boot_hook("post_worker_init", |py| {
            PyTuple::new(py, [self.worker.bind(py)])
        });
        if result.is_ok() {
            Python::attach(|py| self.worker.bind(py).setattr("booted", true).ok());
        }
        result
    }

    fn boot_hook(
        &self,
        name: &str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>>,
    ) -> Result<(), HookFailed> {
        Python::attach(|py| match self.call(py, name, args) {
            Ok(()) => Ok(()),
            Err(e) => {
                log::error!(
                    "Exception in worker process ({name} hook)\n{}",
                    format_traceback(py, &e).trim_end()
                );
                Err(HookFailed)
            }
        })
    }

    /// `worker_int(worker)`: the worker is stopping at once (SIGINT / SIGQUIT).
    pub fn worker_int(&self) {
        self.logged_hook("worker_int", |py| PyTuple::new(py, [self.worker.bind(py)]));
    }

    /// `worker_exit(server, worker)`: the worker is exiting (once; also after a failed boot).
    pub fn worker_exit(&self) {
        if self.exited.swap(true, Ordering::Relaxed) {
            return;
        }
        Python::attach(|py| {
            let _ = self.worker.bind(py).setattr("alive", false);
        });
        self.logged_hook("worker_exit", |py| {
            PyTuple::new(py, [self.server.bind(py), self.worker.bind(py)])
        });
    }

    /// Have a timed-out request's interrupter (see [`App::interrupter`]) call
    /// `worker_abort(worker)` after it dumped the stacks.
    pub fn install_worker_abort(&self) {
        Python::attach(|py| {
            let Ok(Some(hook)) = self.hooks.bind(py).get_item("worker_abort") else {
                return;
            };
            let worker = self.worker.bind(py);
            let installed = worker.getattr("log").and_then(|log| {
                let run = self
                    .helpers
                    .bind(py)
                    .call_method1("guarded", ("worker_abort", hook, log, worker))?;
                crate::abort::set_hook(py, &run)
            });
            if let Err(e) = installed {
                log::error!("installing the worker_abort hook: {e}");
            }
        });
    }

    fn logged_hook(
        &self,
        name: &str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>>,
    ) {
        Python::attach(|py| {
            if let Err(e) = self.call(py, name, args) {
                log::error!(
                    "Exception in {name} hook\n{}",
                    format_traceback(py, &e).trim_end()
                );
            }
        });
    }

    fn call<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        args: impl FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>>,
    ) -> PyResult<()> {
        match self.hooks.bind(py).get_item(name)? {
            Some(hook) => hook.call1(args(py)?).map(drop),
            None => Ok(()),
        }
    }

    /// The app with `pre_request` and `post_request` around each call.
    pub fn wrap(self: &Arc<Self>, app: WsgiApp) -> HookedApp {
        HookedApp {
            app,
            hooks: Arc::clone(self),
        }
    }
}

/// A [`WsgiApp`] with the request hooks around it.
#[derive(Debug)]
pub struct HookedApp {
    app: WsgiApp,
    hooks: Arc<WorkerHooks>,
}

impl App for HookedApp {
    fn call(&mut self, req: &mut Request<'_>, res: &mut Response<'_>) -> Result<(), AppError> {
        let info = RequestInfo::from_request(req);
        if self.hooks.pre_request.is_none() && self.hooks.post_request.is_none() {
            return self.app.serve(&info, req, res);
        }
        let request = Python::attach(|py| self.request_object(py, &info).map(Bound::unbind));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                log::error!("building the request object for the hooks: {e}");
                return self.app.serve(&info, req, res);
            }
        };
        // As gunicorn: pre_request raising is an error handling the request (a 500), and
        // post_request runs in any case.
        let result = match self.pre_request(&request) {
            Ok(()) => self.app.serve(&info, req, res),
            Err(e) => {
                log::error!("Error handling request {}\n{}", info.target, e.trim_end());
                Err(AppError::Failed(format!(
                    "pre_request hook: {}",
                    first_line(&e)
                )))
            }
        };
        let status = match (&result, res.head_sent()) {
            (Err(_), false) => 500,
            _ => res.status().unwrap_or(500),
        };
        self.post_request(&request, &info, status);
        result
    }

    fn log_var(&self, name: &str) -> Option<String> {
        self.app.log_var(name)
    }

    fn interrupter(&mut self) -> Option<Interrupter> {
        self.app.interrupter()
    }
}

fn first_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or_default()
}

impl HookedApp {
    fn request_object<'py>(
        &self,
        py: Python<'py>,
        info: &RequestInfo<'_>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let headers: Vec<(&str, &[u8])> = info.headers.clone();
        self.hooks.helpers.bind(py).call_method1(
            "request",
            (
                info.method,
                info.target,
                info.path,
                info.query,
                info.protocol,
                headers,
            ),
        )
    }

    /// `pre_request(worker, req)`; the traceback when it raised.
    fn pre_request(&self, request: &Py<PyAny>) -> Result<(), String> {
        let Some(hook) = &self.hooks.pre_request else {
            return Ok(());
        };
        Python::attach(|py| {
            hook.bind(py)
                .call1((self.hooks.worker.bind(py), request.bind(py)))
                .map(drop)
                .map_err(|e| format_traceback(py, &e))
        })
    }

    /// `post_request(worker, req, environ, resp)`. `environ` is built afresh (what the app saw,
    /// before the app changed it); `resp` has the status.
    fn post_request(&self, request: &Py<PyAny>, info: &RequestInfo<'_>, status: u16) {
        let Some(hook) = &self.hooks.post_request else {
            return;
        };
        Python::attach(|py| {
            let called = self.environ(py, info).and_then(|environ| {
                let resp = self
                    .hooks
                    .helpers
                    .bind(py)
                    .call_method1("response", (status,))?;
                hook.bind(py)
                    .call1((self.hooks.worker.bind(py), request.bind(py), environ, resp))
            });
            if let Err(e) = called {
                log::error!(
                    "Exception in post_request hook\n{}",
                    format_traceback(py, &e).trim_end()
                );
            }
        });
    }

    fn environ<'py>(
        &self,
        py: Python<'py>,
        info: &RequestInfo<'_>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let base = self.app.base.bind(py);
        match build_environ(py, base, info, &self.app.env_config)? {
            Ok(environ) => Ok(environ),
            Err(_) => Ok(PyDict::new(py)),
        }
    }
}

/// The master-side hooks and their `server` object, in a process fed the master's events.
#[derive(Debug)]
pub struct MasterHooks {
    helpers: Py<PyModule>,
    hooks: Py<PyDict>,
    server: Py<PyAny>,
}

impl ConfigHooks {
    /// The master-side hooks for master `master_pid` running `num_workers` workers.
    pub fn for_master(
        &self,
        master_pid: i32,
        num_workers: usize,
    ) -> Result<MasterHooks, LoadError> {
        Python::attach(|py| {
            let server = self.helpers.bind(py).call_method1(
                "master",
                (emitter(py)?, self.cfg.bind(py), master_pid, num_workers),
            )?;
            Ok(MasterHooks {
                helpers: self.helpers.clone_ref(py),
                hooks: self.hooks.clone_ref(py),
                server: server.unbind(),
            })
        })
        .map_err(|e: PyErr| LoadError::Init(format!("building the hooks' server object: {e}")))
    }
}

impl MasterHooks {
    /// Call the hook an event line names (`{"hook": "child_exit", "pid": .., "age": ..}`); what
    /// it raises is logged with its traceback.
    pub fn dispatch(&self, line: &str) {
        Python::attach(|py| {
            let called = self.helpers.bind(py).call_method1(
                "master_event",
                (self.hooks.bind(py), self.server.bind(py), line),
            );
            if let Err(e) = called {
                log::error!(
                    "hook event {line:?}:\n{}",
                    format_traceback(py, &e).trim_end()
                );
            }
        });
    }
}

/// A Python callable `(level, text)` writing to ferrocorn's log.
fn emitter(py: Python<'_>) -> PyResult<Bound<'_, PyCFunction>> {
    PyCFunction::new_closure(py, None, None, |args, _kwargs| {
        let (level, text): (u32, String) = args.extract()?;
        log::log!(log_level(level), "{text}");
        PyResult::Ok(())
    })
}
