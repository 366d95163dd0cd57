//! gunicorn's flag set for ferrocorn servers, Python or not.
//!
//! [`main`] is the whole `main` of a Rust app: `ferrocorn_flags::main(|| Box::new(MyApp))` takes
//! gunicorn's command line (`-w`, `-b`, `--timeout`, `--pid`, ...) and serves `MyApp` with
//! ferrocorn's process model. The `ferrocorn` binary uses [`run`] to plug its WSGI app in.
//! Exit codes: 0 after a stop, 1 on a start-up error, 2 for bad flags, 3 when a worker cannot
//! boot, 4 when the app cannot be loaded.
#![warn(missing_docs)]

mod options;

use std::process::ExitCode;

use clap::Parser;
use ferrocorn_server::{logging, Builder, Limits, Server, Settings, ThreadApp, WorkerMode};
use ferrocorn_signals::MasterSignals;
use log::error;

pub use options::{parse_size, Options, SchemeHeaders, Workers, DEFAULT_SCHEME_HEADERS};

/// Whether the `APP` argument (a Python module path) must be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppArgument {
    /// A WSGI app: `APP` names it.
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
    /// Binding, the pid file, the log file, privileges or the arbiter failed.
    #[error(transparent)]
    Server(#[from] ferrocorn_server::Error),
}

/// Serve the Rust app `factory` builds (in each worker) with the process's command line.
pub fn main(factory: impl FnMut() -> ThreadApp + 'static) -> ExitCode {
    run(AppArgument::Optional, move |_| Server::builder(factory))
}

/// Install signal handlers (before anything else, so e.g. an embedded Python never owns SIGINT),
/// parse the command line, then run the server `build` makes for the flags (its settings come
/// from the flags).
pub fn run(app: AppArgument, build: impl FnOnce(&Options) -> Builder) -> ExitCode {
    ferrocorn_server::proctitle::init();
    let signals = match install_signals() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let options = Options::parse();
    if options.version {
        println!("ferrocorn {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
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
    if !is_supported_worker(&options.worker_class) {
        return Err(Error::Unsupported(format!(
            "worker class {:?} is not supported: ferrocorn's worker is sync or gthread (an event \
             loop holding the connections, with --threads app threads){}",
            options.worker_class,
            instead_of(&options.worker_class)
        )));
    }
    worker_mode(options)?;
    if app == AppArgument::Required && options.app.is_none() {
        // clap's own wording and exit code for a missing argument.
        command_error("the following required arguments were not provided: <APP>");
    }
    Ok(())
}

/// gunicorn's spellings of its sync and gthread workers: both are ferrocorn's worker (as in
/// gunicorn, `-k sync --threads 4` runs threads).
fn is_supported_worker(class: &str) -> bool {
    matches!(
        class,
        "sync"
            | "egg:gunicorn#sync"
            | "gunicorn.workers.sync.SyncWorker"
            | "gthread"
            | "egg:gunicorn#gthread"
            | "gunicorn.workers.gthread.ThreadWorker"
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
        "; ferrocorn has no green threads, but its workers park slow and idle connections in \
         their event loop: raise --threads for an app that waits on I/O, --workers for CPU"
    } else if name.contains("thread") {
        "; use -k gthread with --threads N"
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

/// The count `-w` asks for (1 when not given), and how it may change: `-w N` is exactly N, as in
/// gunicorn; nothing scales unless asked.
pub fn worker_mode(options: &Options) -> Result<(usize, WorkerMode), Error> {
    let scaling = options.workers_min.is_some() || options.workers_max.is_some();
    match (options.workers, scaling) {
        (Some(_), true) => Err(Error::Unsupported(
            "--workers cannot be combined with --workers-min/--workers-max: give -w N:M, or \
                 the two bounds alone"
                .to_string(),
        )),
        (_, true) => {
            let Some(max) = options.workers_max else {
                return Err(Error::Unsupported(
                    "--workers-min needs --workers-max".to_string(),
                ));
            };
            let min = options.workers_min.unwrap_or(1);
            if min > max {
                return Err(Error::Unsupported(format!(
                    "--workers-min {min} is above --workers-max {max}"
                )));
            }
            Ok((min, WorkerMode::Scale { min, max }))
        }
        (None, false) => Ok((1, WorkerMode::Fixed)),
        (Some(Workers::Count(n)), false) => Ok((n, WorkerMode::Fixed)),
        (Some(Workers::Auto), false) => Ok((1, WorkerMode::Auto)),
        (Some(Workers::Range { min, max }), false) => Ok((min, WorkerMode::Scale { min, max })),
    }
}

/// The server's settings from the flags.
pub fn settings(options: &Options) -> Settings {
    // The wsgi crate reads gunicorn's environment variable; the flag wins over it, as in
    // gunicorn, and an explicit `--env FORWARDED_ALLOW_IPS=...` over both.
    let forwarded = options
        .forwarded_allow_ips
        .iter()
        .map(|ips| ("FORWARDED_ALLOW_IPS".to_string(), ips.clone()));
    // check_options refused the combinations this could reject.
    let (workers, worker_mode) = worker_mode(options).unwrap_or((1, WorkerMode::Fixed));
    Settings {
        binds: options.bind.clone(),
        backlog: options.backlog,
        reuse_port: options.reuse_port,
        umask: options.umask,
        workers,
        threads: options.threads.max(1),
        worker_connections: options
            .worker_connections
            .unwrap_or(Settings::default().worker_connections),
        worker_mode,
        scale_down_after: options.scale_down_after,
        memory_budget: options.memory_budget,
        max_worker_memory: options.max_worker_memory,
        min_worker_lifetime: options.min_worker_lifetime,
        max_worker_lifetime: options.max_worker_lifetime,
        max_worker_lifetime_jitter: options.max_worker_lifetime_jitter,
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
            ..Limits::default()
        },
        chdir: options.chdir.clone(),
        env: forwarded.chain(options.env.iter().cloned()).collect(),
        user: options.user.clone(),
        group: options.group.clone(),
        initgroups: options.initgroups,
        log_file: options.log_file.clone(),
        capture_output: options.capture_output,
        pidfile: options.pidfile.clone(),
        access_log: options.access_logfile.clone(),
        access_log_format: options.access_logformat.clone(),
        statsd_host: options.statsd_host.clone(),
        statsd_prefix: options.statsd_prefix.clone(),
        dogstatsd_tags: options.dogstatsd_tags.clone(),
        proc_name: options.name.clone().or_else(|| options.app.clone()),
        daemon: options.daemon,
        reload: options.reload,
        reload_extra_files: options.reload_extra_files.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_set_is_well_formed() {
        use clap::CommandFactory;
        Options::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("ferrocorn").chain(args.iter().copied()))
    }

    fn mode(args: &[&str]) -> Result<(usize, WorkerMode), Error> {
        worker_mode(&parse(args).unwrap())
    }

    #[test]
    fn dash_w_n_is_exactly_n_and_nothing_scales_unless_asked() {
        assert_eq!(mode(&["-w", "4"]).unwrap(), (4, WorkerMode::Fixed));
        assert_eq!(mode(&[]).unwrap(), (1, WorkerMode::Fixed));
        let s = settings(&parse(&["-w", "4"]).unwrap());
        assert_eq!((s.workers, s.worker_mode), (4, WorkerMode::Fixed));
        assert_eq!(s.memory_budget, None);
        assert_eq!(s.max_worker_memory, None);
    }

    #[test]
    fn auto_and_ranges_are_spelled_in_several_ways() {
        assert_eq!(mode(&["-w", "auto"]).unwrap().1, WorkerMode::Auto);
        assert_eq!(mode(&["--workers=AUTO"]).unwrap().1, WorkerMode::Auto);
        let range = WorkerMode::Scale { min: 2, max: 8 };
        assert_eq!(mode(&["-w", "2:8"]).unwrap(), (2, range));
        assert_eq!(
            mode(&["--workers-min", "2", "--workers-max", "8"]).unwrap(),
            (2, range)
        );
        assert_eq!(
            mode(&["--workers-max", "3"]).unwrap().1,
            WorkerMode::Scale { min: 1, max: 3 }
        );
    }

    #[test]
    fn secure_scheme_headers_default_to_gunicorns_and_may_be_emptied() {
        let headers = |args: &[&str]| parse(args).map(|o| o.secure_scheme_headers.0);
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(
            headers(&[]).unwrap(),
            [
                pair("X-FORWARDED-PROTOCOL", "ssl"),
                pair("X-FORWARDED-PROTO", "https"),
                pair("X-FORWARDED-SSL", "on")
            ]
        );
        assert_eq!(
            headers(&["--secure-scheme-headers=X-Scheme=secure"]).unwrap(),
            [pair("X-Scheme", "secure")]
        );
        assert!(headers(&["--secure-scheme-headers="]).unwrap().is_empty());
        for bad in ["X-Proto", "=https", "X Proto=https", "X-Proto=https,oops"] {
            assert!(headers(&["--secure-scheme-headers", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn contradictory_worker_counts_are_refused_by_name() {
        assert!(parse(&["-w", "3:2"]).is_err());
        assert!(parse(&["-w", "0"]).is_err());
        assert!(parse(&["-w", "many"]).is_err());
        let both = mode(&["-w", "2", "--workers-max", "4"]).unwrap_err();
        assert!(
            both.to_string().contains("--workers-min/--workers-max"),
            "{both}"
        );
        let lone = mode(&["--workers-min", "2"]).unwrap_err();
        assert!(lone.to_string().contains("needs --workers-max"), "{lone}");
        let upside = mode(&["--workers-min", "5", "--workers-max", "4"]).unwrap_err();
        assert!(
            upside.to_string().contains("above --workers-max"),
            "{upside}"
        );
    }

    #[test]
    fn sizes_take_k_m_g_suffixes_in_powers_of_two() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "M", "12X", "-1M", "0", "lots"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        let s =
            settings(&parse(&["--max-worker-memory", "300M", "--memory-budget", "2G"]).unwrap());
        assert_eq!(s.max_worker_memory, Some(300 << 20));
        assert_eq!(s.memory_budget, Some(2 << 30));
    }

    #[test]
    fn lifetimes_have_their_defaults() {
        let s = settings(&parse(&[]).unwrap());
        assert_eq!(s.min_worker_lifetime, std::time::Duration::from_secs(60));
        assert_eq!(s.scale_down_after, std::time::Duration::from_secs(30));
        assert_eq!(s.max_worker_lifetime, None);
        let s = settings(
            &parse(&[
                "--max-worker-lifetime",
                "3600",
                "--max-worker-lifetime-jitter",
                "60",
            ])
            .unwrap(),
        );
        assert_eq!(
            s.max_worker_lifetime,
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(
            s.max_worker_lifetime_jitter,
            std::time::Duration::from_secs(60)
        );
    }

    fn check(args: &[&str]) -> Result<(), Error> {
        check_options(&parse(args).unwrap(), AppArgument::Optional)
    }

    #[test]
    fn threads_and_worker_connections_reach_the_settings() {
        let s = settings(&parse(&["--threads", "4", "--worker-connections", "50"]).unwrap());
        assert_eq!((s.threads, s.worker_connections), (4, 50));
        let s = settings(&parse(&[]).unwrap());
        assert_eq!((s.threads, s.worker_connections), (1, 1000));
        check(&["--threads", "8"]).unwrap();
    }

    #[test]
    fn zero_threads_or_connections_is_an_error_naming_the_flag() {
        for flag in ["--threads", "--worker-connections"] {
            let err = parse(&[flag, "0"]).unwrap_err().to_string();
            assert!(err.contains(flag) && err.contains("at least 1"), "{err}");
        }
        let err = parse(&["--threads", "many"]).unwrap_err().to_string();
        assert!(err.contains("--threads"), "{err}");
    }

    #[test]
    fn gthread_and_sync_in_gunicorns_spellings_are_accepted_with_threads() {
        for class in [
            "sync",
            "gthread",
            "egg:gunicorn#gthread",
            "gunicorn.workers.gthread.ThreadWorker",
            "gunicorn.workers.sync.SyncWorker",
        ] {
            check(&["-k", class, "--threads", "4"]).unwrap();
            check(&["--worker-class", class]).unwrap();
        }
        // As in gunicorn, -k sync with --threads runs the threads.
        let s = settings(&parse(&["-k", "sync", "--threads", "4"]).unwrap());
        assert_eq!(s.threads, 4);
    }

    #[test]
    fn other_worker_classes_are_refused_with_what_to_use_instead() {
        let refused = |class: &str| check(&["-k", class]).unwrap_err().to_string();
        for class in ["gevent", "eventlet", "tornado", "egg:gunicorn#gevent"] {
            let err = refused(class);
            assert!(
                err.contains(&format!("{class:?} is not supported")),
                "{err}"
            );
            assert!(err.contains("--threads") && err.contains("green"), "{err}");
        }
        let err = refused("uvicorn.workers.UvicornWorker");
        assert!(err.contains("not ASGI"), "{err}");
        assert!(!err.contains("one request at a time"), "{err}");
    }
}
