//! gunicorn configuration, end to end: config files (`-c PATH`, `-c python:MODULE`, the default
//! `./gunicorn.conf.py`), `GUNICORN_CMD_ARGS` / `FERROCORN_CMD_ARGS`, their precedence, and
//! `--print-config` / `--check-config`, seen from the real binary: the port it binds, the workers
//! it forks, what it prints and how it exits.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use ferrocorn_testkit::*;

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn write(dir: &TempDir, file: &str, text: &str) {
    std::fs::write(dir.path().join(file), text).unwrap();
}

/// Run `ferrocorn ARGS` in `cwd` until it exits: its status and everything it wrote.
fn run(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    Server::spawn(args, cwd, env).wait_exit_and_output(EXIT_TIMEOUT)
}

/// `--print-config` lines: setting name -> (value, source).
fn printed_settings(output: &str) -> BTreeMap<String, (String, String)> {
    output
        .lines()
        .filter(|line| !line.starts_with('['))
        .filter_map(|line| {
            let (name, rest) = line.split_once(" = ")?;
            let (value, source) = rest.rsplit_once("  (")?;
            let source = source.strip_suffix(')')?;
            Some((
                name.trim().to_string(),
                (value.to_string(), source.to_string()),
            ))
        })
        .collect()
}

fn print_config(
    args: &[&str],
    cwd: &Path,
    env: &[(&str, &str)],
) -> BTreeMap<String, (String, String)> {
    let mut all = vec!["--print-config"];
    all.extend_from_slice(args);
    all.push("hello:app");
    let (status, output) = run(&all, cwd, env);
    assert!(
        status.success(),
        "--print-config failed ({status}):\n{output}"
    );
    let settings = printed_settings(&output);
    assert!(settings.len() > 30, "every setting is printed:\n{output}");
    settings
}

fn value<'a>(settings: &'a BTreeMap<String, (String, String)>, name: &str) -> (&'a str, &'a str) {
    let (value, source) = settings
        .get(name)
        .unwrap_or_else(|| panic!("{name} not printed: {settings:?}"));
    (value.as_str(), source.as_str())
}

fn cpu_count() -> i64 {
    // SAFETY: sysconf only reads a system value. Python's os.cpu_count() asks the same question.
    i64::from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as i32)
}

/// The example from gunicorn's documentation (docs/source/configure.rst and common tutorials).
const DOCS_EXAMPLE: &str = r#"import multiprocessing

bind = "127.0.0.1:8000"
workers = multiprocessing.cpu_count() * 2 + 1
accesslog = "-"
timeout = 120
preload_app = True


def post_fork(server, worker):
    with open("worker.pids", "a") as f:
        f.write(f"{worker.pid}\n")
"#;

#[test]
fn the_docs_example_post_fork_writes_each_worker_pid() {
    let dir = hello_app_dir("config-docs-run");
    write(&dir, "example.conf.py", DOCS_EXAMPLE);
    // The command line overrides the file's bind and worker count (a free port, two workers).
    let args = ["-c", "example.conf.py", "-w", "2", "hello:app"];
    let server = Server::start_in(&args, dir.path(), &[]);
    let mut workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    workers.sort();
    let pids_file = dir.path().join("worker.pids");
    let mut written: Vec<i32> = wait_for("two pids in worker.pids", BOOT_TIMEOUT, || {
        let text = std::fs::read_to_string(&pids_file).unwrap_or_default();
        let pids: Vec<i32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        (pids.len() >= 2).then_some(pids)
    });
    written.sort();
    assert_eq!(written, workers);
}

#[test]
fn docs_example_config_gives_the_values_gunicorn_prints() {
    let dir = hello_app_dir("config-docs");
    write(&dir, "example.conf.py", DOCS_EXAMPLE);
    let settings = print_config(&["-c", "example.conf.py"], dir.path(), &[]);
    let from_file = "config file example.conf.py";
    // What `gunicorn -c example.conf.py --print-config hello:app` (gunicorn 26/27) prints for
    // these settings; the hook is listed as run.
    let workers = (cpu_count() * 2 + 1).to_string();
    assert_eq!(value(&settings, "bind"), ("['127.0.0.1:8000']", from_file));
    assert_eq!(value(&settings, "workers"), (workers.as_str(), from_file));
    assert_eq!(value(&settings, "timeout"), ("120", from_file));
    assert_eq!(value(&settings, "preload_app"), ("True", from_file));
    assert_eq!(value(&settings, "accesslog"), ("-", from_file));
    let (hook, note) = value(&settings, "post_fork");
    assert_eq!(hook, "<post_fork()>");
    assert!(note.contains("run in each worker"), "{note}");
    // Settings the file leaves alone keep gunicorn's defaults.
    assert_eq!(value(&settings, "graceful_timeout"), ("30", "default"));
    assert_eq!(value(&settings, "keepalive"), ("2", "default"));
    assert_eq!(value(&settings, "worker_class"), ("sync", "default"));
}

#[test]
fn default_gunicorn_conf_py_is_read_without_dash_c() {
    let dir = hello_app_dir("config-default-file");
    let port = free_port();
    write(
        &dir,
        "gunicorn.conf.py",
        &format!("bind = '127.0.0.1:{port}'\nworkers = 3\n"),
    );
    let mut server = Server::spawn(&["hello:app"], dir.path(), &[]);
    let addr = server.wait_listening_tcp();
    assert_eq!(addr.port(), port, "{}", server.log_text());
    server.wait_worker_count(3, BOOT_TIMEOUT);
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn precedence_is_defaults_config_gunicorn_cmd_args_ferrocorn_cmd_args_command_line() {
    let dir = hello_app_dir("config-precedence-print");
    write(
        &dir,
        "gunicorn.conf.py",
        "bind = ['127.0.0.1:1001', '127.0.0.1:1002']\nworkers = 4\ntimeout = 40\n\
         graceful_timeout = 41\nmax_requests = 42\nkeepalive = 5\n",
    );
    let env = [
        ("WEB_CONCURRENCY", "7"),
        ("PORT", "1234"),
        (
            "GUNICORN_CMD_ARGS",
            "--bind=127.0.0.1:2001 --timeout=50 --graceful-timeout=51 --max-requests=52",
        ),
        (
            "FERROCORN_CMD_ARGS",
            "--graceful-timeout=61 --max-requests=62",
        ),
    ];
    let settings = print_config(&["--max-requests", "72"], dir.path(), &env);
    let from_file = "config file ./gunicorn.conf.py";
    // The config file beats WEB_CONCURRENCY and PORT, which are only defaults.
    assert_eq!(value(&settings, "workers"), ("4", from_file));
    assert_eq!(value(&settings, "keepalive"), ("5", from_file));
    // A list from a higher source replaces the lower one's, it does not extend it.
    assert_eq!(
        value(&settings, "bind"),
        ("['127.0.0.1:2001']", "GUNICORN_CMD_ARGS")
    );
    assert_eq!(value(&settings, "timeout"), ("50", "GUNICORN_CMD_ARGS"));
    assert_eq!(
        value(&settings, "graceful_timeout"),
        ("61", "FERROCORN_CMD_ARGS")
    );
    assert_eq!(value(&settings, "max_requests"), ("72", "command line"));
    assert_eq!(value(&settings, "backlog"), ("2048", "default"));

    // Without a config file the environment defaults show through.
    let bare = hello_app_dir("config-precedence-env");
    let settings = print_config(
        &[],
        bare.path(),
        &[("WEB_CONCURRENCY", "7"), ("PORT", "1234")],
    );
    assert_eq!(value(&settings, "workers"), ("7", "env WEB_CONCURRENCY"));
    assert_eq!(value(&settings, "bind"), ("['0.0.0.0:1234']", "env PORT"));
}

#[test]
fn the_running_server_follows_the_precedence() {
    let dir = hello_app_dir("config-precedence-serve");
    let (file_port, env_port) = (free_port(), free_port());
    write(
        &dir,
        "gunicorn.conf.py",
        &format!("bind = '127.0.0.1:{file_port}'\nworkers = 4\n"),
    );
    let gunicorn_args = format!("--bind=127.0.0.1:{env_port} --workers=3");
    let env = [
        ("WEB_CONCURRENCY", "5"),
        ("GUNICORN_CMD_ARGS", gunicorn_args.as_str()),
    ];
    let mut server = Server::spawn(&["-w", "2", "hello:app"], dir.path(), &env);
    let addr = server.wait_listening_tcp();
    assert_eq!(addr.port(), env_port, "{}", server.log_text());
    server.wait_worker_count(2, BOOT_TIMEOUT);
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(
        server.count_log("Listening at:"),
        1,
        "the config file's bind is replaced, not added to:\n{}",
        server.log_text()
    );
    // Not a connect to it: on a busy machine another process may have taken that free port.
    assert!(
        !server.log_text().contains(&format!(":{file_port} ")),
        "the config file's port is not bound:\n{}",
        server.log_text()
    );
}

#[test]
fn unknown_and_observe_only_settings_are_warned_about_by_name() {
    let dir = hello_app_dir("config-warnings");
    let port = free_port();
    write(
        &dir,
        "gunicorn.conf.py",
        &format!(
            "bind = '127.0.0.1:{port}'\nwrokers = 3\nsyslog_prefix = '-'\n\
             def ssl_context(config, default_ssl_context_factory):\n    pass\n"
        ),
    );
    let mut server = Server::spawn(&["hello:app"], dir.path(), &[]);
    server.wait_listening_tcp();
    server.wait_worker_count(1, BOOT_TIMEOUT);
    let log = server.log_text();
    assert!(
        log.contains("\"wrokers\" is not a gunicorn setting"),
        "{log}"
    );
    assert!(
        log.contains("syslog_prefix = '-' is not supported"),
        "{log}"
    );
    assert!(
        log.contains("server hooks are not run yet: ssl_context"),
        "{log}"
    );
}

#[test]
fn settings_whose_absence_matters_are_refused_by_name() {
    let dir = hello_app_dir("config-refused");
    for (setting, text) in [
        ("certfile", "certfile = '/etc/ssl/cert.pem'\n"),
        ("proxy_protocol", "proxy_protocol = True\n"),
        ("paste", "paste = 'development.ini'\n"),
    ] {
        write(&dir, "gunicorn.conf.py", text);
        let (status, output) = run(&["-b", "127.0.0.1:0", "hello:app"], dir.path(), &[]);
        assert!(!status.success(), "{setting}: {output}");
        assert!(
            output.contains(&format!("{setting} = ")) && output.contains("is not supported"),
            "{setting}: {output}"
        );
        assert!(!output.contains("Listening at"), "{setting}: {output}");
    }
}

#[test]
fn secure_scheme_headers_must_be_a_dict_of_strings() {
    let dir = hello_app_dir("config-secure-scheme");
    for text in [
        "secure_scheme_headers = ['X-FORWARDED-PROTO']\n",
        "secure_scheme_headers = {'X-FORWARDED-PROTO': 1}\n",
        "secure_scheme_headers = 'X-FORWARDED-PROTO'\n",
        "secure_scheme_headers = {'X-FORWARDED-PROTO': 'https,http'}\n",
    ] {
        write(&dir, "gunicorn.conf.py", text);
        let (status, output) = run(&["-b", "127.0.0.1:0", "hello:app"], dir.path(), &[]);
        assert!(!status.success(), "{text}: {output}");
        assert!(
            output.contains("invalid value for secure_scheme_headers"),
            "{text}: {output}"
        );
        assert!(!output.contains("Listening at"), "{text}: {output}");
    }
    // A name that cannot be a header field's is refused by the flag it becomes.
    write(
        &dir,
        "gunicorn.conf.py",
        "secure_scheme_headers = {'X PROTO': 'https'}\n",
    );
    let (status, output) = run(&["-b", "127.0.0.1:0", "hello:app"], dir.path(), &[]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("secure-scheme-headers"), "{output}");
}

#[test]
fn print_config_shows_the_secure_scheme_headers_in_force() {
    let dir = hello_app_dir("config-secure-scheme-print");
    let settings = print_config(&[], dir.path(), &[]);
    assert_eq!(
        value(&settings, "secure_scheme_headers"),
        (
            "{'X-FORWARDED-PROTOCOL': 'ssl', 'X-FORWARDED-PROTO': 'https', 'X-FORWARDED-SSL': 'on'}",
            "default"
        )
    );
    write(
        &dir,
        "gunicorn.conf.py",
        "secure_scheme_headers = {'X-FORWARDED-PROTO': 'https'}\n",
    );
    let settings = print_config(&[], dir.path(), &[]);
    let (shown, source) = value(&settings, "secure_scheme_headers");
    assert_eq!(shown, "{'X-FORWARDED-PROTO': 'https'}");
    assert!(source.contains("gunicorn.conf.py"), "{source}");
    write(&dir, "gunicorn.conf.py", "secure_scheme_headers = {}\n");
    let settings = print_config(&[], dir.path(), &[]);
    assert_eq!(value(&settings, "secure_scheme_headers").0, "{}");
}

#[test]
fn unsupported_worker_classes_keep_their_errors() {
    let dir = hello_app_dir("config-worker-class");
    write(&dir, "gunicorn.conf.py", "worker_class = 'gevent'\n");
    let (status, output) = run(&["-b", "127.0.0.1:0", "hello:app"], dir.path(), &[]);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("worker class \"gevent\" is not supported"),
        "{output}"
    );
    assert!(
        output.contains("--threads") && output.contains("--workers"),
        "{output}"
    );
    assert!(!output.contains("Listening at"), "{output}");
    write(&dir, "gunicorn.conf.py", "threads = 0\n");
    let (status, output) = run(&["-b", "127.0.0.1:0", "hello:app"], dir.path(), &[]);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("--threads") && output.contains("at least 1"),
        "{output}"
    );
}

#[test]
fn gthread_threads_and_worker_connections_come_from_the_config_file() {
    let dir = hello_app_dir("config-gthread");
    write(
        &dir,
        "gunicorn.conf.py",
        "worker_class = 'gthread'\nthreads = 4\nworker_connections = 50\n",
    );
    let settings = print_config(&[], dir.path(), &[]);
    let from_file = "config file ./gunicorn.conf.py";
    assert_eq!(value(&settings, "worker_class"), ("gthread", from_file));
    assert_eq!(value(&settings, "threads"), ("4", from_file));
    assert_eq!(value(&settings, "worker_connections"), ("50", from_file));
    let (status, output) = run(&["--check-config", "hello:app"], dir.path(), &[]);
    assert!(status.success(), "{output}");
    // The command line wins over the file, as in gunicorn.
    let settings = print_config(&["--threads", "2", "-k", "sync"], dir.path(), &[]);
    assert_eq!(value(&settings, "threads"), ("2", "command line"));
    assert_eq!(value(&settings, "worker_class"), ("sync", "command line"));
    assert_eq!(value(&settings, "worker_connections"), ("50", from_file));
}

#[test]
fn a_raising_config_file_exits_non_zero_with_its_traceback() {
    let dir = hello_app_dir("config-raises");
    write(
        &dir,
        "broken.py",
        "workers = 2\nraise ValueError('no such setting source')\n",
    );
    let (status, output) = run(&["-c", "broken.py", "hello:app"], dir.path(), &[]);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("failed to read config file broken.py"),
        "{output}"
    );
    assert!(output.contains("Traceback"), "{output}");
    assert!(
        output.contains("ValueError: no such setting source"),
        "{output}"
    );
    let (status, output) = run(&["-c", "missing.py", "hello:app"], dir.path(), &[]);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("config file missing.py does not exist"),
        "{output}"
    );
}

#[test]
fn python_module_configs_and_dash_c_in_gunicorn_cmd_args() {
    let dir = hello_app_dir("config-module");
    write(&dir, "myconf.py", "workers = 6\nwsgi_app = 'hello:app'\n");
    write(&dir, "other.conf.py", "workers = 8\n");
    let settings = print_config(&["-c", "python:myconf"], dir.path(), &[]);
    assert_eq!(
        value(&settings, "workers"),
        ("6", "config file python:myconf")
    );
    let env = [("GUNICORN_CMD_ARGS", "-c other.conf.py")];
    let settings = print_config(&[], dir.path(), &env);
    assert_eq!(
        value(&settings, "workers"),
        ("8", "config file other.conf.py")
    );
    // `wsgi_app` from the file names the app when the command line does not.
    let (status, output) = run(&["-c", "python:myconf", "--check-config"], dir.path(), &[]);
    assert!(status.success(), "{output}");
}

#[test]
fn check_config_loads_the_config_and_the_app() {
    let dir = hello_app_dir("config-check");
    write(&dir, "gunicorn.conf.py", "workers = 2\n");
    write(
        &dir,
        "broken_app.py",
        "raise ImportError('missing dependency xyz')\n",
    );
    let (status, output) = run(&["--check-config", "hello:app"], dir.path(), &[]);
    assert!(status.success(), "{output}");
    assert!(!output.contains("Listening at"), "{output}");
    let (status, output) = run(&["--check-config", "broken_app:app"], dir.path(), &[]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("missing dependency xyz"), "{output}");
    assert!(
        output.contains("Error while loading the application"),
        "{output}"
    );
}

#[test]
fn bad_flags_in_gunicorn_cmd_args_are_errors_naming_the_variable() {
    let dir = hello_app_dir("config-bad-env");
    let env = [("GUNICORN_CMD_ARGS", "--workers=zero")];
    let (status, output) = run(&["hello:app"], dir.path(), &env);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(
        output.contains("GUNICORN_CMD_ARGS") && output.contains("zero"),
        "{output}"
    );
    let env = [("GUNICORN_CMD_ARGS", "--bind '127.0.0.1:1")];
    let (status, output) = run(&["hello:app"], dir.path(), &env);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("unbalanced quotes"), "{output}");
}

#[test]
fn gunicorn_flags_for_missing_settings_are_warned_about_or_refused_by_name() {
    let dir = hello_app_dir("config-gunicorn-flags");
    let env = [("GUNICORN_CMD_ARGS", "--log-syslog-to=udp://localhost:514")];
    let args = ["--log-syslog-prefix", "-", "hello:app"];
    let mut server = Server::start_in(&args, dir.path(), &env);
    assert_eq!(get(server.addr(), "/").status, 200);
    let log = server.log_text();
    assert!(
        log.contains("command line: syslog_prefix = '-' is not supported"),
        "{log}"
    );
    assert!(
        log.contains("GUNICORN_CMD_ARGS: syslog_addr = 'udp://localhost:514' is not supported"),
        "{log}"
    );
    server.signal(libc::SIGTERM);
    server.wait_exit(EXIT_TIMEOUT);

    let env = [(
        "GUNICORN_CMD_ARGS",
        "--certfile=/etc/ssl/cert.pem --keyfile=/etc/ssl/key.pem",
    )];
    let (status, output) = run(&["-b", "127.0.0.1:0", "hello:app"], dir.path(), &env);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(
        output.contains("GUNICORN_CMD_ARGS: certfile = '/etc/ssl/cert.pem' is not supported"),
        "{output}"
    );
    assert!(!output.contains("Listening at"), "{output}");
}
