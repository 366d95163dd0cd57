//! The `ferrocorn` command, as a library so Rust apps get the same flags, signals and process model.
//!
//! [`main`] installs signal handlers (before anything else, so an embedded Python never owns SIGINT),
//! parses gunicorn's flags, binds sockets, then hands over to the arbiter; each forked worker loads
//! its app ([`AppSource`]) and runs the sync worker loop.

mod logging;
mod options;
mod privileges;
mod sizing_cmd;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferrocorn_arbiter::{Arbiter, ArbiterConfig, ForkHooks, WorkerContext, APP_LOAD_ERROR};
use ferrocorn_listener::{BindSpec, ListenOptions, Listener};
use ferrocorn_signals::MasterSignals;
use ferrocorn_worker::{App, WorkerConfig};
use log::{error, info, warn};

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
    // `ferrocorn sizing ...` is the advisor; an app module named `sizing` is `sizing:application`.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "sizing") {
        return sizing_cmd::main(args.collect());
    }
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

/// Listening fds a re-executing master (USR2) passes on, comma-separated (gunicorn: GUNICORN_FD).
const REEXEC_FDS_ENV: &str = "FERROCORN_FD";
/// The pid of the master that re-executed us (gunicorn: GUNICORN_PID).
const REEXEC_PARENT_ENV: &str = "FERROCORN_PID";

/// Take a variable out of the environment, so neither workers nor apps see it.
fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    // Still single-threaded (called before any fork or thread), so no concurrent reader exists.
    std::env::remove_var(name);
    value
}

/// The listeners of the master that re-executed us, if we were started by USR2.
fn reexec_listeners(options: &Options) -> Result<Option<Vec<Listener>>> {
    let Some(list) = take_env(REEXEC_FDS_ENV) else {
        return Ok(None);
    };
    let listen = listen_options(options);
    let listeners = list
        .split(',')
        .map(|fd| {
            let spec: BindSpec = format!("fd://{fd}")
                .parse()
                .with_context(|| format!("{REEXEC_FDS_ENV}={list:?}"))?;
            let listener = ferrocorn_listener::bind(&spec, &listen)
                .with_context(|| format!("{REEXEC_FDS_ENV}={list:?}"))?;
            // The unix socket files are ours to remove at exit, as they were the old master's.
            Ok(match listener {
                Listener::Unix {
                    listener,
                    path: None,
                } => {
                    let path = listener
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(std::path::Path::to_path_buf));
                    Listener::Unix { listener, path }
                }
                other => other,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(listeners))
}

fn listen_options(options: &Options) -> ListenOptions {
    ListenOptions {
        backlog: options.backlog,
        unix_mode: Some(unix_socket_mode(options.umask)),
        reuse_port: options.reuse_port,
    }
}

fn bind(options: &Options) -> Result<Vec<Listener>> {
    if let Some(listeners) = reexec_listeners(options)? {
        return Ok(listeners);
    }
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
    Ok(ferrocorn_listener::bind_all(
        &specs,
        &listen_options(options),
    )?)
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

/// What USR2 needs to start this server again: gunicorn's START_CTX.
struct StartContext {
    argv: Vec<std::ffi::OsString>,
    cwd: std::path::PathBuf,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl StartContext {
    fn capture() -> Result<Self> {
        Ok(StartContext {
            argv: std::env::args_os().collect(),
            cwd: std::env::current_dir().context("reading the working directory")?,
            env: std::env::vars_os()
                .filter(|(k, _)| {
                    !["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]
                        .iter()
                        .any(|name| k == name)
                })
                .collect(),
        })
    }

    /// Start the same command line in a new process that adopts `listeners` (USR2). Returns the
    /// new master's pid.
    fn reexec(&self, listeners: &[Listener]) -> Option<i32> {
        let set = |inheritable: bool| {
            listeners
                .iter()
                .try_for_each(|l| l.set_inheritable(inheritable))
        };
        if let Err(e) = set(true) {
            error!("USR2: cannot pass the listeners on: {e}");
            let _ = set(false);
            return None;
        }
        let fds: Vec<String> = listeners
            .iter()
            .map(|l| std::os::fd::AsRawFd::as_raw_fd(l).to_string())
            .collect();
        let spawned = std::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(REEXEC_FDS_ENV, fds.join(","))
            .env(REEXEC_PARENT_ENV, std::process::id().to_string())
            .spawn();
        // Only the new master may inherit them; our own later children (workers are forked,
        // not exec'ed) never need it.
        if let Err(e) = set(false) {
            error!("USR2: cannot restore close-on-exec on the listeners: {e}");
        }
        match spawned {
            Ok(child) => {
                info!("Re-executing: new master (pid: {})", child.id());
                Some(child.id() as i32)
            }
            Err(e) => {
                error!("USR2: cannot start {:?}: {e}", self.argv[0]);
                None
            }
        }
    }
}

fn serve(mut options: Options, source: AppSource, signals: MasterSignals) -> Result<i32> {
    check_options(&options, &source)?;
    // Before --chdir: a re-exec (USR2) repeats the command line from where it was typed.
    let start = StartContext::capture()?;
    if let Some(dir) = &options.chdir {
        // As gunicorn, the master itself moves first, so relative unix socket, --pid and
        // --log-file paths are inside --chdir. Absolute, so the app loader's own chdir in each
        // worker lands in the same place rather than one more relative step down.
        let absolute = std::fs::canonicalize(dir)
            .and_then(|abs| std::env::set_current_dir(&abs).map(|()| abs))
            .with_context(|| format!("cannot change directory to {}", dir.display()))?;
        options.chdir = Some(absolute);
    }
    let parent_master = take_env(REEXEC_PARENT_ENV).and_then(|pid| pid.parse::<i32>().ok());
    let log_file = logging::LogFile::new(options.log_file.as_deref(), options.capture_output);
    log_file.open()?;
    if let Some(ips) = &options.forwarded_allow_ips {
        // The wsgi crate reads gunicorn's environment variable; the flag wins over it, as in
        // gunicorn. SAFETY: single-threaded here, as for --env below.
        unsafe { std::env::set_var("FORWARDED_ALLOW_IPS", ips) };
    }
    if let Some(dir) = &options.worker_tmp_dir {
        log::debug!(
            "--worker-tmp-dir {} is not needed: heartbeats use shared memory",
            dir.display()
        );
    }
    for (key, value) in &options.env {
        // SAFETY: single-threaded here (no worker forked, no thread started), so no one reads the
        // environment concurrently.
        unsafe { std::env::set_var(key, value) };
    }
    let owner = privileges::Owner::resolve(
        options.user.as_deref(),
        options.group.as_deref(),
        options.initgroups,
    )?;

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
    // `Type=notify` units wait for this (gunicorn sends it at the same point).
    if let Err(e) = ferrocorn_listener::sd_notify("READY=1\nSTATUS=ferrocorn arbiter booted") {
        warn!("{e}");
    }
    // A master started by USR2 writes PIDFILE.2 until the old master is gone, as gunicorn.
    let pidfile = std::rc::Rc::new(std::cell::RefCell::new(options.pidfile.clone().map(|p| {
        if parent_master.is_some() {
            let mut name = p.into_os_string();
            name.push(".2");
            std::path::PathBuf::from(name)
        } else {
            p
        }
    })));
    if let Some(path) = &*pidfile.borrow() {
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
                        error!("Shutting down: Master");
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
    let reexec_listeners = listeners
        .iter()
        .map(Listener::try_clone)
        .collect::<std::io::Result<Vec<_>>>()
        .context("duplicating the listeners for USR2")?;
    arbiter.on_reexec(move || start.reexec(&reexec_listeners));
    if let Some(parent) = parent_master {
        let pidfile = pidfile.clone();
        let final_path = options.pidfile.clone();
        arbiter.set_parent_master(parent, move || {
            let mut current = pidfile.borrow_mut();
            if let (Some(from), Some(to)) = (current.as_ref(), final_path.as_ref()) {
                match std::fs::rename(from, to) {
                    Ok(()) => *current = Some(to.clone()),
                    Err(e) => error!("cannot rename {} to {}: {e}", from.display(), to.display()),
                }
            }
        });
    }
    let socket_files: Vec<std::path::PathBuf> = listeners
        .iter()
        .filter_map(|l| match l {
            Listener::Unix {
                path: Some(path), ..
            } => Some(path.clone()),
            _ => None,
        })
        .collect();
    arbiter.on_stop(move |shared| {
        if shared {
            return;
        }
        for path in &socket_files {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    error!("cannot remove {}: {e}", path.display())
                }
                _ => {}
            }
        }
    });
    let jitter = options.max_requests_jitter;
    let code = arbiter.run(&mut |ctx: WorkerContext| {
        if let Err(e) = owner.apply() {
            error!("{e:#}");
            return ferrocorn_arbiter::WORKER_BOOT_ERROR;
        }
        // Dropping privileges cleared the kernel's parent-death signal: ask again.
        if owner.changes_credentials() && !ctx.stop_with_master() {
            info!("Parent changed, shutting down");
            return 0;
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
    // Workers each held a copy of the listeners, so only the master, last, removes socket files
    // (unless a master started by USR2 still serves on them).
    let keep_sockets = arbiter.has_successor() || arbiter.has_parent_master();
    for listener in listeners.iter().filter(|_| !keep_sockets) {
        if let Err(e) = listener.remove_socket_file() {
            error!("cannot remove {}: {e}", listener.describe());
        }
    }
    if let Some(path) = &*pidfile.borrow() {
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
