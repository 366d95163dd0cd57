//! `--reload` (inotify on the app's files), reloads that keep the old workers while the new code
//! does not load, `--daemon`, and the virtualenv a `VENV/bin/ferrocorn` is installed in.

use std::path::Path;

use ferrocorn_testkit::*;

/// A WSGI app whose body is `body` (or `code` put before it, e.g. a raise at import).
fn write_app(dir: &Path, prelude: &str, body: &str) {
    let source = format!(
        "{prelude}\n\
         def app(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [b'{body}']\n"
    );
    // Written aside then renamed, as editors do, so a worker never imports half a file.
    let partial = dir.join(".app.py.partial");
    std::fs::write(&partial, source).unwrap();
    std::fs::rename(&partial, dir.join("app.py")).unwrap();
}

/// Poll GET / until its body is `body` (within the harness's boot patience).
fn wait_for_body(server: &Server, body: &str) {
    let addr = server.addr();
    wait_until(&format!("GET / returns {body:?}"), || {
        let resp = get(addr, "/");
        resp.status == 200 && resp.text() == body
    });
}

fn assert_body(server: &Server, body: &str) {
    let resp = get(server.addr(), "/");
    assert_eq!(resp.status, 200, "{resp:?}\n{}", server.log_text());
    assert_eq!(resp.text(), body, "{}", server.log_text());
}

/// Wait until the reloader says it watches at least `n` files.
fn wait_watching(server: &Server, n: usize) {
    wait_until(&format!("the reloader watches {n}+ files"), || {
        server.log.lock().unwrap().iter().any(|l| {
            l.split("Reloader: watching ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|count| count.parse::<usize>().ok())
                .is_some_and(|count| count >= n)
        })
    });
}

/// The environment of these tests: no `.pyc` (an edit within the same second and of the same
/// size would otherwise be read back from a stale cache).
const NO_PYC: (&str, &str) = ("PYTHONDONTWRITEBYTECODE", "1");

#[test]
fn reload_serves_the_edited_app_and_keeps_the_old_one_through_a_syntax_error() {
    let dir = TempDir::new("reload-edit");
    write_app(dir.path(), "", "v1");
    let mut server = Server::start_in(
        &[
            "--reload",
            "--log-level",
            "debug",
            "--chdir",
            dir.str(),
            "app:app",
        ],
        &repo_root(),
        &[NO_PYC],
    );
    assert_body(&server, "v1");
    // The worker's list of imported files has reached the reloader (app.py among them).
    wait_watching(&server, 2);

    write_app(dir.path(), "", "v2");
    let line = server.wait_for_log("Worker reloading: ", BOOT_TIMEOUT);
    assert!(line.contains("app.py modified"), "{line}");
    wait_for_body(&server, "v2");

    write_app(dir.path(), "def broken(:", "v3");
    let line = server.wait_for_log("Worker reloading: ", BOOT_TIMEOUT);
    assert!(line.contains("app.py modified"), "{line}");
    server.wait_for_log("SyntaxError", BOOT_TIMEOUT);
    server.wait_for_log("keep serving", BOOT_TIMEOUT);
    for _ in 0..5 {
        assert_body(&server, "v2");
    }
    assert!(pid_alive(server.pid()), "the master keeps running");

    // Fixed: the next reload serves it.
    write_app(dir.path(), "", "v4");
    wait_for_body(&server, "v4");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
}

#[test]
fn reload_extra_file_changes_reload_the_workers() {
    let dir = TempDir::new("reload-extra");
    write_app(dir.path(), "", "v1");
    let extra = dir.path().join("settings.toml");
    std::fs::write(&extra, "a = 1\n").unwrap();
    let mut server = Server::start_in(
        &[
            "--reload",
            "--reload-extra-file",
            extra.to_str().unwrap(),
            "--log-level",
            "debug",
            "--chdir",
            dir.str(),
            "app:app",
        ],
        &repo_root(),
        &[NO_PYC],
    );
    wait_until("the worker serves", || {
        get(server.addr(), "/").status == 200
    });
    wait_watching(&server, 1);
    let reloader = reloader_pid(&server);
    let first: Vec<i32> = server
        .worker_pids()
        .into_iter()
        .filter(|&p| p != reloader)
        .collect();
    assert_eq!(first.len(), 1, "{}", server.log_text());
    std::fs::write(&extra, "a = 2\n").unwrap();
    let line = server.wait_for_log("Worker reloading: ", BOOT_TIMEOUT);
    assert!(line.contains("settings.toml modified"), "{line}");
    // A new worker replaces the old one.
    server.wait_for_log("Booting worker with pid: ", BOOT_TIMEOUT);
    wait_until_retired(&server, &first);
    assert_body(&server, "v1");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    assert!(
        !std::env::temp_dir()
            .join(format!("ferrocorn-reload-{}", server.pid()))
            .exists(),
        "the master removes its file lists"
    );
}

/// The reloader's pid, from the master's log line announcing it.
fn reloader_pid(server: &Server) -> i32 {
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Reloader watching for changes (pid: "))
        .unwrap_or_else(|| panic!("no reloader announced:\n{log}"));
    let pid = line.rsplit("(pid: ").next().unwrap().trim_end_matches(')');
    pid.parse().unwrap()
}

/// Wait until none of `old` is among the master's children any more.
fn wait_until_retired(server: &Server, old: &[i32]) {
    wait_until(&format!("workers {old:?} retired"), || {
        server.worker_pids().iter().all(|p| !old.contains(p))
    });
}

/// Marks each process that imported the app with a file `loaded-PID` in `dir`.
fn mark_loaded(dir: &Path) -> String {
    format!(
        "import os\nopen(os.path.join({:?}, 'loaded-%d' % os.getpid()), 'w').close()",
        dir.to_str().unwrap()
    )
}

fn count_loaded(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loaded-"))
        .count()
}

#[test]
fn hup_whose_new_workers_cannot_load_the_app_keeps_the_old_workers_serving() {
    let dir = TempDir::new("hup-broken");
    write_app(dir.path(), &mark_loaded(dir.path()), "v1");
    let mut server = Server::start_in(
        &["-w", "2", "--chdir", dir.str(), "app:app"],
        &repo_root(),
        &[NO_PYC],
    );
    let old = server.wait_for_workers(2);
    // Both have imported v1 before it is broken.
    wait_until("both workers loaded the app", || {
        count_loaded(dir.path()) == 2
    });
    assert_body(&server, "v1");

    write_app(dir.path(), "raise RuntimeError('broken deploy')", "v2");
    server.signal(libc::SIGHUP);
    server.wait_for_log("broken deploy", BOOT_TIMEOUT);
    server.wait_for_log("keep serving", BOOT_TIMEOUT);
    for _ in 0..10 {
        assert_body(&server, "v1");
    }
    let mut still: Vec<i32> = server.worker_pids();
    still.retain(|p| old.contains(p));
    assert_eq!(still.len(), 2, "both old workers serve on");
    assert!(pid_alive(server.pid()), "the master keeps running");

    // The fix deployed, the next HUP replaces the old workers.
    write_app(dir.path(), "", "v2");
    server.signal(libc::SIGHUP);
    wait_for_body(&server, "v2");
    wait_until_retired(&server, &old);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
}

#[test]
fn an_app_that_cannot_load_at_first_start_still_exits_4() {
    let dir = TempDir::new("first-start-broken");
    write_app(dir.path(), "raise RuntimeError('broken at start')", "v1");
    let mut server = Server::spawn(
        &[
            "-b",
            "127.0.0.1:0",
            "--reload",
            "--chdir",
            dir.str(),
            "app:app",
        ],
        &repo_root(),
        &[NO_PYC],
    );
    let (status, log) = server.wait_exit_and_output(BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(4), "{log}");
    assert!(log.contains("broken at start"), "{log}");
}

/// The pid in a pid file, once it holds one.
fn read_pidfile(path: &Path) -> i32 {
    let mut pid = 0;
    wait_until("the daemon writes its pid file", || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    pid
}

fn listening_addr(log: &Path) -> std::net::SocketAddr {
    let line = wait_for_file_line(log, "Listening at: http://", BOOT_TIMEOUT);
    let rest = line.split("Listening at: http://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_daemon_from_the_config_file_serves_writes_its_pid_file_and_stops_on_term() {
    let dir = TempDir::new("daemon");
    write_app(dir.path(), "", "daemon");
    let pidfile = dir.path().join("ferrocorn.pid");
    let log = dir.path().join("error.log");
    // gunicorn's spelling in a config file.
    std::fs::write(
        dir.path().join("gunicorn.conf.py"),
        format!("daemon = True\npidfile = {pidfile:?}\nerrorlog = {log:?}\n"),
    )
    .unwrap();
    let mut launcher = Server::spawn(
        &["-b", "127.0.0.1:0", "--chdir", dir.str(), "app:app"],
        dir.path(),
        &[NO_PYC],
    );
    // The process started returns at once; the daemon lives on.
    let (status, output) = launcher.wait_exit_and_output(BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{output}");
    let pid = read_pidfile(&pidfile);
    let _cleanup = KillOnDrop(pid);
    assert_ne!(pid, launcher.pid(), "the pid file holds the daemon's pid");
    let addr = listening_addr(&log);
    let resp = get(addr, "/");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "daemon");
    // Detached: its own session (not the leader), std input from /dev/null.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let sid: i32 = fields[3].parse().unwrap();
    // SAFETY: getsid(0) only reads this process's session id.
    let our_sid = unsafe { libc::getsid(0) };
    assert_ne!(sid, our_sid, "a new session");
    assert_ne!(sid, pid, "not a session leader (forked twice)");
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(stdin, Path::new("/dev/null"));

    signal(pid, libc::SIGTERM);
    wait_until("the daemon exits on TERM", || !pid_alive(pid));
    assert!(!pidfile.exists(), "the pid file is removed");
    wait_for_file_line(&log, "Shutting down: Master", BOOT_TIMEOUT);
}

#[test]
fn winch_stops_a_daemons_workers_and_ttin_starts_one_again() {
    let dir = TempDir::new("daemon-winch");
    write_app(dir.path(), "", "winch");
    let pidfile = dir.path().join("ferrocorn.pid");
    let log = dir.path().join("error.log");
    let mut launcher = Server::spawn(
        &[
            "-D",
            "-w",
            "2",
            "-b",
            "127.0.0.1:0",
            "--pid",
            pidfile.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
            "--chdir",
            dir.str(),
            "app:app",
        ],
        &repo_root(),
        &[NO_PYC],
    );
    assert_eq!(launcher.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    let pid = read_pidfile(&pidfile);
    let _cleanup = KillOnDrop(pid);
    let addr = listening_addr(&log);
    assert_eq!(get(addr, "/").status, 200);
    wait_until("two workers", || children_of(pid).len() == 2);

    signal(pid, libc::SIGWINCH);
    wait_for_file_line(&log, "graceful stop of workers", BOOT_TIMEOUT);
    wait_until("every worker stops", || children_of(pid).is_empty());
    assert!(pid_alive(pid), "the master stays");

    signal(pid, libc::SIGTTIN);
    wait_until("one worker again", || children_of(pid).len() == 1);
    wait_until("it serves", || get(addr, "/").status == 200);
    signal(pid, libc::SIGTERM);
    wait_until("the daemon exits on TERM", || !pid_alive(pid));
}

/// A virtualenv at `dir` made from the test one: its pyvenv.cfg, its packages (`with_packages`,
/// linked in) or none, and `bin/ferrocorn` a symlink to the binary under test.
fn make_venv(dir: &Path, with_packages: bool) {
    let test_venv = test_venv();
    let site = Path::new("lib/python3.11/site-packages");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join(site).parent().unwrap()).unwrap();
    std::fs::copy(test_venv.join("pyvenv.cfg"), dir.join("pyvenv.cfg")).unwrap();
    let python = std::fs::canonicalize(test_venv.join("bin/python")).unwrap();
    std::os::unix::fs::symlink(python, dir.join("bin/python")).unwrap();
    if with_packages {
        std::os::unix::fs::symlink(test_venv.join(site), dir.join(site)).unwrap();
    } else {
        std::fs::create_dir_all(dir.join(site)).unwrap();
    }
    std::os::unix::fs::symlink(ferrocorn_bin(), dir.join("bin/ferrocorn")).unwrap();
}

/// In `dir`: `venv` with the test packages, and `other`, without Django (the one activated).
fn two_venvs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let venv = dir.join("venv");
    make_venv(&venv, true);
    let other = dir.join("other");
    make_venv(&other, false);
    (venv, other)
}

fn serve_django_from(bin: &Path, env: &[(&str, &str)], db_dir: &Path) {
    let db = db_dir.join("django.sqlite3");
    let db_env = ("DJANGO_DEMO_DB", db.to_str().unwrap());
    let env: Vec<(&str, &str)> = env.iter().copied().chain([db_env]).collect();
    let mut server = Server::start_bin(
        bin,
        &["--chdir", "tests/apps/django_demo", "mysite.wsgi"],
        &repo_root(),
        &env,
    );
    server.wait_for_workers(1);
    let resp = get(server.addr(), "/");
    assert_eq!(resp.status, 200, "{resp:?}\n{}", server.log_text());
    assert!(resp.text().contains("notes in sqlite"), "{}", resp.text());
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
}

#[test]
fn a_venvs_bin_ferrocorn_serves_django_from_that_venv_without_activation() {
    let dir = TempDir::new("venv-installed");
    let (venv, other) = two_venvs(dir.path());
    let bin = venv.join("bin/ferrocorn");
    serve_django_from(&bin, &[], dir.path());
    serve_django_from(
        &bin,
        &[("VIRTUAL_ENV", other.to_str().unwrap())],
        dir.path(),
    );
}

/// `--print-config`'s `virtualenv` line, spaces squeezed.
fn printed_virtualenv(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--print-config", "--chdir", "tests/apps/django_demo"])
        .args(args)
        .arg("mysite.wsgi")
        .current_dir(repo_root())
        .env_remove("VIRTUAL_ENV")
        .env_remove("GUNICORN_CMD_ARGS")
        .env_remove("FERROCORN_CMD_ARGS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("virtualenv"))
        .unwrap_or_else(|| panic!("no virtualenv line:\n{text}"));
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn print_config_names_the_virtualenv_used_and_why() {
    let dir = TempDir::new("venv-print");
    let (venv, other) = two_venvs(dir.path());
    let bin = venv.join("bin/ferrocorn");
    let activated = [("VIRTUAL_ENV", other.to_str().unwrap())];
    let line = printed_virtualenv(&bin, &[], &activated);
    assert_eq!(
        line,
        format!(
            "virtualenv = {} (ferrocorn is installed in it (its bin/ferrocorn was run))",
            venv.display()
        )
    );
    let flag = test_venv();
    let line = printed_virtualenv(&bin, &["--virtualenv", flag.to_str().unwrap()], &activated);
    assert_eq!(
        line,
        format!("virtualenv = {} (command line)", flag.display())
    );
    // The binary outside any venv: the activated one.
    let line = printed_virtualenv(&ferrocorn_bin(), &[], &activated);
    assert_eq!(
        line,
        format!(
            "virtualenv = {} (env VIRTUAL_ENV, the activated virtualenv)",
            other.display()
        )
    );
}
