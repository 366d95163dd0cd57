//! The `ferrocorn` command, as a library so Rust apps get the same flags, signals and process model.
//!
//! [`main`] installs signal handlers (before anything else, so an embedded Python never owns SIGINT),
//! parses gunicorn's flags, binds sockets, then hands over to the arbiter; each forked worker loads
//! its app ([`AppSource`]) and runs the sync worker loop.

mod logging;
mod options;
mod privileges;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferrocorn_arbiter::{Arbiter, ArbiterConfig, ForkHooks, WorkerContext, APP_LOAD_ERROR};
use ferrocorn_listener::{BindSpec, ListenOptions, Listener};
use ferrocorn_signals::MasterSignals;
use ferrocorn_worker::{App, WorkerConfig};
use log::{error, info};

pub use options::Options;

/// Builds a Rust app inside each worker process.
pub type AppFactory = Box<dyn FnMut() -> Box<dyn App>>;

/// What the workers serve.
pub enum AppSource {
    /// The Python WSGI callable named by the `APP` argument.
    Wsgi,
    /// A Rust app; `APP` is not needed.
    Rust(AppFactory),
}

impl std::fmt::Debug for AppSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppSource::Wsgi => "AppSource::Wsgi",
            AppSource::Rust(_) => "AppSource::Rust",
        })
    }
}

/// Run the server with the process's command line. Exit codes: 0 after a stop, 1 on a startup
/// error, 2 for bad flags, 3 when a worker cannot boot, 4 when the app cannot be loaded.
pub fn main(source: AppSource) -> ExitCode {
    let signals = match MasterSignals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("ferrocorn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options::parse();
    logging::init(options.log_level);
    match serve(options, source, signals) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_options(options: &Options, source: &AppSource) -> Result<()> {
    if options.worker_class != "sync" {
        bail!(
            "worker class {:?} is not supported: ferrocorn has only the sync worker",
            options.worker_class
        );
    }
    if options.threads != 1 {
        bail!(
            "--threads {} is not supported: the sync worker runs one request at a time",
            options.threads
        );
    }
    if matches!(source, AppSource::Wsgi) && options.app.is_none() {
        // clap's own wording and exit code for a missing argument.
        Options::command_error("the following required arguments were not provided: <APP>");
    }
    Ok(())
}

impl Options {
    fn command_error(message: &str) -> ! {
        use clap::CommandFactory;
        Options::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, message)
            .exit()
    }
}

fn bind(options: &Options) -> Result<Vec<Listener>> {
    let systemd = ferrocorn_listener::systemd_listeners()?;
    if !systemd.is_empty() {
        return Ok(systemd);
    }
    let specs = if options.bind.is_empty() {
        vec![BindSpec::default_for(
            std::env::var("PORT").ok().as_deref(),
        )?]
    } else {
        options.bind.clone()
    };
    let listen = ListenOptions {
        backlog: options.backlog,
        unix_mode: Some(unix_socket_mode(options.umask)),
        reuse_port: options.reuse_port,
    };
    Ok(ferrocorn_listener::bind_all(&specs, &listen)?)
}

/// gunicorn binds unix sockets under `--umask` (default 0) and nothing else: the socket file is
/// `0o777 & !umask` whatever the process umask, so e.g. nginx as another user can connect.
fn unix_socket_mode(umask: Option<u32>) -> u32 {
    0o777 & !umask.unwrap_or(0)
}

fn wsgi_config(options: &Options) -> ferrocorn_wsgi::WsgiConfig {
    ferrocorn_wsgi::WsgiConfig {
        app: options.app.clone().unwrap_or_default(),
        chdir: options.chdir.clone(),
        pythonpath: options.pythonpath.clone(),
        virtualenv: options.virtualenv.clone(),
    }
}

fn worker_config(options: &Options) -> WorkerConfig {
    WorkerConfig {
        limits: ferrocorn_http::Limits {
            request_line: options.limit_request_line,
            fields: options.limit_request_fields,
            field_size: options.limit_request_field_size,
            body: (options.limit_request_body > 0).then_some(options.limit_request_body),
        },
        keepalive: options.keep_alive,
        header_timeout: options.header_timeout,
        max_requests: options.max_requests,
        ..WorkerConfig::default()
    }
}

/// A worker's share of `--max-requests-jitter`, spread by pid so workers restart at different
/// times: `max_requests + [0, jitter]`, like gunicorn's `randint(0, jitter)`.
fn jittered(max_requests: u64, jitter: u64) -> u64 {
    jittered_for(std::process::id(), max_requests, jitter)
}

fn jittered_for(pid: u32, max_requests: u64, jitter: u64) -> u64 {
    if max_requests == 0 || jitter == 0 {
        return max_requests;
    }
    // Knuth's multiplicative hash: consecutive pids land far apart.
    max_requests + u64::from(pid).wrapping_mul(2_654_435_761) % (jitter + 1)
}

fn serve(options: Options, source: AppSource, signals: MasterSignals) -> Result<i32> {
    check_options(&options, &source)?;
    let log_file = logging::LogFile::new(options.log_file.as_deref());
    log_file.open()?;
    for (key, value) in &options.env {
        // SAFETY: single-threaded here (no worker forked, no thread started), so no one reads the
        // environment concurrently.
        unsafe { std::env::set_var(key, value) };
    }
    let owner = privileges::Owner::resolve(options.user.as_deref(), options.group.as_deref())?;

    info!("Starting ferrocorn {}", env!("CARGO_PKG_VERSION"));
    let listeners = bind(&options)?;
    for listener in &listeners {
        if let ferrocorn_listener::Listener::Unix {
            path: Some(path), ..
        } = listener
        {
            // As gunicorn: the socket belongs to the workers' user and group.
            owner.chown(path)?;
        }
    }
    for listener in &listeners {
        info!(
            "Listening at: {} ({})",
            listener.describe(),
            std::process::id()
        );
    }
    info!("Using worker: sync");
    let pidfile = options.pidfile.clone();
    if let Some(path) = &pidfile {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", path.display()))?;
    }

    let mut hooks = ForkHooks::default();
    let mut make_app: AppFactory = match source {
        AppSource::Rust(factory) => factory,
        AppSource::Wsgi => {
            let config = wsgi_config(&options);
            if options.preload {
                let app = match ferrocorn_wsgi::load(&config) {
                    Ok(app) => app,
                    Err(e) => {
                        error!("{e}");
                        error!("Reason: App failed to load.");
                        return Ok(APP_LOAD_ERROR);
                    }
                };
                hooks = ForkHooks {
                    before_fork: Some(Box::new(ferrocorn_wsgi::before_fork)),
                    after_fork_parent: Some(Box::new(ferrocorn_wsgi::after_fork_parent)),
                    after_fork_child: Some(Box::new(ferrocorn_wsgi::after_fork_child)),
                };
                let mut app = Some(app);
                Box::new(move || Box::new(app.take().expect("each worker builds its app once")))
            } else {
                Box::new(move || match ferrocorn_wsgi::load(&config) {
                    Ok(app) => Box::new(app),
                    Err(e) => {
                        error!("{e}");
                        std::process::exit(APP_LOAD_ERROR);
                    }
                })
            }
        }
    };

    let arbiter_config = ArbiterConfig {
        workers: options.workers,
        timeout: (!options.timeout.is_zero()).then_some(options.timeout),
        graceful_timeout: options.graceful_timeout,
    };
    let mut worker_config = worker_config(&options);
    let mut arbiter = Arbiter::new(arbiter_config, signals, hooks)?;
    let reopen = log_file.clone();
    let worker_log_file = log_file.clone();
    arbiter.on_reopen_logs(move || {
        if let Err(e) = reopen.open() {
            error!("{e:#}");
        }
    });
    let jitter = options.max_requests_jitter;
    let code = arbiter.run(&mut |ctx: WorkerContext| {
        if let Err(e) = owner.apply() {
            error!("{e:#}");
            return ferrocorn_arbiter::WORKER_BOOT_ERROR;
        }
        let mut app = make_app();
        worker_config.max_requests = jittered(worker_config.max_requests, jitter);
        let heartbeat = ctx.heartbeat;
        let signals = &ctx.signals;
        // The worker loop calls this at least once a second: besides beating, it is where a
        // worker notices SIGUSR1 and moves its fd 2 to the new log file, as the master does.
        let mut tick = || {
            heartbeat.beat();
            if signals.take_reopen_logs() {
                match worker_log_file.open() {
                    Ok(()) => info!("Worker reopened its log file"),
                    Err(e) => error!("{e:#}"),
                }
            }
        };
        let served =
            ferrocorn_worker::run(&mut *app, &listeners, &worker_config, signals, &mut tick);
        // The interpreter is never finalized; give the app's atexit callbacks their turn.
        ferrocorn_wsgi::before_exit();
        match served {
            Ok(exit) => {
                info!("Worker exiting ({exit:?})");
                0
            }
            Err(e) => {
                error!("Worker failed: {e}");
                1
            }
        }
    })?;
    // With --preload the master imported the app: its atexit callbacks run too.
    ferrocorn_wsgi::before_exit();
    // Workers each held a copy of the listeners, so only the master, last, removes socket files.
    for listener in &listeners {
        if let Err(e) = listener.remove_socket_file() {
            error!("cannot remove {}: {e}", listener.describe());
        }
    }
    if let Some(path) = &pidfile {
        let _ = std::fs::remove_file(path);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_spreads_workers() {
        let limits: std::collections::BTreeSet<u64> =
            (1000..1100).map(|pid| jittered_for(pid, 50, 10)).collect();
        assert!(limits.iter().all(|n| (50..=60).contains(n)), "{limits:?}");
        assert!(
            limits.len() >= 8,
            "consecutive pids get different limits: {limits:?}"
        );
        assert_eq!(jittered_for(1234, 50, 0), 50);
        assert_eq!(jittered_for(1234, 0, 10), 0, "no --max-requests, no limit");
    }

    #[test]
    fn unix_socket_mode_follows_umask_like_gunicorn() {
        assert_eq!(unix_socket_mode(None), 0o777);
        assert_eq!(unix_socket_mode(Some(0o007)), 0o770);
        assert_eq!(unix_socket_mode(Some(0o077)), 0o700);
    }
}
