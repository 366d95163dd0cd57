//! The config file's server hooks, from the loaders' point of view: which process executes the
//! config file for its callables (each worker, or the master with `--preload`; the hook runner
//! for the master-side ones, see `hook_runner.rs`), and when each worker-side hook is called
//! around the app's load and the worker's end.

use std::path::Path;
use std::sync::Arc;

use ferrocorn_config::Location;
use ferrocorn_flags::{Options, Workers};
use ferrocorn_server::{WorkerIdentity, WORKER_BOOT_ERROR};
use ferrocorn_wsgi::{ConfigHooks, MasterHooks, WorkerHooks, WsgiApp};

/// Where the hooks come from: the config file and the hook names ferrocorn calls that it defines.
#[derive(Debug, Clone)]
pub(crate) struct HookSource {
    /// The evaluator's location argument, absolute so `--chdir` does not change what it names.
    location: String,
    names: Vec<&'static str>,
}

impl HookSource {
    /// The hooks among `wanted` the file defines; `None` when there are none.
    pub(crate) fn new(
        location: &Location,
        defined: &[(&'static str, String)],
        wanted: &[&str],
    ) -> Option<Self> {
        let names: Vec<&'static str> = defined
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| wanted.contains(name))
            .collect();
        if names.is_empty() {
            return None;
        }
        let location = match location {
            Location::File(path) => std::path::absolute(path)
                .unwrap_or_else(|_| path.clone())
                .to_string_lossy()
                .into_owned(),
            Location::Module(_) => location.argument(),
        };
        Some(HookSource { location, names })
    }
}

pub(crate) use ferrocorn_config::{MASTER_HOOKS, WORKER_HOOKS};

/// The apps as the worker serves them without request hooks.
pub(crate) fn unhooked(apps: Vec<WsgiApp>) -> Vec<ferrocorn_server::ThreadApp> {
    apps.into_iter().map(|app| Box::new(app) as _).collect()
}

/// One process's hooks: executed config, then (in a worker) the worker's own objects.
pub(crate) struct Hooks {
    source: HookSource,
    num_workers: usize,
    config: Option<ConfigHooks>,
    worker: Option<Arc<WorkerHooks>>,
}

impl Hooks {
    pub(crate) fn new(source: HookSource, options: &Options) -> Self {
        let num_workers = match options.workers {
            Some(Workers::Count(n)) => n,
            Some(Workers::Range { min, .. }) => min,
            Some(Workers::Auto) => 0,
            None => 1,
        };
        Hooks {
            source,
            num_workers,
            config: None,
            worker: None,
        }
    }

    /// Execute the config file in this process (Python must be initialized). Once: a worker
    /// forked from a master that did it (`--preload`) inherits the result.
    pub(crate) fn execute(&mut self, virtualenv: Option<&Path>) -> Result<(), String> {
        if self.config.is_some() {
            return Ok(());
        }
        ferrocorn_wsgi::ensure_initialized(virtualenv).map_err(|e| e.to_string())?;
        let config = ferrocorn_wsgi::load_config_hooks(
            ferrocorn_config::EVALUATE_SCRIPT,
            &self.source.location,
            &self.source.names,
        )
        .map_err(|e| e.to_string())?;
        self.config = Some(config);
        Ok(())
    }

    /// In a worker, before its app is loaded: execute the config file (unless inherited), build
    /// the `server` and `worker` objects and run `post_fork`. A failure ends the worker's boot,
    /// as in gunicorn (the master then stops).
    pub(crate) fn start_worker(&mut self, who: &WorkerIdentity, virtualenv: Option<&Path>) {
        if let Err(e) = self.execute(virtualenv) {
            log::error!("{e}");
            std::process::exit(WORKER_BOOT_ERROR);
        }
        let config = self.config.as_ref().expect("executed above");
        let identity = ferrocorn_wsgi::WorkerIdentity {
            age: who.age,
            master_pid: who.master_pid,
            num_workers: self.num_workers,
        };
        let worker = match config.for_worker(identity) {
            Ok(worker) => worker,
            Err(e) => {
                log::error!("{e}");
                std::process::exit(WORKER_BOOT_ERROR);
            }
        };
        let booted = worker.post_fork();
        self.worker = Some(worker);
        if booted.is_err() {
            self.fail_boot();
        }
    }

    /// The app is loaded (one per app thread): `worker_abort` armed, then `post_worker_init`
    /// (once for the worker); the apps to serve, each with the request hooks around it.
    pub(crate) fn serve(&mut self, apps: Vec<WsgiApp>) -> Vec<ferrocorn_server::ThreadApp> {
        let Some(worker) = &self.worker else {
            return unhooked(apps);
        };
        worker.install_worker_abort();
        if worker.post_worker_init().is_err() {
            self.fail_boot();
        }
        apps.into_iter()
            .map(|app| Box::new(worker.wrap(app)) as _)
            .collect()
    }

    fn fail_boot(&mut self) -> ! {
        self.worker_exit();
        ferrocorn_wsgi::before_exit();
        std::process::exit(WORKER_BOOT_ERROR);
    }

    pub(crate) fn worker_int(&mut self) {
        if let Some(worker) = &self.worker {
            worker.worker_int();
        }
    }

    /// The master-side hooks, for the hook runner (after [`Hooks::execute`]).
    pub(crate) fn for_master(&self, master_pid: i32) -> Result<MasterHooks, String> {
        let config = self
            .config
            .as_ref()
            .ok_or("the config file was not executed")?;
        config
            .for_master(master_pid, self.num_workers)
            .map_err(|e| e.to_string())
    }

    pub(crate) fn worker_exit(&mut self) {
        if let Some(worker) = &self.worker {
            worker.worker_exit();
        }
    }
}
