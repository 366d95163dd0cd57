//! The ferrocorn server as a library: everything between "settings known" and "arbiter runs".
//!
//! [`Server::builder`] takes what each worker serves; [`Builder::run`] binds and announces the
//! listeners (or adopts those of a USR2 parent or systemd), writes the pid file, opens the log
//! file, then hands over to the arbiter, which forks workers that drop privileges, build their app
//! and serve. Signals are gunicorn's: TERM, INT/QUIT, HUP, TTIN/TTOU, USR1 (reopen logs), USR2
//! (re-exec on the same sockets). No Python here: the WSGI side plugs in through [`AppLoader`] and
//! [`ForkObserver`].
//!
//! ```no_run
//! # use ferrocorn_server::{App, Server};
//! # fn hello() -> ferrocorn_server::ThreadApp { unimplemented!() }
//! let code = Server::builder(hello)
//!     .bind("127.0.0.1:8000".parse()?)
//!     .workers(4)
//!     .run()?;
//! # Ok::<(), ferrocorn_server::Error>(())
//! ```
#![warn(missing_docs)]

pub mod access_log;
mod bind;
mod daemon;
mod error;
mod event_feed;
mod events;
mod hooks;
pub mod logging;
mod pidfile;
mod privileges;
pub mod proctitle;
mod reexec;
mod reload;
mod sizing;
mod stats;
pub mod statsd;
mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrocorn_arbiter::{Arbiter, ArbiterConfig, Exit};
use ferrocorn_listener::Listener;
use ferrocorn_worker::WorkerConfig;
use log::{error, info};

pub use error::{Error, Result};
pub use events::{MasterEvent, MasterEvents};
pub use ferrocorn_arbiter::{APP_LOAD_ERROR, WORKER_BOOT_ERROR};
pub use ferrocorn_http::Limits;
pub use ferrocorn_listener::BindSpec;
pub use ferrocorn_signals::MasterSignals;
pub use ferrocorn_worker::{
    App, AppError, Headers, Interrupter, MemoryConn, Recorded, Request, Response, ThreadApp,
};
pub use log::LevelFilter;
pub use pidfile::PidFile;

use crate::access_log::{AccessFormat, AccessLog};
use crate::error::Context;
use crate::logging::{LogFile, WorkerLogs};
use crate::privileges::Owner;
use crate::statsd::Statsd;

/// Everything the server is told, with gunicorn's defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sockets to bind. Empty: 127.0.0.1:8000, or 0.0.0.0:$PORT when $PORT is set.
    pub binds: Vec<BindSpec>,
    /// Maximum number of pending connections.
    pub backlog: i32,
    /// SO_REUSEPORT on listening sockets.
    pub reuse_port: bool,
    /// Unix socket files get mode `0o777 & !umask` (default 0: anyone may connect).
    pub umask: Option<u32>,
    /// Worker processes (with [`WorkerMode::Fixed`]).
    pub workers: usize,
    /// App threads per worker (`--threads`): each calls its own copy of the app.
    pub threads: usize,
    /// Most connections one worker holds at once (`--worker-connections`).
    pub worker_connections: usize,
    /// Exactly `workers` (gunicorn's `-w N`), sized to the machine, or scaled with the load.
    pub worker_mode: WorkerMode,
    /// When scaling: a worker idle this long is retired (down to the minimum).
    pub scale_down_after: Duration,
    /// Memory the whole server may use (bytes). `None`: the cgroup limit, else RAM, when
    /// sizing or scaling; no budget with a fixed `-w N`.
    pub memory_budget: Option<u64>,
    /// A worker whose USS (private memory) is above this many bytes is replaced.
    pub max_worker_memory: Option<u64>,
    /// No worker is replaced for memory before it lived this long.
    pub min_worker_lifetime: Duration,
    /// A worker older than this (plus its jitter) is replaced.
    pub max_worker_lifetime: Option<Duration>,
    /// Up to this much more lifetime, spread over the workers so they are not replaced together.
    pub max_worker_lifetime_jitter: Duration,
    /// A worker silent for longer is killed and replaced. `None` disables it.
    pub timeout: Option<Duration>,
    /// How long workers get to finish after TERM before SIGKILL.
    pub graceful_timeout: Duration,
    /// How long an idle keep-alive connection may wait for its next request.
    pub keep_alive: Duration,
    /// The whole request head must arrive within this.
    pub header_timeout: Duration,
    /// Restart a worker after this many requests (0 = never).
    pub max_requests: u64,
    /// Add up to this many to `max_requests`, spread over the workers.
    pub max_requests_jitter: u64,
    /// Request size limits.
    pub limits: Limits,
    /// Directory the master moves to first (relative unix socket, pid and log paths are inside).
    pub chdir: Option<PathBuf>,
    /// Environment variables set in the master before any worker is forked.
    pub env: Vec<(String, String)>,
    /// Workers switch to this user (name or uid)...
    pub user: Option<String>,
    /// ... and group (name or gid; default the user's primary group).
    pub group: Option<String>,
    /// With `user`: also the user's supplementary groups from the group database.
    pub initgroups: bool,
    /// Error log file (fd 2 itself points there; `-` = stderr). Reopened on USR1.
    pub log_file: Option<PathBuf>,
    /// stdout goes to the log file too.
    pub capture_output: bool,
    /// File the master's pid is written to.
    pub pidfile: Option<PathBuf>,
    /// Access log file (`-` = stdout); none by default, as in gunicorn.
    pub access_log: Option<PathBuf>,
    /// The access log's format (gunicorn's atoms); `None`: gunicorn's default.
    pub access_log_format: Option<String>,
    /// statsd server (`HOST:PORT`) for gunicorn's metrics.
    pub statsd_host: Option<String>,
    /// Prefix of the metric names.
    pub statsd_prefix: String,
    /// DogStatsD tags added to every metric (`key:value,...`).
    pub dogstatsd_tags: String,
    /// NAME in the process titles `ferrocorn: master [NAME]` / `ferrocorn: worker [NAME]`
    /// (default: the program's name).
    pub proc_name: Option<String>,
    /// Detach from the terminal first (`--daemon`).
    pub daemon: bool,
    /// Reload the workers when a file the app imported changes (`--reload`).
    pub reload: bool,
    /// With `reload`: more files to watch (`--reload-extra-file`).
    pub reload_extra_files: Vec<PathBuf>,
    /// `--stats`: where the master serves its read-only stats (JSON and Prometheus).
    pub stats: Option<BindSpec>,
}

impl Default for Settings {
    fn default() -> Self {
        let arbiter = ArbiterConfig::default();
        let worker = WorkerConfig::default();
        Settings {
            binds: Vec::new(),
            backlog: 2048,
            reuse_port: false,
            umask: None,
            workers: arbiter.workers,
            threads: 1,
            worker_connections: worker.worker_connections,
            worker_mode: WorkerMode::Fixed,
            scale_down_after: Duration::from_secs(30),
            memory_budget: None,
            max_worker_memory: None,
            min_worker_lifetime: arbiter.memory.min_worker_lifetime,
            max_worker_lifetime: None,
            max_worker_lifetime_jitter: Duration::ZERO,
            timeout: arbiter.timeout,
            graceful_timeout: arbiter.graceful_timeout,
            keep_alive: worker.keepalive,
            header_timeout: worker.header_timeout,
            max_requests: worker.max_requests,
            max_requests_jitter: 0,
            limits: worker.limits,
            chdir: None,
            env: Vec::new(),
            user: None,
            group: None,
            initgroups: false,
            log_file: None,
            capture_output: false,
            pidfile: None,
            access_log: None,
            access_log_format: None,
            statsd_host: None,
            statsd_prefix: String::new(),
            dogstatsd_tags: String::new(),
            proc_name: None,
            daemon: false,
            reload: false,
            reload_extra_files: Vec::new(),
            stats: None,
        }
    }
}

/// How the number of workers is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkerMode {
    /// Exactly [`Settings::workers`]; only TTIN/TTOU change it.
    #[default]
    Fixed,
    /// `--workers auto`: min(2 x CPUs + 1, the workers that fit the memory budget).
    Auto,
    /// `--workers-min/--workers-max`: follow the load between the bounds.
    Scale {
        /// Never fewer workers.
        min: usize,
        /// Never more workers.
        max: usize,
    },
}

/// The app loading failed in the master (`--preload`); the text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadError(pub String);

/// What the workers serve.
pub trait AppLoader {
    /// In the master, once the listeners are bound and before the first fork: load the app now
    /// (gunicorn's `--preload`). A failure stops the server with [`APP_LOAD_ERROR`].
    fn preload(&mut self) -> Result<(), PreloadError> {
        Ok(())
    }
    /// In each worker, after privileges are dropped: the app it serves, one for each of its
    /// `threads` app threads (at least one). A worker that cannot load it exits with
    /// [`APP_LOAD_ERROR`], which stops the server at first start (later, on a reload, the
    /// workers already serving go on).
    fn load(&mut self, threads: usize) -> Vec<ThreadApp>;
    /// In each worker, before [`AppLoader::load`]: who it is (e.g. for a Python config file's
    /// server hooks).
    fn worker_started(&mut self, _worker: &WorkerIdentity) {}
    /// In a worker that stops because of SIGINT or SIGQUIT (a quick stop), before
    /// [`AppLoader::before_exit`].
    fn interrupted(&mut self) {}
    /// In each worker, after [`AppLoader::load`]: the files the app was loaded from (a Python
    /// app's modules), which `--reload` watches. None by default.
    fn imported_files(&mut self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// Before a process that ran the app exits: each worker after serving, and the master at
    /// the end (e.g. a Python app's `atexit` callbacks).
    fn before_exit(&mut self) {}
}

/// Who a worker is, as [`AppLoader::worker_started`] learns it.
#[derive(Debug, Clone, Copy)]
pub struct WorkerIdentity {
    /// 1 for the first worker forked, counting up (respawns and reloads included).
    pub age: u64,
    /// The master's pid.
    pub master_pid: i32,
}

/// An [`AppLoader`] from a closure that builds the app in each worker.
struct Factory<F>(F);

impl<F: FnMut() -> ThreadApp> AppLoader for Factory<F> {
    fn load(&mut self, threads: usize) -> Vec<ThreadApp> {
        (0..threads.max(1)).map(|_| (self.0)()).collect()
    }
}

/// Code run in the master around each fork of a worker (e.g. CPython's `PyOS_BeforeFork`
/// family when the app is preloaded). All no-ops by default.
pub trait ForkObserver {
    /// In the master, just before `fork`.
    fn before_fork(&mut self) {}
    /// In the master, just after `fork`.
    fn after_fork_parent(&mut self) {}
    /// In the new worker.
    fn after_fork_child(&mut self) {}
}

struct NoObserver;

impl ForkObserver for NoObserver {}

/// The entry point: [`Server::builder`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A server whose workers each serve the app `factory` builds.
    pub fn builder(factory: impl FnMut() -> ThreadApp + 'static) -> Builder {
        Self::with_loader(Box::new(Factory(factory)))
    }

    /// A server whose workers serve what `loader` loads.
    pub fn with_loader(loader: Box<dyn AppLoader>) -> Builder {
        Builder {
            settings: Settings::default(),
            loader,
            observer: Box::new(NoObserver),
            events: None,
            signals: None,
        }
    }
}

/// Settings for a [`Server`]; [`Builder::run`] starts it.
pub struct Builder {
    settings: Settings,
    loader: Box<dyn AppLoader>,
    observer: Box<dyn ForkObserver>,
    events: Option<Box<dyn MasterEvents>>,
    signals: Option<MasterSignals>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Replace all settings.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Add a socket to listen on.
    pub fn bind(mut self, spec: BindSpec) -> Self {
        self.settings.binds.push(spec);
        self
    }

    /// How many workers to keep running (`-w`; TTIN/TTOU change it later).
    pub fn workers(mut self, workers: usize) -> Self {
        self.settings.workers = workers;
        self
    }

    /// App threads per worker (`--threads`), each with its own copy of the app.
    pub fn threads(mut self, threads: usize) -> Self {
        self.settings.threads = threads;
        self
    }

    /// A worker silent this long is killed and replaced (`-t`); `None` (or zero) never.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How long workers get to finish after TERM before they are killed.
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.settings.graceful_timeout = timeout;
        self
    }

    /// How long an idle keep-alive connection is kept waiting for its next request.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.settings.keep_alive = keep_alive;
        self
    }

    /// Replace a worker after this many requests; 0 never.
    pub fn max_requests(mut self, max_requests: u64) -> Self {
        self.settings.max_requests = max_requests;
        self
    }

    /// Request line, header and body limits (gunicorn's `--limit-request-*`).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.settings.limits = limits;
        self
    }

    /// Workers switch to this user (name or uid) and its primary group.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.settings.user = Some(user.into());
        self
    }

    /// Workers switch to this group (name or gid).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.settings.group = Some(group.into());
        self
    }

    /// Write the master's pid here while it runs (`-p`).
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.pidfile = Some(path.into());
        self
    }

    /// Send the error log (fd 2, so tracebacks too) to this file; USR1 reopens it.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.log_file = Some(path.into());
        self
    }

    /// Code to run around each fork.
    pub fn fork_observer(mut self, observer: Box<dyn ForkObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Who hears of the master's life events (start, ready, forks, exits, reloads, stop).
    pub fn master_events(mut self, events: Box<dyn MasterEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Signal handlers installed earlier (install them first thing in `main`, before anything
    /// that might install its own, e.g. an embedded Python). Without this, `run` installs them.
    pub fn signals(mut self, signals: MasterSignals) -> Self {
        self.signals = Some(signals);
        self
    }

    /// Serve until stopped. Returns the master's exit code: 0 after a stop,
    /// [`WORKER_BOOT_ERROR`] when a worker cannot boot, [`APP_LOAD_ERROR`] when the app cannot
    /// be loaded; errors are start-up failures.
    pub fn run(self) -> Result<i32> {
        let mut signals = self.signals;
        if self.settings.daemon && !reexec::is_reexec() {
            // The handlers write to the master's pipe only in the process that installed them:
            // the daemon installs its own.
            drop(signals.take());
            daemon::daemonize()?;
        }
        let signals = match signals {
            Some(signals) => signals,
            None => MasterSignals::install()?,
        };
        let mut events = self.events;
        if let Some(events) = &mut events {
            events.starting();
        }
        let started = start(self.settings)?;
        let mut loader = self.loader;
        if let Err(PreloadError(e)) = loader.preload() {
            error!("{e}");
            if let Some(lists) = &started.file_lists {
                lists.remove();
            }
            return Ok(shut_down(Exit::AppLoadError));
        }
        let code = started.serve(signals, &mut *loader, self.observer, events)?;
        // With a preloaded app, the master ran it too.
        loader.before_exit();
        Ok(code)
    }
}

/// `dir` as an absolute path, so a later `chdir` of the app loader lands in the same place.
pub fn absolute_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(dir)
        .with_context(|| format!("cannot change directory to {}", dir.display()))
}

/// A master that is bound and announced, about to fork.
struct Started {
    settings: Settings,
    start: reexec::StartContext,
    parent_master: Option<i32>,
    log_file: LogFile,
    access_log: Option<AccessLog>,
    statsd: Option<Statsd>,
    worker_logs: WorkerLogs,
    owner: Owner,
    listeners: Vec<Listener>,
    pidfile: PidFile,
    /// With `--reload`: where workers list the files their app imported.
    file_lists: Option<reload::FileLists>,
    stats: Option<Listener>,
}

/// Everything before the first fork, in gunicorn's order.
fn start(mut settings: Settings) -> Result<Started> {
    // Before chdir: a re-exec (USR2) repeats the command line from where it was typed.
    let start = reexec::StartContext::capture()?;
    if let Some(dir) = &settings.chdir {
        // As gunicorn, the master itself moves first, so relative unix socket, pid file and log
        // file paths are inside it.
        let absolute = absolute_dir(dir)?;
        std::env::set_current_dir(&absolute)
            .with_context(|| format!("cannot change directory to {}", dir.display()))?;
        settings.chdir = Some(absolute);
    }
    let parent_master = reexec::take_parent_master();
    let name = proc_name(&settings);
    proctitle::set(&format!("ferrocorn: master [{name}]"));
    let log_file = LogFile::new(settings.log_file.as_deref(), settings.capture_output);
    log_file.open()?;
    for (key, value) in &settings.env {
        // SAFETY: single-threaded here (no worker forked, no thread started), so no one reads the
        // environment concurrently.
        unsafe { std::env::set_var(key, value) };
    }
    let owner = Owner::resolve(
        settings.user.as_deref(),
        settings.group.as_deref(),
        settings.initgroups,
    )?;
    let statsd = settings
        .statsd_host
        .as_deref()
        .map(|host| Statsd::connect(host, &settings.statsd_prefix, &settings.dogstatsd_tags))
        .transpose()?;
    let (access_log, worker_logs) = open_logs(&settings, &log_file, &owner)?;
    info!("Starting ferrocorn {}", env!("CARGO_PKG_VERSION"));
    // Forked before binding, so the reloader holds no listening socket.
    let file_lists = start_reloader(&settings, &owner)?;
    let listeners = bind::bind(&settings)?;
    bind::announce(&listeners, &owner, settings.threads)?;
    let stats = bind_stats(&settings, parent_master.is_some())?;
    let pidfile = match parent_master {
        Some(_) => PidFile::create_for_successor(settings.pidfile.clone())?,
        None => PidFile::create(settings.pidfile.clone())?,
    };
    Ok(Started {
        settings,
        start,
        parent_master,
        log_file,
        access_log,
        statsd,
        worker_logs,
        owner,
        listeners,
        pidfile,
        file_lists,
        stats,
    })
}

/// `--name`, else the program's file name.
fn proc_name(settings: &Settings) -> String {
    settings.proc_name.clone().unwrap_or_else(|| {
        std::env::args_os()
            .next()
            .map(PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "ferrocorn".to_string())
    })
}

/// The access log (created now, as the user the master runs as) and the files the workers
/// reopen, handed to their user.
fn open_logs(
    settings: &Settings,
    log_file: &LogFile,
    owner: &Owner,
) -> Result<(Option<AccessLog>, WorkerLogs)> {
    let access_log = access_log(settings);
    if let Some(log) = &access_log {
        log.create()?;
    }
    let worker_logs = WorkerLogs::new(
        owner.clone(),
        log_file
            .path()
            .into_iter()
            .chain(access_log.as_ref().and_then(AccessLog::path))
            .map(Path::to_path_buf),
    );
    worker_logs.hand_over()?;
    Ok((access_log, worker_logs))
}

fn access_log(settings: &Settings) -> Option<AccessLog> {
    let path = settings.access_log.as_deref()?;
    let format = settings
        .access_log_format
        .as_deref()
        .unwrap_or(access_log::DEFAULT_FORMAT);
    Some(AccessLog::new(path, AccessFormat::parse(format)))
}

/// `--reload`: the directory for the workers' file lists, and the reloader watching them.
fn start_reloader(settings: &Settings, owner: &Owner) -> Result<Option<reload::FileLists>> {
    if !settings.reload {
        return Ok(None);
    }
    let lists = reload::FileLists::create(owner)?;
    reload::spawn_reloader(&lists, &settings.reload_extra_files)?;
    Ok(Some(lists))
}

/// The `--stats` listener. A master started by USR2 finds the address taken by its parent: it
/// goes without stats until promoted (see [`hooks::MasterHooks`]), and says so.
fn bind_stats(settings: &Settings, reexecuted: bool) -> Result<Option<Listener>> {
    let Some(spec) = &settings.stats else {
        return Ok(None);
    };
    match ferrocorn_listener::bind(spec, &stats_listen_options()) {
        Ok(listener) => {
            info!("Stats at {}", listener.describe());
            Ok(Some(listener))
        }
        Err(e) if reexecuted => {
            log::warn!("no stats in this re-executed master until its parent exits: {e}");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("--stats {spec}")),
    }
}

impl Started {
    /// Run the arbiter until the server stops; returns the exit code.
    fn serve(
        self,
        signals: MasterSignals,
        loader: &mut dyn AppLoader,
        observer: Box<dyn ForkObserver>,
        events: Option<Box<dyn MasterEvents>>,
    ) -> Result<i32> {
        let config = arbiter_config(&self.settings);
        let name = proc_name(&self.settings);
        let parent_master = self.parent_master;
        let (hooks, side) = self.split_for_master(name.clone(), observer, events)?;
        let settings = &side.settings;
        let mut arbiter = Arbiter::new(config, signals, hooks)?;
        if let Some(parent) = parent_master {
            arbiter.set_parent_master(parent);
        }
        if settings.daemon {
            arbiter.set_daemonized();
        }
        let mut worker = worker::Worker {
            owner: &side.owner,
            loader,
            listeners: &side.listeners,
            config: worker_config(settings),
            threads: settings.threads.max(1),
            max_requests_jitter: settings.max_requests_jitter,
            log_file: &side.log_file,
            access_log: side.access_log,
            statsd: side.statsd.as_ref(),
            title: format!("ferrocorn: worker [{name}]"),
            file_lists: side.file_lists.as_ref(),
        };
        let exit = arbiter.run(&mut |ctx| worker.run(ctx));
        let code = shut_down(exit);
        arbiter.hooks_mut().events.exiting();
        arbiter.hooks_mut().pidfile.remove();
        if let Some(lists) = &side.file_lists {
            lists.remove();
        }
        Ok(code)
    }

    /// Hand the master's part to its hooks (with copies of what the workers use too); the rest
    /// is what the workers are built from.
    fn split_for_master(
        self,
        name: String,
        observer: Box<dyn ForkObserver>,
        events: Option<Box<dyn MasterEvents>>,
    ) -> Result<(hooks::MasterHooks, WorkerSide)> {
        let Started {
            settings,
            start,
            parent_master: _,
            log_file,
            access_log,
            statsd,
            worker_logs,
            owner,
            listeners,
            pidfile,
            file_lists,
            stats,
        } = self;
        let hooks = hooks::MasterHooks {
            name,
            log_file: log_file.clone(),
            access_log_path: access_log
                .as_ref()
                .and_then(AccessLog::path)
                .map(Path::to_path_buf),
            worker_logs,
            start,
            reexec_listeners: listeners
                .iter()
                .map(Listener::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .context("duplicating the listeners for USR2")?,
            pidfile,
            socket_files: bind::socket_files(&listeners),
            observer,
            statsd: statsd.as_ref().map(Statsd::try_clone).transpose()?,
            workers_running: 0,
            events: event_feed::EventFeed::new(events, settings.workers),
            stats_retry: settings.stats.clone().filter(|_| stats.is_none()),
            stats: stats.map(|l| stats_server(l, &listeners)).transpose()?,
        };
        let side = WorkerSide {
            settings,
            log_file,
            access_log,
            statsd,
            owner,
            listeners,
            file_lists,
        };
        Ok((hooks, side))
    }
}

/// What the workers are built from, once the master's hooks have taken their part of [`Started`].
struct WorkerSide {
    settings: Settings,
    log_file: LogFile,
    access_log: Option<AccessLog>,
    statsd: Option<Statsd>,
    owner: Owner,
    listeners: Vec<Listener>,
    file_lists: Option<reload::FileLists>,
}

/// How the arbiter runs the workers: how many, their timeouts, and the sizing and memory policies.
fn arbiter_config(settings: &Settings) -> ArbiterConfig {
    ArbiterConfig {
        workers: settings.workers,
        timeout: settings.timeout.filter(|t| !t.is_zero()),
        graceful_timeout: settings.graceful_timeout,
        sizing: sizing::worker_sizing(settings),
        memory: sizing::memory_policy(settings),
        threads: settings.threads.max(1),
    }
}

/// The stats socket: a small backlog, since its clients are few.
pub(crate) fn stats_listen_options() -> ferrocorn_listener::ListenOptions {
    ferrocorn_listener::ListenOptions {
        backlog: 64,
        ..Default::default()
    }
}

pub(crate) fn stats_server(
    listener: Listener,
    listeners: &[Listener],
) -> Result<stats::StatsServer> {
    let watched = listeners
        .iter()
        .map(|l| Ok((l.describe(), l.try_clone()?)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("duplicating the listeners for --stats")?;
    stats::StatsServer::new(listener, watched).context("--stats")
}

fn worker_config(settings: &Settings) -> WorkerConfig {
    WorkerConfig {
        limits: settings.limits.clone(),
        keepalive: settings.keep_alive,
        header_timeout: settings.header_timeout,
        max_requests: settings.max_requests,
        graceful_timeout: settings.graceful_timeout,
        timeout: settings.timeout.filter(|t| !t.is_zero()),
        worker_connections: settings.worker_connections,
        ..WorkerConfig::default()
    }
}

/// gunicorn's last words: "Shutting down: Master", and for a failed exit (at ERROR) the reason.
fn shut_down(exit: Exit) -> i32 {
    match exit.reason() {
        None => info!("Shutting down: Master"),
        Some(reason) => {
            error!("Shutting down: Master");
            error!("Reason: {reason}");
        }
    }
    exit.code()
}
