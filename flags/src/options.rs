//! Command-line flags, spelled as gunicorn spells them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferrocorn_listener::BindSpec;

fn parse_bind(s: &str) -> Result<BindSpec, String> {
    s.parse()
        .map_err(|e: ferrocorn_listener::Error| e.to_string())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A count that must be at least 1 (`--threads`, `--worker-connections`).
fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

fn parse_positive_seconds(s: &str) -> Result<Duration, String> {
    match parse_seconds(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be more than 0 seconds")),
        d => Ok(d),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_octal(s: &str) -> Result<u32, String> {
    let digits = s.trim_start_matches("0o");
    u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not an octal umask like 0o007"))
}

/// gunicorn's `secure_scheme_headers`: header names with the value that means https, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeHeaders(pub Vec<(String, String)>);

/// gunicorn's default `secure_scheme_headers`, as the flag writes it.
pub const DEFAULT_SCHEME_HEADERS: &str =
    "X-FORWARDED-PROTOCOL=ssl,X-FORWARDED-PROTO=https,X-FORWARDED-SSL=on";

/// `NAME=VALUE,NAME=VALUE`; an empty list means no header tells the scheme.
fn parse_scheme_headers(s: &str) -> Result<SchemeHeaders, String> {
    let mut headers = Vec::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some((name, value)) if ferrocorn_http::is_token(name.as_bytes()) => {
                headers.push((name.to_string(), value.to_string()))
            }
            _ => return Err(format!("{item:?} is not HEADER-NAME=VALUE")),
        }
    }
    Ok(SchemeHeaders(headers))
}

/// `-w`: a count (gunicorn's meaning: exactly that many), `auto`, or `MIN:MAX` to autoscale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// Exactly this many.
    Count(usize),
    /// 2 x CPUs + 1, capped by what fits the memory budget.
    Auto,
    /// Autoscale between the bounds.
    Range {
        /// Never fewer.
        min: usize,
        /// Never more.
        max: usize,
    },
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number of workers")),
    }
}

fn parse_workers(s: &str) -> Result<Workers, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(Workers::Auto);
    }
    let Some((min, max)) = s.split_once(':') else {
        return parse_count(s).map(Workers::Count);
    };
    let (min, max) = (parse_count(min)?, parse_count(max)?);
    if min > max {
        return Err(format!("{s:?}: the minimum is above the maximum"));
    }
    Ok(Workers::Range { min, max })
}

/// Bytes, with an optional `K`, `M` or `G` suffix (KiB, MiB, GiB): `512M`, `1.5G`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    ferrocorn_sizing::parse_size(s).map_err(|e| e.to_string())
}

/// gunicorn's command line, parsed (from any source: flags, `$GUNICORN_CMD_ARGS`, config files).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferrocorn",
    version,
    disable_version_flag = true,
    // The doc comment above is for rustdoc, not `--help`.
    long_about = None,
    about = "A pre-fork HTTP server for Python WSGI apps: gunicorn's flags and signals, in Rust.",
    after_help = "Signals: TERM graceful stop, INT/QUIT quick stop, HUP reload workers, \
                  TTIN/TTOU one more/fewer worker, USR1 reopen log files, USR2 start a new master on the \
                  same sockets (upgrade on the fly; then TERM the old one), WINCH (with --daemon) stop \
                  the workers.\n\n\
                  `ferrocorn sizing [FLAGS] APP` measures the app and recommends a worker count \
                  (see `ferrocorn sizing --help`)."
)]
pub struct Options {
    /// The config file: a Python file (PATH or file:PATH) or python:MODULE.NAME, as gunicorn's.
    /// Default ./gunicorn.conf.py when it exists. Flags in $GUNICORN_CMD_ARGS, then
    /// $FERROCORN_CMD_ARGS, then the command line override it.
    #[arg(short = 'c', long, value_name = "CONFIG")]
    pub config: Option<String>,

    /// Load the config and the app, then exit: 0 when both load, non-zero with the reason.
    #[arg(long = "check-config")]
    pub check_config: bool,

    /// Print every effective setting and where it came from, then check the app loads and exit.
    #[arg(long = "print-config")]
    pub print_config: bool,

    /// The WSGI application: `module:callable`, `module:factory(args)` or `module`.
    #[arg(value_name = "APP")]
    pub app: Option<String>,

    /// Socket to bind: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N. Repeatable.
    /// Default 127.0.0.1:8000, or 0.0.0.0:$PORT when $PORT is set.
    #[arg(short = 'b', long = "bind", value_name = "ADDRESS", value_parser = parse_bind)]
    pub bind: Vec<BindSpec>,

    /// Maximum number of pending connections.
    #[arg(long, default_value_t = 2048, value_name = "INT")]
    pub backlog: i32,

    /// Number of worker processes (default 1, or $WEB_CONCURRENCY): N runs exactly N, as in
    /// gunicorn; `auto` runs min(2 x CPUs + 1, the workers that fit the memory budget); MIN:MAX
    /// scales with the load (as --workers-min/--workers-max).
    #[arg(short = 'w', long, env = "WEB_CONCURRENCY", value_name = "N|auto|MIN:MAX", value_parser = parse_workers)]
    pub workers: Option<Workers>,

    /// Autoscale: never fewer workers than this (default 1). Needs --workers-max.
    #[arg(long = "workers-min", value_name = "INT", value_parser = parse_count)]
    pub workers_min: Option<usize>,

    /// Autoscale: fork workers while all are busy and connections wait, up to this many (and
    /// the memory budget).
    #[arg(long = "workers-max", value_name = "INT", value_parser = parse_count)]
    pub workers_max: Option<usize>,

    /// Autoscale: retire a worker once it has been idle this many seconds.
    #[arg(long = "scale-down-after", default_value = "30", value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub scale_down_after: Duration,

    /// Memory the whole server may use (e.g. 2G): caps --workers auto and autoscaling, and the
    /// largest worker is replaced while the server is over it. Default: the cgroup limit, else
    /// RAM (only with auto or autoscaling).
    #[arg(long = "memory-budget", value_name = "SIZE", value_parser = parse_size)]
    pub memory_budget: Option<u64>,

    /// Replace a worker whose private memory (USS) grows above this (e.g. 300M), after its
    /// request; its replacement boots first.
    #[arg(long = "max-worker-memory", value_name = "SIZE", value_parser = parse_size)]
    pub max_worker_memory: Option<u64>,

    /// Seconds a worker lives at least before it is replaced for its memory.
    #[arg(long = "min-worker-lifetime", default_value = "60", value_name = "SECONDS", value_parser = parse_seconds)]
    pub min_worker_lifetime: Duration,

    /// Replace a worker after it lived this many seconds.
    #[arg(long = "max-worker-lifetime", value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub max_worker_lifetime: Option<Duration>,

    /// Add up to this many seconds at random to --max-worker-lifetime, so workers are not
    /// replaced together.
    #[arg(long = "max-worker-lifetime-jitter", default_value = "0", value_name = "SECONDS", value_parser = parse_seconds)]
    pub max_worker_lifetime_jitter: Duration,

    /// Worker type: `sync` or `gthread` (the same worker: an event loop for connections with
    /// --threads app threads).
    #[arg(
        short = 'k',
        long = "worker-class",
        default_value = "sync",
        value_name = "STRING"
    )]
    pub worker_class: String,

    /// App threads per worker, each serving one request at a time (the GIL is released while a
    /// request waits on its socket).
    #[arg(long, default_value_t = 1, value_name = "INT", value_parser = parse_at_least_one)]
    pub threads: usize,

    /// Workers silent for more than this many seconds are killed and restarted (0 disables).
    #[arg(short = 't', long, default_value = "30", value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Seconds workers get to finish their requests after TERM before being killed.
    #[arg(long = "graceful-timeout", default_value = "30", value_name = "SECONDS", value_parser = parse_seconds)]
    pub graceful_timeout: Duration,

    /// Seconds to wait for the next request on a keep-alive connection.
    #[arg(long = "keep-alive", default_value = "2", value_name = "SECONDS", value_parser = parse_seconds)]
    pub keep_alive: Duration,

    /// Seconds within which a request's whole head must arrive.
    #[arg(long = "header-timeout", default_value = "10", value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub header_timeout: Duration,

    /// Restart a worker after this many requests (0 = never).
    #[arg(long = "max-requests", default_value_t = 0, value_name = "INT")]
    pub max_requests: u64,

    /// Add up to this many requests at random to --max-requests, so workers do not restart together.
    #[arg(long = "max-requests-jitter", default_value_t = 0, value_name = "INT")]
    pub max_requests_jitter: u64,

    /// Maximum size of the request line in bytes (0 or over 8190 means 8190, as in gunicorn).
    #[arg(
        long = "limit-request-line",
        default_value_t = 4094,
        value_name = "INT"
    )]
    pub limit_request_line: usize,

    /// Maximum number of header fields (0 means 32768, as in gunicorn).
    #[arg(
        long = "limit-request-fields",
        default_value_t = 100,
        value_name = "INT"
    )]
    pub limit_request_fields: usize,

    /// Maximum size of one header field in bytes (0 means 8190, as in gunicorn).
    #[arg(
        long = "limit-request-field_size",
        alias = "limit-request-field-size",
        default_value_t = 8190,
        value_name = "INT"
    )]
    pub limit_request_field_size: usize,

    /// Maximum request body size in bytes (0 = unlimited).
    #[arg(long = "limit-request-body", default_value_t = 0, value_name = "INT")]
    pub limit_request_body: u64,

    /// Change to this directory before loading the app.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Comma-separated directories to add to the Python path.
    #[arg(long, value_name = "PATHS", value_delimiter = ',')]
    pub pythonpath: Vec<PathBuf>,

    /// Set an environment variable for the app (KEY=VALUE). Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Use this virtualenv's packages (default $VIRTUAL_ENV).
    #[arg(long, env = "VIRTUAL_ENV", value_name = "DIR")]
    pub virtualenv: Option<PathBuf>,

    /// Load the app in the master before forking workers (shares memory between workers).
    #[arg(long)]
    pub preload: bool,

    /// Switch worker processes to this user (name or uid).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// With --user: give workers the user's supplementary groups from the group database
    /// (otherwise they keep the --group / primary group only).
    #[arg(long)]
    pub initgroups: bool,

    /// Switch worker processes to this group (name or gid).
    #[arg(short = 'g', long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Umask (octal) for unix socket files, as gunicorn: the socket's mode is 0o777 minus these
    /// bits (default 0: anyone may connect). The process umask is left alone.
    #[arg(short = 'm', long, value_name = "MODE", value_parser = parse_octal)]
    pub umask: Option<u32>,

    /// Set SO_REUSEPORT on listening sockets.
    #[arg(long = "reuse-port")]
    pub reuse_port: bool,

    /// The error log file (`-` = stderr).
    #[arg(long = "log-file", alias = "error-logfile", value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Send stdout (e.g. the app's `print`) to the --log-file too.
    #[arg(long = "capture-output")]
    pub capture_output: bool,

    /// debug, info, warning, error or critical.
    #[arg(long = "log-level", default_value = "info", value_name = "LEVEL", value_parser = ferrocorn_server::logging::parse_level)]
    pub log_level: log::LevelFilter,

    /// The access log file (`-` = stdout); none by default.
    #[arg(long = "access-logfile", value_name = "FILE")]
    pub access_logfile: Option<PathBuf>,

    /// The access log format, with gunicorn's atoms (default
    /// `%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"`).
    #[arg(long = "access-logformat", value_name = "STRING")]
    pub access_logformat: Option<String>,

    /// Send gunicorn's metrics to this statsd server (HOST:PORT, UDP).
    #[arg(long = "statsd-host", value_name = "STATSD_ADDR")]
    pub statsd_host: Option<String>,

    /// Prefix for the statsd metric names.
    #[arg(
        long = "statsd-prefix",
        value_name = "STATSD_PREFIX",
        default_value = ""
    )]
    pub statsd_prefix: String,

    /// Comma-separated DogStatsD tags (`key:value,...`) added to every metric.
    #[arg(
        long = "dogstatsd-tags",
        value_name = "DOGSTATSD_TAGS",
        default_value = ""
    )]
    pub dogstatsd_tags: String,
    /// Detach from the terminal and run in the background (std streams go to /dev/null unless
    /// --log-file says otherwise). WINCH then stops the workers.
    #[arg(short = 'D', long)]
    pub daemon: bool,

    /// Restart the workers when a file of the app's modules changes (development only).
    #[arg(long)]
    pub reload: bool,

    /// How --reload watches files: `auto` or `inotify` (both inotify).
    #[arg(long = "reload-engine", default_value = "auto", value_name = "STRING", value_parser = ["auto", "inotify"])]
    pub reload_engine: String,

    /// With --reload: also watch this file. Repeatable.
    #[arg(long = "reload-extra-file", value_name = "FILE")]
    pub reload_extra_files: Vec<PathBuf>,

    /// Write the master's pid to this file.
    #[arg(short = 'p', long = "pid", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,

    /// Serve read-only stats from the master: `GET /` JSON, `GET /metrics` Prometheus text
    /// (`ferrocorn top` reads it). `unix:PATH` or `127.0.0.1:PORT`; no commands are taken there.
    #[arg(long = "stats", value_name = "ADDRESS", value_parser = parse_bind)]
    pub stats: Option<BindSpec>,

    /// Proxies whose X-Forwarded-* / SCRIPT_NAME headers are trusted: comma-separated addresses
    /// or networks, or `*` (default 127.0.0.1, or $FORWARDED_ALLOW_IPS).
    #[arg(long = "forwarded-allow-ips", value_name = "ADDRESSES")]
    pub forwarded_allow_ips: Option<String>,

    /// Header fields a trusted proxy sets to say the request came over https, each with the value
    /// that means so (any other value means http): `NAME=VALUE,...`, empty for none. gunicorn's
    /// `secure_scheme_headers` (a config file setting; this flag is ferrocorn's own).
    #[arg(long = "secure-scheme-headers", value_name = "NAME=VALUE,...", default_value = DEFAULT_SCHEME_HEADERS, value_parser = parse_scheme_headers)]
    pub secure_scheme_headers: SchemeHeaders,

    /// Accepted for gunicorn command lines; unused: heartbeats live in shared memory, not in
    /// temporary files (the reason for `--worker-tmp-dir /dev/shm` in gunicorn).
    #[arg(long = "worker-tmp-dir", value_name = "DIR")]
    pub worker_tmp_dir: Option<PathBuf>,

    /// Most connections a worker holds at once (being served, reading their request head, or
    /// idle between keep-alive requests); default 1000.
    #[arg(long = "worker-connections", value_name = "INT", value_parser = parse_at_least_one)]
    pub worker_connections: Option<usize>,

    /// The name in process titles (`ferrocorn: master [NAME]`); default the app.
    #[arg(short = 'n', long, value_name = "STRING")]
    pub name: Option<String>,

    /// Print the version and exit.
    #[arg(short = 'v', long = "version")]
    pub version: bool,
}
