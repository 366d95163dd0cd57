//! The `ferrocorn` command: gunicorn's flags ([`ferrocorn_flags`]) and process model
//! ([`ferrocorn_server`]) serving a Python WSGI app ([`ferrocorn_wsgi`]).
//!
//! Without `--preload` each worker imports the app after fork; with it the master imports it
//! once, runs CPython's fork hooks around every fork, and the workers share its memory.

mod config_cmd;
mod hook_runner;
mod hooks;
mod sizing_cmd;
mod venv;

use std::process::ExitCode;

use ferrocorn_flags::{AppArgument, Options};
use ferrocorn_server::access_log::AccessFormat;
use ferrocorn_server::{
    AppLoader, Builder, ForkObserver, PreloadError, Server, ThreadApp, WorkerIdentity,
    APP_LOAD_ERROR,
};
use ferrocorn_wsgi::environ::SecureSchemeHeaders;
use ferrocorn_wsgi::{WsgiApp, WsgiConfig};
use hooks::Hooks;
use log::error;

/// Run `ferrocorn` with the process's command line, config file and `$GUNICORN_CMD_ARGS` (exit
/// codes as [`ferrocorn_flags`]).
pub fn main() -> ExitCode {
    // Before anything may set an environment variable or start Python.
    ferrocorn_server::proctitle::init();
    if let Some(code) = run_subcommand() {
        return code;
    }
    let signals = match ferrocorn_flags::install_signals() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let loaded = match config_cmd::load() {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if loaded.options.version {
        print_version();
        return ExitCode::SUCCESS;
    }
    ferrocorn_server::logging::init(loaded.options.log_level);
    loaded.warn_unsupported();
    if let Some(code) = loaded.run_checks() {
        return code;
    }
    // SAFETY: no thread has been started yet (the signal queue is a self-pipe).
    unsafe { ferrocorn_wsgi::export_server_software() };
    let worker_hooks = loaded.hook_source(hooks::WORKER_HOOKS);
    let master_hooks = loaded.hook_source(hooks::MASTER_HOOKS);
    ferrocorn_flags::run_parsed(loaded.options, AppArgument::Required, signals, |options| {
        let builder = wsgi_server(options, worker_hooks);
        match master_hooks {
            Some(source) => builder.master_events(Box::new(hook_runner::HookRunner::new(
                Hooks::new(source, options),
                options.virtualenv.clone(),
            ))),
            None => builder,
        }
    })
}

/// `ferrocorn -v`: the version and the Python it embeds.
fn print_version() {
    let (python, library) = ferrocorn_wsgi::python_build();
    println!("ferrocorn {}", env!("CARGO_PKG_VERSION"));
    let library = library.map_or_else(
        || "statically linked".to_string(),
        |p| p.display().to_string(),
    );
    println!("Python {python} ({library})");
}

/// `ferrocorn sizing ...` (the advisor) or `ferrocorn top ...`: a subcommand named by the first
/// argument (an app module named so is written `sizing:application`). `None`: serve.
fn run_subcommand() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let first = args.next()?;
    match first.to_str()? {
        "sizing" => Some(sizing_cmd::main(args.collect())),
        "top" => Some(top_main(args)),
        _ => None,
    }
}

fn top_main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    use clap::Parser;
    let args =
        ferrocorn_top::TopArgs::parse_from(std::iter::once("ferrocorn top".into()).chain(args));
    match ferrocorn_top::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrocorn top: {e}");
            ExitCode::FAILURE
        }
    }
}

fn wsgi_server(options: &Options, hooks: Option<hooks::HookSource>) -> Builder {
    let config = wsgi_config(options);
    // Only an access log that prints environ values needs each request's environ kept.
    let keep_environ = options.access_logfile.is_some()
        && options
            .access_logformat
            .as_deref()
            .is_some_and(|f| AccessFormat::parse(f).uses_environ());
    let hooks = hooks.map(|source| Hooks::new(source, options));
    if options.reload && options.preload {
        log::warn!(
            "--reload with --preload: workers are forked from the app the master loaded at start,              so a reload does not pick up code changes; drop --preload while developing"
        );
    }
    if options.preload {
        Server::with_loader(Box::new(Preloaded {
            config,
            app: None,
            side: InWorker {
                keep_environ,
                hooks,
                worker: None,
            },
        }))
        .fork_observer(Box::new(PythonForkHooks))
    } else {
        Server::with_loader(Box::new(PerWorker {
            config,
            side: InWorker {
                keep_environ,
                hooks,
                worker: None,
            },
        }))
    }
}

/// The app as the access log needs it.
fn for_log(app: WsgiApp, keep_environ: bool) -> WsgiApp {
    if keep_environ {
        app.keeping_environ()
    } else {
        app
    }
}

fn wsgi_config(options: &Options) -> WsgiConfig {
    WsgiConfig {
        app: options.app.clone().unwrap_or_default(),
        chdir: options.chdir.clone(),
        pythonpath: options.pythonpath.clone(),
        virtualenv: options.virtualenv.clone(),
        secure_scheme_headers: SecureSchemeHeaders::new(options.secure_scheme_headers.0.clone()),
    }
}

/// Each worker imports the app after fork; one that cannot stops the server. A config file's
/// hooks are executed in the worker too, before the app (`post_fork` runs first, as in gunicorn).
struct PerWorker {
    config: WsgiConfig,
    side: InWorker,
}

impl AppLoader for PerWorker {
    fn worker_started(&mut self, worker: &WorkerIdentity) {
        self.side.worker = Some(*worker);
    }

    fn load(&mut self, threads: usize) -> Vec<ThreadApp> {
        self.side.start_hooks(&self.config);
        match ferrocorn_wsgi::load(&self.config) {
            Ok(app) => self.side.serve(app, threads),
            Err(e) => {
                error!("{e}");
                if let Some(hooks) = &mut self.side.hooks {
                    hooks.worker_exit();
                }
                std::process::exit(APP_LOAD_ERROR);
            }
        }
    }

    fn imported_files(&mut self) -> Vec<std::path::PathBuf> {
        ferrocorn_wsgi::imported_files()
    }

    fn interrupted(&mut self) {
        self.side.interrupted();
    }

    /// The interpreter is never finalized; give the app's atexit callbacks their turn.
    fn before_exit(&mut self) {
        self.side.before_exit();
    }
}

/// `--preload`: the master executes the config file for its hooks, then imports the app; each
/// worker gets the inherited copies.
struct Preloaded {
    config: WsgiConfig,
    app: Option<WsgiApp>,
    side: InWorker,
}

impl AppLoader for Preloaded {
    fn preload(&mut self) -> Result<(), PreloadError> {
        if let Some(hooks) = &mut self.side.hooks {
            hooks
                .execute(self.config.virtualenv.as_deref())
                .map_err(PreloadError)?;
        }
        let app = ferrocorn_wsgi::load(&self.config).map_err(|e| PreloadError(e.to_string()))?;
        self.app = Some(app);
        Ok(())
    }

    fn worker_started(&mut self, worker: &WorkerIdentity) {
        self.side.worker = Some(*worker);
    }

    fn load(&mut self, threads: usize) -> Vec<ThreadApp> {
        self.side.start_hooks(&self.config);
        let app = self.app.take().expect("each worker builds its app once");
        self.side.serve(app, threads)
    }

    fn imported_files(&mut self) -> Vec<std::path::PathBuf> {
        ferrocorn_wsgi::imported_files()
    }

    fn interrupted(&mut self) {
        self.side.interrupted();
    }

    /// The master and each worker ran the app: its atexit callbacks run in both.
    fn before_exit(&mut self) {
        self.side.before_exit();
    }
}

/// What both loaders do in the worker around the app: the config file's hooks, and the environ
/// the access log may need.
struct InWorker {
    keep_environ: bool,
    hooks: Option<Hooks>,
    worker: Option<WorkerIdentity>,
}

impl InWorker {
    /// Execute the config file's hooks in this worker (`post_fork` runs here).
    fn start_hooks(&mut self, config: &WsgiConfig) {
        if let (Some(hooks), Some(who)) = (&mut self.hooks, &self.worker) {
            hooks.start_worker(who, config.virtualenv.as_deref());
        }
    }

    /// The loaded app as this worker serves it, one per app thread (in the worker: the SIGABRT
    /// stack dump goes in now).
    fn serve(&mut self, app: WsgiApp, threads: usize) -> Vec<ThreadApp> {
        install_abort_handler();
        let apps = for_log(app, self.keep_environ).for_threads(threads);
        match &mut self.hooks {
            Some(hooks) => hooks.serve(apps),
            None => hooks::unhooked(apps),
        }
    }

    fn interrupted(&mut self) {
        if let Some(hooks) = &mut self.hooks {
            hooks.worker_int();
        }
    }

    fn before_exit(&mut self) {
        if let Some(hooks) = &mut self.hooks {
            hooks.worker_exit();
        }
        ferrocorn_wsgi::before_exit();
    }
}

/// The arbiter's SIGABRT dumps every thread's Python stack, then the worker dies of it. Only in
/// the worker (`load` runs there): with `--preload` the master's Python must not own SIGABRT.
fn install_abort_handler() {
    if let Err(e) = ferrocorn_wsgi::install_abort_handler() {
        log::warn!("{e}; a hung worker's Python stacks will not be logged");
    }
}

/// CPython's `PyOS_BeforeFork` family, needed around fork once the master has run Python.
struct PythonForkHooks;

impl ForkObserver for PythonForkHooks {
    fn before_fork(&mut self) {
        ferrocorn_wsgi::before_fork();
    }

    fn after_fork_parent(&mut self) {
        ferrocorn_wsgi::after_fork_parent();
    }

    fn after_fork_child(&mut self) {
        ferrocorn_wsgi::after_fork_child();
    }
}
