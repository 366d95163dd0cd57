//! The `ferrocorn` command: gunicorn's flags ([`ferrocorn_flags`]) and process model
//! ([`ferrocorn_server`]) serving a Python WSGI app ([`ferrocorn_wsgi`]).
//!
//! Without `--preload` each worker imports the app after fork; with it the master imports it
//! once, runs CPython's fork hooks around every fork, and the workers share its memory.

mod config_cmd;
mod sizing_cmd;
mod venv;

use std::process::ExitCode;

use ferrocorn_flags::{AppArgument, Options};
use ferrocorn_server::access_log::AccessFormat;
use ferrocorn_server::{
    App, AppLoader, Builder, ForkObserver, PreloadError, Server, APP_LOAD_ERROR,
};
use ferrocorn_wsgi::{WsgiApp, WsgiConfig};
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
    ferrocorn_flags::run_parsed(loaded.options, AppArgument::Required, signals, wsgi_server)
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

fn wsgi_server(options: &Options) -> Builder {
    let config = wsgi_config(options);
    // Only an access log that prints environ values needs each request's environ kept.
    let keep_environ = options.access_logfile.is_some()
        && options
            .access_logformat
            .as_deref()
            .is_some_and(|f| AccessFormat::parse(f).uses_environ());
    if options.reload && options.preload {
        log::warn!(
            "--reload with --preload: workers are forked from the app the master loaded at start,              so a reload does not pick up code changes; drop --preload while developing"
        );
    }
    if options.preload {
        Server::with_loader(Box::new(Preloaded {
            config,
            keep_environ,
            app: None,
        }))
        .fork_observer(Box::new(PythonForkHooks))
    } else {
        Server::with_loader(Box::new(PerWorker {
            config,
            keep_environ,
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
    }
}

/// Each worker imports the app after fork; one that cannot stops the server.
struct PerWorker {
    config: WsgiConfig,
    keep_environ: bool,
}

impl AppLoader for PerWorker {
    fn load(&mut self) -> Box<dyn App> {
        match ferrocorn_wsgi::load(&self.config) {
            Ok(app) => {
                install_abort_handler();
                Box::new(for_log(app, self.keep_environ))
            }
            Err(e) => {
                error!("{e}");
                std::process::exit(APP_LOAD_ERROR);
            }
        }
    }

    fn imported_files(&mut self) -> Vec<std::path::PathBuf> {
        ferrocorn_wsgi::imported_files()
    }

    /// The interpreter is never finalized; give the app's atexit callbacks their turn.
    fn before_exit(&mut self) {
        ferrocorn_wsgi::before_exit();
    }
}

/// `--preload`: the master imports the app; each worker gets the inherited copy.
struct Preloaded {
    config: WsgiConfig,
    keep_environ: bool,
    app: Option<WsgiApp>,
}

impl AppLoader for Preloaded {
    fn preload(&mut self) -> Result<(), PreloadError> {
        let app = ferrocorn_wsgi::load(&self.config).map_err(|e| PreloadError(e.to_string()))?;
        self.app = Some(app);
        Ok(())
    }

    fn load(&mut self) -> Box<dyn App> {
        install_abort_handler();
        let app = self.app.take().expect("each worker builds its app once");
        Box::new(for_log(app, self.keep_environ))
    }

    fn imported_files(&mut self) -> Vec<std::path::PathBuf> {
        ferrocorn_wsgi::imported_files()
    }

    /// The master and each worker ran the app: its atexit callbacks run in both.
    fn before_exit(&mut self) {
        ferrocorn_wsgi::before_exit();
    }
}

/// `--timeout` on a request stuck in Python: a 500 and its traceback instead of a dead worker.
/// Only in the worker (`load` runs there): with `--preload` the master's Python must not own
/// SIGABRT.
fn install_abort_handler() {
    if let Err(e) = ferrocorn_wsgi::install_abort_handler() {
        log::warn!("{e}; a timed-out request will not get its traceback logged");
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
