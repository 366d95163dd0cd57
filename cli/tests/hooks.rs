//! gunicorn's worker-side server hooks from a config file, end to end: each hook writes a line
//! `NAME PID ...` to a file, and the test checks that it ran, in which process, with which
//! arguments; hooks that raise are logged with their traceback, and the server goes on as
//! gunicorn's does (a 500 for `pre_request`, a failed boot for `post_fork`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrocorn_testkit::*;

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Every worker-side hook, each appending `NAME PID DETAILS` to `$HOOKS_OUT`.
const RECORDING_HOOKS: &str = r#"import os

def _record(*words):
    with open(os.environ["HOOKS_OUT"], "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")

def post_fork(server, worker):
    _record("post_fork", worker.pid, os.getpid(), worker.ppid, server.pid, worker.age)
    worker.log.info("post_fork hook ran in %s", worker.pid)

def post_worker_init(worker):
    _record("post_worker_init", worker.pid, os.getpid())

def pre_request(worker, req):
    headers = dict(req.headers)
    _record("pre_request", worker.pid, req.method, req.path, req.query, headers.get("X-TAG"))

def post_request(worker, req, environ, resp):
    _record("post_request", worker.pid, req.method, environ["PATH_INFO"], resp.status_code)

def worker_int(worker):
    _record("worker_int", worker.pid)

def worker_abort(worker):
    _record("worker_abort", worker.pid)

def worker_exit(server, worker):
    _record("worker_exit", worker.pid, os.getpid())
"#;

/// A directory with the example app as `hello.py` and `conf` as `hooks.conf.py`.
fn setup(name: &str, conf: &str) -> (TempDir, PathBuf) {
    let dir = hello_app_dir(name);
    std::fs::write(dir.path().join("hooks.conf.py"), conf).unwrap();
    let out = dir.path().join("hooks.out");
    (dir, out)
}

fn start(dir: &TempDir, out: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["-c", "hooks.conf.py"];
    args.extend_from_slice(extra);
    args.push("hello:app");
    Server::start_in(&args, dir.path(), &[("HOOKS_OUT", out.to_str().unwrap())])
}

/// The recorded lines of hook `name`, split into words after the name.
fn records(out: &Path, name: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|rest| rest.split(' ').map(str::to_string).collect())
        .collect()
}

/// Wait until hook `name` recorded `n` lines; returns them.
fn wait_records(out: &Path, name: &str, n: usize) -> Vec<Vec<String>> {
    wait_for(&format!("{n} {name} lines"), BOOT_TIMEOUT, || {
        Some(records(out, name)).filter(|r| r.len() >= n)
    })
}

/// The pids of the first `n` lines hook `name` recorded (waited for), sorted.
fn sorted_pids(out: &Path, name: &str, n: usize) -> Vec<i32> {
    let mut pids: Vec<i32> = wait_records(out, name, n)
        .iter()
        .map(|w| pid_of(w))
        .collect();
    pids.sort();
    pids
}

fn pid_of(words: &[String]) -> i32 {
    words[0].parse().unwrap()
}

#[test]
fn worker_hooks_run_in_each_worker_with_its_pid_and_see_the_request() {
    let (dir, out) = setup("hooks-worker", RECORDING_HOOKS);
    let mut server = start(&dir, &out, &["-w", "2"]);
    let booted = server.wait_for_workers(2);
    let mut workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    workers.sort();
    let mut forked: Vec<i32> = wait_records(&out, "post_fork", 2)
        .iter()
        .map(|words| {
            // worker.pid is the process's own pid; ppid and server.pid the master's.
            assert_eq!(words[0], words[1], "{words:?}");
            assert_eq!(words[2], server.pid().to_string(), "{words:?}");
            assert_eq!(words[3], server.pid().to_string(), "{words:?}");
            assert!(words[4].parse::<u64>().unwrap() >= 1, "{words:?}");
            pid_of(words)
        })
        .collect();
    forked.sort();
    assert_eq!(forked, workers, "booted {booted:?}");
    assert_eq!(sorted_pids(&out, "post_worker_init", 2), workers);
    server.wait_for_log("post_fork hook ran in", BOOT_TIMEOUT);

    let resp = request(
        server.addr(),
        b"GET /?a=1 HTTP/1.1\r\nHost: t\r\nX-Tag: seen\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let pre = &wait_records(&out, "pre_request", 1)[0];
    assert!(workers.contains(&pid_of(pre)), "{pre:?} {workers:?}");
    assert_eq!(pre[1..], ["GET", "/", "a=1", "seen"]);
    let post = &wait_records(&out, "post_request", 1)[0];
    assert_eq!(post[..], [pre[0].as_str(), "GET", "/", "200"]);

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(EXIT_TIMEOUT).success());
    let mut exited: Vec<i32> = records(&out, "worker_exit")
        .iter()
        .map(|words| {
            assert_eq!(words[0], words[1]);
            pid_of(words)
        })
        .collect();
    exited.sort();
    assert_eq!(exited, workers, "{}", server.log_text());
    assert!(
        records(&out, "worker_int").is_empty(),
        "TERM is no interrupt"
    );
}

#[test]
fn with_preload_the_master_runs_the_file_once_and_quick_stops_call_worker_int() {
    let conf = format!("{RECORDING_HOOKS}\n_record(\"executed\", os.getpid())\n");
    let (dir, out) = setup("hooks-preload", &conf);
    let mut server = start(&dir, &out, &["-w", "2", "--preload"]);
    let mut workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    workers.sort();
    assert_eq!(sorted_pids(&out, "post_fork", 2), workers);
    // The evaluator child read the settings; the master executed it for the hooks; no worker did.
    let executed: Vec<i32> = records(&out, "executed")
        .iter()
        .map(|w| pid_of(w))
        .collect();
    assert!(executed.contains(&server.pid()), "{executed:?}");
    assert!(
        !executed.iter().any(|p| workers.contains(p)),
        "{executed:?}"
    );

    server.signal(libc::SIGQUIT);
    assert!(server.wait_exit(EXIT_TIMEOUT).success());
    assert_eq!(
        sorted_pids(&out, "worker_int", 2),
        workers,
        "{}",
        server.log_text()
    );
    assert_eq!(records(&out, "worker_exit").len(), 2);
}

#[test]
fn without_preload_each_worker_executes_the_file() {
    let conf = format!("{RECORDING_HOOKS}\n_record(\"executed\", os.getpid())\n");
    let (dir, out) = setup("hooks-per-worker", &conf);
    let server = start(&dir, &out, &["-w", "2"]);
    let workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    wait_records(&out, "post_worker_init", 2);
    let executed: Vec<i32> = records(&out, "executed")
        .iter()
        .map(|w| pid_of(w))
        .collect();
    for pid in &workers {
        assert!(executed.contains(pid), "{pid} in {executed:?}");
    }
    assert!(!executed.contains(&server.pid()), "{executed:?}");
}

#[test]
fn worker_abort_runs_when_a_request_times_out() {
    let (dir, out) = setup("hooks-abort", RECORDING_HOOKS);
    let mut server = start(&dir, &out, &["-w", "1", "--timeout", "2"]);
    let first = server.wait_for_workers(1)[0];
    let mut conn = connect(server.addr());
    std::io::Write::write_all(&mut conn, b"GET /sleep?s=60 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    server.wait_for_log("sleeping 60.0s", BOOT_TIMEOUT);
    let aborted = &wait_records(&out, "worker_abort", 1)[0];
    assert_eq!(pid_of(aborted), first);
    let bytes = read_until_closed(&mut conn);
    let (resp, _) = parse_response(&bytes, false).expect("a response");
    assert_eq!(resp.status, 500);
}

const RAISING_REQUEST_HOOKS: &str = r#"
def pre_request(worker, req):
    if req.path == "/refused":
        raise ValueError("pre_request refuses " + req.path)

def post_request(worker, req, environ, resp):
    raise KeyError("post_request always raises")
"#;

#[test]
fn a_raising_pre_request_is_a_500_and_a_raising_post_request_is_only_logged() {
    let (dir, out) = setup("hooks-raise", RAISING_REQUEST_HOOKS);
    let mut server = start(&dir, &out, &["-w", "1"]);
    assert_eq!(get(server.addr(), "/refused").status, 500);
    server.wait_for_log("Error handling request /refused", BOOT_TIMEOUT);
    server.wait_for_log("ValueError: pre_request refuses /refused", BOOT_TIMEOUT);
    let ok = get(server.addr(), "/");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "Hello, World!\n");
    server.wait_for_log("KeyError: 'post_request always raises'", BOOT_TIMEOUT);
    let log = server.log_text();
    assert!(log.contains("Exception in post_request hook"), "{log}");
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(
        log.contains("hooks.conf.py"),
        "the traceback names the file: {log}"
    );
}

#[test]
fn a_raising_post_fork_fails_the_boot_as_in_gunicorn() {
    let conf = "def post_fork(server, worker):\n    raise RuntimeError('no boot for ' + str(worker.pid))\n";
    let (dir, out) = setup("hooks-post-fork", conf);
    let mut server = Server::spawn(
        &["-b", "127.0.0.1:0", "-c", "hooks.conf.py", "hello:app"],
        dir.path(),
        &[("HOOKS_OUT", out.to_str().unwrap())],
    );
    let (status, log) = server.wait_exit_and_output(EXIT_TIMEOUT);
    // gunicorn: "Exception in worker process", the worker exits 3, "Worker failed to boot."
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(
        log.contains("Exception in worker process (post_fork hook)"),
        "{log}"
    );
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(log.contains("RuntimeError: no boot for "), "{log}");
}

/// Every master-side hook, each appending `NAME ...` to `$HOOKS_OUT`.
const MASTER_HOOKS: &str = r#"import os

def _record(*words):
    with open(os.environ["HOOKS_OUT"], "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")

def on_starting(server):
    bound = os.path.exists(os.environ["HOOKS_SOCKET"])
    _record("on_starting", server.pid, os.getpid(), "bound" if bound else "unbound")

def when_ready(server):
    _record("when_ready", server.pid, server.num_workers)

def pre_fork(server, worker):
    _record("pre_fork", server.pid, worker.age)

def child_exit(server, worker):
    _record("child_exit", worker.pid, worker.age)

def nworkers_changed(server, new_value, old_value):
    _record("nworkers_changed", new_value, old_value, server.num_workers)

def on_reload(server):
    _record("on_reload", server.pid)

def on_exit(server):
    _record("on_exit", server.pid)
"#;

#[test]
fn master_hooks_run_in_the_hook_runner_for_each_master_event() {
    let (dir, out) = setup("hooks-master", MASTER_HOOKS);
    let socket = dir.path().join("s.sock");
    let bind = format!("unix:{}", socket.display());
    let args = ["-c", "hooks.conf.py", "-w", "1", "-b", &bind, "hello:app"];
    let env = [
        ("HOOKS_OUT", out.to_str().unwrap()),
        ("HOOKS_SOCKET", socket.to_str().unwrap()),
    ];
    let mut server = Server::start_in(&args, dir.path(), &env);
    let master = server.pid().to_string();
    let starting = &wait_records(&out, "on_starting", 1)[0];
    // server.pid is the master's; the hook runs in another process (the runner), and it was
    // done before the master bound its sockets.
    assert_eq!(starting[0], master);
    assert_ne!(starting[1], master);
    assert_eq!(starting[2], "unbound");
    assert!(socket.exists());
    assert_eq!(
        wait_records(&out, "when_ready", 1)[0],
        [master.as_str(), "1"]
    );
    assert_eq!(wait_records(&out, "pre_fork", 1)[0], [master.as_str(), "1"]);

    let first = server.wait_for_workers(1)[0];
    signal(first, libc::SIGKILL);
    let exited = &wait_records(&out, "child_exit", 1)[0];
    assert_eq!(exited[..], [first.to_string().as_str(), "1"]);
    wait_records(&out, "pre_fork", 2);

    server.signal(libc::SIGTTIN);
    assert_eq!(
        wait_records(&out, "nworkers_changed", 1)[0],
        ["2", "1", "2"]
    );
    server.signal(libc::SIGHUP);
    assert_eq!(wait_records(&out, "on_reload", 1)[0], [master.as_str()]);

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(EXIT_TIMEOUT).success());
    // The master waited for the runner to finish on_exit.
    assert_eq!(records(&out, "on_exit"), [[master.clone()]]);
}

#[test]
fn a_raising_master_hook_is_logged_and_the_server_serves() {
    let conf = "def when_ready(server):\n    raise OSError('not ready for ' + str(server.pid))\n";
    let (dir, out) = setup("hooks-master-raise", conf);
    let mut server = start(&dir, &out, &["-w", "1"]);
    server.wait_for_log("Exception in when_ready hook", BOOT_TIMEOUT);
    server.wait_for_log(
        &format!("OSError: not ready for {}", server.pid()),
        BOOT_TIMEOUT,
    );
    assert_eq!(get(server.addr(), "/").status, 200);
}

#[test]
fn pre_exec_runs_on_usr2_and_the_new_master_runs_its_own_hooks() {
    let conf = "import os\n\ndef _record(*words):\n    with open(os.environ['HOOKS_OUT'], 'a') as f:\n        \
                f.write(' '.join(str(w) for w in words) + '\\n')\n\n\
                def pre_exec(server):\n    _record('pre_exec', server.pid)\n\n\
                def on_starting(server):\n    _record('on_starting', server.pid)\n";
    let (dir, out) = setup("hooks-pre-exec", conf);
    let mut server = start(&dir, &out, &["-w", "1"]);
    let old = server.pid().to_string();
    wait_records(&out, "on_starting", 1);
    let new_master = server.reexec();
    let _cleanup = KillOnDrop(new_master);
    assert_eq!(wait_records(&out, "pre_exec", 1)[0], [old.as_str()]);
    let starts = wait_records(&out, "on_starting", 2);
    assert_eq!(starts[1], [new_master.to_string()]);
    signal(new_master, libc::SIGTERM);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(EXIT_TIMEOUT).success());
}
