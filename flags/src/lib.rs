//! gunicorn's flag set for ferrocorn servers, Python or not.
//!
//! [`main`] is the whole `main` of a Rust app: `ferrocorn_flags::main(|| Box::new(MyApp))` takes
//! gunicorn's command line (`-w`, `-b`, `--timeout`, `--pid`, ...) and serves `MyApp` with
//! ferrocorn's process model. The `ferrocorn` binary uses [`run`] to plug its WSGI app in.
//! Exit codes: 0 after a stop, 1 on a start-up error, 2 for bad flags, 3 when a worker cannot
//! boot, 4 when the app cannot be loaded.

mod options;

use std::process::ExitCode;

use clap::Parser;
use ferrocorn_server::{logging, App, Builder, Limits, Server, Settings};
use ferrocorn_signals::MasterSignals;
use log::error;

pub use options::Options;

/// Whether the `APP` argument (a Python module path) must be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppArgument {
    Required,
    /// A Rust app: `APP` is not needed.
    Optional,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value ferrocorn does not support.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Server(#[from] ferrocorn_server::Error),
}

/// Serve the Rust app `factory` builds (in each worker) with the process's command line.
pub fn main(factory: impl FnMut() -> Box<dyn App> + 'static) -> ExitCode {
    run(AppArgument::Optional, move |_| Server::builder(factory))
}

/// Install signal handlers (before anything else, so e.g. an embedded Python never owns SIGINT),
/// parse the command line, then run the server `build` makes for the flags (its settings come
/// from the flags).
pub fn run(app: AppArgument, build: impl FnOnce(&Options) -> Builder) -> ExitCode {
    let signals = match install_signals() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let options = Options::parse();
    logging::init(options.log_level);
    run_parsed(options, app, signals, build)
}

/// The master's signal handlers; the first thing a server's `main` does.
pub fn install_signals() -> Result<MasterSignals, ExitCode> {
    MasterSignals::install().map_err(|e| {
        eprintln!("ferrocorn: {e}");
        ExitCode::FAILURE
    })
}

/// [`run`] once the options are known (e.g. merged from config files) and logging is set up.
pub fn run_parsed(
    options: Options,
    app: AppArgument,
    signals: MasterSignals,
    build: impl FnOnce(&Options) -> Builder,
) -> ExitCode {
    match serve(options, app, signals, build) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            error!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}

fn serve(
    mut options: Options,
    app: AppArgument,
    signals: MasterSignals,
    build: impl FnOnce(&Options) -> Builder,
) -> Result<i32, Error> {
    check_options(&options, app)?;
    if let Some(dir) = &options.chdir {
        // Absolute, so the app loader's own chdir in each worker lands where the master moved
        // rather than one more relative step down.
        options.chdir = Some(ferrocorn_server::absolute_dir(dir)?);
    }
    if let Some(dir) = &options.worker_tmp_dir {
        log::debug!(
            "--worker-tmp-dir {} is not needed: heartbeats use shared memory",
            dir.display()
        );
    }
    let server = build(&options)
        .settings(settings(&options))
        .signals(signals);
    Ok(server.run()?)
}

/// Refuse flag values ferrocorn does not support, naming what to use instead.
pub fn check_options(options: &Options, app: AppArgument) -> Result<(), Error> {
    if !is_sync_worker(&options.worker_class) {
        return Err(Error::Unsupported(format!(
            "worker class {:?} is not supported: ferrocorn has only the sync worker{}",
            options.worker_class,
            instead_of(&options.worker_class)
        )));
    }
    if options.threads != 1 {
        return Err(Error::Unsupported(format!(
            "--threads {} is not supported: the sync worker runs one request at a time; raise \
             --workers instead",
            options.threads
        )));
    }
    if app == AppArgument::Required && options.app.is_none() {
        // clap's own wording and exit code for a missing argument.
        command_error("the following required arguments were not provided: <APP>");
    }
    Ok(())
}

/// gunicorn's spellings of its sync worker.
fn is_sync_worker(class: &str) -> bool {
    matches!(
        class,
        "sync" | "egg:gunicorn#sync" | "gunicorn.workers.sync.SyncWorker"
    )
}

/// What to use instead of an async or threaded worker class.
fn instead_of(class: &str) -> &'static str {
    let name = class
        .rsplit(['#', '.'])
        .next()
        .unwrap_or(class)
        .to_ascii_lowercase();
    let green = [
        "gevent",
        "eventlet",
        "tornado",
        "geventworker",
        "eventletworker",
        "tornadoworker",
    ];
    if green.contains(&name.as_str()) {
        "; for many slow or idle connections put nginx in front (it buffers them) and raise \
         --workers; ferrocorn has no green threads"
    } else if name.contains("thread") {
        "; raise --workers instead of threads"
    } else if name.contains("uvicorn") || name.contains("asgi") {
        "; ferrocorn serves WSGI apps, not ASGI"
    } else {
        ""
    }
}

fn command_error(message: &str) -> ! {
    use clap::CommandFactory;
    Options::command()
        .error(clap::error::ErrorKind::MissingRequiredArgument, message)
        .exit()
}

/// The server's settings from the flags.
pub fn settings(options: &Options) -> Settings {
    // The wsgi crate reads gunicorn's environment variable; the flag wins over it, as in
    // gunicorn, and an explicit `--env FORWARDED_ALLOW_IPS=...` over both.
    let forwarded = options
        .forwarded_allow_ips
        .iter()
        .map(|ips| ("FORWARDED_ALLOW_IPS".to_string(), ips.clone()));
    Settings {
        binds: options.bind.clone(),
        backlog: options.backlog,
        reuse_port: options.reuse_port,
        umask: options.umask,
        workers: options.workers,
        timeout: (!options.timeout.is_zero()).then_some(options.timeout),
        graceful_timeout: options.graceful_timeout,
        keep_alive: options.keep_alive,
        header_timeout: options.header_timeout,
        max_requests: options.max_requests,
        max_requests_jitter: options.max_requests_jitter,
        limits: Limits {
            request_line: options.limit_request_line,
            fields: options.limit_request_fields,
            field_size: options.limit_request_field_size,
            body: (options.limit_request_body > 0).then_some(options.limit_request_body),
        },
        chdir: options.chdir.clone(),
        env: forwarded.chain(options.env.iter().cloned()).collect(),
        user: options.user.clone(),
        group: options.group.clone(),
        initgroups: options.initgroups,
        log_file: options.log_file.clone(),
        capture_output: options.capture_output,
        pidfile: options.pidfile.clone(),
        stats: options.stats.clone(),
    }
}

/// An error and its causes on one line, `outer: inner: ...`.
fn report(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
