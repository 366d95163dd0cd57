//! Every gunicorn setting and what ferrocorn does with it: one table.

/// How a supported setting's value becomes flag tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One value: `--flag=VALUE`.
    Scalar,
    /// A string or a list of strings: `--flag=A --flag=B`.
    List,
    /// A string or a list joined with commas: `--flag=A,B`.
    Commas,
    /// A boolean: `--flag` when true.
    Switch,
    /// An integer written in octal for the flag (gunicorn's umask is an int, `0o007` in Python).
    Octal,
    /// A dict of strings: `--flag=KEY=VALUE,KEY=VALUE` (`--flag=` for an empty one).
    Pairs,
}

/// What ferrocorn does with one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Maps to the ferrocorn flag `--LONG`.
    Flag {
        /// The flag's long name, without dashes.
        long: &'static str,
        /// How the setting's Python value becomes the flag's value.
        shape: Shape,
    },
    /// The `APP` argument (`wsgi_app`).
    App,
    /// Not available. Values in `harmless` (JSON text: gunicorn's default, or what means "off")
    /// change nothing; any other value is refused when `refuse`, else warned about.
    Unsupported {
        /// Values (JSON text) that change nothing.
        harmless: &'static [&'static str],
        /// Whether another value is refused (else warned about).
        refuse: bool,
        /// What is missing, for the message.
        why: &'static str,
    },
    /// A server hook: a callable gunicorn calls at some point of the process life cycle.
    Hook,
}

/// A gunicorn setting, by the name a config file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// gunicorn's name for it (`workers`, `bind`, ...).
    pub name: &'static str,
    /// What ferrocorn does with it.
    pub status: Status,
}

const fn flag(name: &'static str, long: &'static str, shape: Shape) -> Setting {
    Setting {
        name,
        status: Status::Flag { long, shape },
    }
}

const fn refused(
    name: &'static str,
    harmless: &'static [&'static str],
    why: &'static str,
) -> Setting {
    Setting {
        name,
        status: Status::Unsupported {
            harmless,
            refuse: true,
            why,
        },
    }
}

const fn warned(
    name: &'static str,
    harmless: &'static [&'static str],
    why: &'static str,
) -> Setting {
    Setting {
        name,
        status: Status::Unsupported {
            harmless,
            refuse: false,
            why,
        },
    }
}

/// The hooks each worker calls (it executes the config file to get them).
pub const WORKER_HOOKS: &[&str] = &[
    "post_fork",
    "post_worker_init",
    "pre_request",
    "post_request",
    "worker_int",
    "worker_abort",
    "worker_exit",
];

/// The hooks a hook-runner process fed by the master calls. Hooks in neither list are warned
/// about by name.
pub const MASTER_HOOKS: &[&str] = &[
    "on_starting",
    "when_ready",
    "on_reload",
    "pre_fork",
    "child_exit",
    "nworkers_changed",
    "pre_exec",
    "on_exit",
];

const fn hook(name: &'static str) -> Setting {
    Setting {
        name,
        status: Status::Hook,
    }
}

use Shape::{Commas, List, Octal, Pairs, Scalar, Switch};

const NO_TLS: &str = "ferrocorn does not speak TLS: terminate TLS in the proxy in front of it";
const ONLY_TLS: &str = "only used with TLS, which ferrocorn does not speak";
const NO_LOG_CONFIG: &str = "ferrocorn logs to --log-file only";
const NO_STATSD: &str = "ferrocorn sends no backlog metric";
const NO_SYSLOG: &str = "ferrocorn does not log to syslog";
const NO_HTTP2: &str = "ferrocorn speaks HTTP/1.1 only";
const NO_ASGI: &str = "ferrocorn serves WSGI apps only";
const NO_DIRTY: &str = "ferrocorn has no dirty arbiters";
const STRICT_HTTP: &str = "ferrocorn's HTTP parser has gunicorn's strict default behaviour only";

/// gunicorn's settings (gunicorn/config.py), plus ferrocorn's own flags a config file may set.
pub static SETTINGS: &[Setting] = &[
    warned(
        "config",
        &["\"./gunicorn.conf.py\""],
        "a config file cannot name another one",
    ),
    Setting {
        name: "wsgi_app",
        status: Status::App,
    },
    flag("bind", "bind", List),
    flag("backlog", "backlog", Scalar),
    flag("workers", "workers", Scalar),
    flag("worker_class", "worker-class", Scalar),
    flag("threads", "threads", Scalar),
    flag("worker_connections", "worker-connections", Scalar),
    flag("max_requests", "max-requests", Scalar),
    flag("max_requests_jitter", "max-requests-jitter", Scalar),
    flag("timeout", "timeout", Scalar),
    flag("graceful_timeout", "graceful-timeout", Scalar),
    flag("keepalive", "keep-alive", Scalar),
    flag("limit_request_line", "limit-request-line", Scalar),
    flag("limit_request_fields", "limit-request-fields", Scalar),
    flag(
        "limit_request_field_size",
        "limit-request-field_size",
        Scalar,
    ),
    flag("reload", "reload", Switch),
    flag("reload_engine", "reload-engine", Scalar),
    flag("reload_extra_files", "reload-extra-file", List),
    warned("spew", &["false"], "ferrocorn has no trace function"),
    flag("check_config", "check-config", Switch),
    flag("print_config", "print-config", Switch),
    flag("preload_app", "preload", Switch),
    warned(
        "sendfile",
        &["null", "true"],
        "ferrocorn decides on sendfile itself",
    ),
    flag("reuse_port", "reuse-port", Switch),
    flag("chdir", "chdir", Scalar),
    flag("daemon", "daemon", Switch),
    flag("raw_env", "env", List),
    flag("pidfile", "pid", Scalar),
    flag("worker_tmp_dir", "worker-tmp-dir", Scalar),
    flag("user", "user", Scalar),
    flag("group", "group", Scalar),
    flag("umask", "umask", Octal),
    flag("initgroups", "initgroups", Switch),
    warned(
        "tmp_upload_dir",
        &["null"],
        "ferrocorn does not spool uploads to files",
    ),
    flag("secure_scheme_headers", "secure-scheme-headers", Pairs),
    flag("forwarded_allow_ips", "forwarded-allow-ips", Commas),
    flag("accesslog", "access-logfile", Scalar),
    warned("disable_redirect_access_to_syslog", &["false"], NO_SYSLOG),
    flag("access_log_format", "access-logformat", Scalar),
    flag("errorlog", "log-file", Scalar),
    flag("loglevel", "log-level", Scalar),
    flag("capture_output", "capture-output", Switch),
    warned(
        "logger_class",
        &["\"gunicorn.glogging.Logger\""],
        NO_LOG_CONFIG,
    ),
    warned("logconfig", &["null"], NO_LOG_CONFIG),
    warned("logconfig_dict", &["{}"], NO_LOG_CONFIG),
    warned("logconfig_json", &["null"], NO_LOG_CONFIG),
    warned("syslog_addr", &[], NO_SYSLOG),
    warned("syslog", &["false"], NO_SYSLOG),
    warned("syslog_prefix", &["null"], NO_SYSLOG),
    warned("syslog_facility", &["\"user\""], NO_SYSLOG),
    warned(
        "enable_stdio_inheritance",
        &["false"],
        "a daemon's std streams always go to /dev/null: log with --log-file",
    ),
    flag("statsd_host", "statsd-host", Scalar),
    flag("dogstatsd_tags", "dogstatsd-tags", Scalar),
    flag("statsd_prefix", "statsd-prefix", Scalar),
    warned("enable_backlog_metric", &["false"], NO_STATSD),
    flag("proc_name", "name", Scalar),
    warned(
        "default_proc_name",
        &["\"gunicorn\""],
        "ferrocorn's process titles say ferrocorn: set --name for the rest",
    ),
    flag("pythonpath", "pythonpath", Commas),
    refused(
        "paste",
        &["null"],
        "PasteDeploy apps are not supported: name the WSGI callable as APP",
    ),
    hook("on_starting"),
    hook("on_reload"),
    hook("when_ready"),
    hook("pre_fork"),
    hook("post_fork"),
    hook("post_worker_init"),
    hook("worker_int"),
    hook("worker_abort"),
    hook("pre_exec"),
    hook("pre_request"),
    hook("post_request"),
    hook("child_exit"),
    hook("worker_exit"),
    hook("nworkers_changed"),
    hook("on_exit"),
    hook("ssl_context"),
    refused(
        "proxy_protocol",
        &["\"off\"", "false", "null"],
        "the PROXY protocol is not supported: use X-Forwarded-For and --forwarded-allow-ips",
    ),
    warned(
        "proxy_allow_ips",
        &[],
        "only used with the PROXY protocol, which ferrocorn does not support",
    ),
    refused(
        "protocol",
        &["\"http\""],
        "ferrocorn speaks HTTP only, not the uwsgi protocol",
    ),
    warned(
        "uwsgi_allow_ips",
        &[],
        "only used with the uwsgi protocol, which ferrocorn does not support",
    ),
    refused("keyfile", &["null"], NO_TLS),
    refused("certfile", &["null"], NO_TLS),
    warned("ssl_version", &[], ONLY_TLS),
    warned("cert_reqs", &["0"], ONLY_TLS),
    warned("ca_certs", &["null"], ONLY_TLS),
    warned("suppress_ragged_eofs", &["true"], ONLY_TLS),
    warned("do_handshake_on_connect", &["false"], ONLY_TLS),
    warned("ciphers", &["null"], ONLY_TLS),
    warned("http_protocols", &["\"h1\""], NO_HTTP2),
    warned("http2_cleartext", &["\"off\"", "false"], NO_HTTP2),
    warned("http2_max_concurrent_streams", &[], NO_HTTP2),
    warned("http2_initial_window_size", &[], NO_HTTP2),
    warned("http2_max_frame_size", &[], NO_HTTP2),
    warned("http2_max_header_list_size", &[], NO_HTTP2),
    refused(
        "raw_paste_global_conf",
        &["[]"],
        "PasteDeploy apps are not supported",
    ),
    refused("permit_obsolete_folding", &["false"], STRICT_HTTP),
    refused("strip_header_spaces", &["false"], STRICT_HTTP),
    refused("permit_unconventional_http_method", &["false"], STRICT_HTTP),
    refused(
        "permit_unconventional_http_version",
        &["false"],
        STRICT_HTTP,
    ),
    refused("casefold_http_method", &["false"], STRICT_HTTP),
    refused(
        "forwarder_headers",
        &["\"SCRIPT_NAME,PATH_INFO\""],
        STRICT_HTTP,
    ),
    refused("header_map", &["\"drop\""], STRICT_HTTP),
    warned("asgi_loop", &["\"auto\""], NO_ASGI),
    warned("asgi_lifespan", &["\"auto\""], NO_ASGI),
    warned("asgi_disconnect_grace_period", &[], NO_ASGI),
    warned(
        "http_parser",
        &["\"auto\""],
        "ferrocorn has one HTTP parser",
    ),
    refused(
        "root_path",
        &["\"\""],
        "ferrocorn takes SCRIPT_NAME from the trusted proxy header only",
    ),
    refused("dirty_apps", &["[]"], NO_DIRTY),
    refused("dirty_workers", &["0"], NO_DIRTY),
    warned("dirty_timeout", &[], NO_DIRTY),
    warned("dirty_threads", &[], NO_DIRTY),
    warned("dirty_graceful_timeout", &[], NO_DIRTY),
    hook("on_dirty_starting"),
    hook("dirty_post_fork"),
    hook("dirty_worker_init"),
    hook("dirty_worker_exit"),
    warned("control_socket", &[], "ferrocorn has no control socket"),
    warned(
        "control_socket_mode",
        &[],
        "ferrocorn has no control socket",
    ),
    warned(
        "control_socket_disable",
        &["false", "true"],
        "ferrocorn has no control socket",
    ),
    // ferrocorn's own flags, so a config file can set everything the command line can.
    flag("header_timeout", "header-timeout", Scalar),
    flag("limit_request_body", "limit-request-body", Scalar),
];

/// The setting a config file names `name`, if gunicorn (or ferrocorn) has one.
pub fn lookup(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The setting behind the ferrocorn flag `--long`, for naming flags as gunicorn names settings.
pub fn by_flag(long: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .find(|s| matches!(s.status, Status::Flag { long: l, .. } if l == long))
}
