//! The master's life cycle as a gunicorn user meets it: stops that run past their deadline, quick
//! stops, scaling limits, environment defaults, inherited and systemd sockets, bind errors,
//! privilege dropping, worker recycling, crash back-off, fork hygiene. Real binary, real sockets,
//! real signals, real /proc.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferrocorn_testkit::*;

fn hello_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--chdir", "examples", "hello:app"]);
    all
}

/// Start a request that sleeps `secs` inside the app and wait until the app is in it.
fn request_in_app(server: &mut Server, secs: u32) -> std::net::TcpStream {
    // The app is imported lazily per worker: load it first so the sleep starts at once.
    assert_eq!(get(server.addr(), "/").status, 200);
    let mut slow = connect(server.addr());
    write!(
        slow,
        "GET /sleep?s={secs} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    server.wait_for_log(&format!("sleeping {secs}.0s"), BOOT_TIMEOUT);
    slow
}

/// Everything the server sends on `conn` until it closes (or resets) it.
fn read_until_closed(conn: &mut std::net::TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    bytes
}

/// `[2026-11-25 13:00:00 +0000] [PID] [LEVEL] message`, gunicorn's error-log line.
fn assert_gunicorn_line(line: &str) {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let ok = b.len() > 30
        && b[0] == b'['
        && digits(1..5)
        && b[5] == b'-'
        && digits(6..8)
        && b[8] == b'-'
        && digits(9..11)
        && b[11] == b' '
        && digits(12..14)
        && b[14] == b':'
        && digits(15..17)
        && b[17] == b':'
        && digits(18..20)
        && &line[20..29] == " +0000] ["
        && line[29..].split_once("] [").is_some_and(|(pid, rest)| {
            pid.bytes().all(|c| c.is_ascii_digit())
                && ["INFO] ", "WARNING] ", "ERROR] ", "DEBUG] "]
                    .iter()
                    .any(|level| rest.starts_with(level))
        });
    assert!(ok, "not a gunicorn log line: {line:?}");
}

#[test]
fn a_worker_past_the_graceful_timeout_is_killed_and_the_master_exits_0() {
    let mut server = start_hello(&["-w", "1", "--graceful-timeout", "1"]);
    let worker = server.wait_for_workers(1)[0];
    let mut slow = request_in_app(&mut server, 60);

    server.signal(libc::SIGTERM);
    let status = server.wait_exit(STOP_PATIENCE);
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
    assert!(!pid_alive(worker), "worker {worker} outlived the master");
    // Killed mid-request: the client gets no response, just the close.
    assert!(read_until_closed(&mut slow).is_empty());
    let log = server.log_text();
    assert!(
        log.contains(&format!("Worker (pid:{worker}) still running")),
        "{log}"
    );
    assert!(
        log.contains(&format!("Worker (pid:{worker}) was sent SIGKILL!")),
        "{log}"
    );
    assert!(
        !log.contains("Perhaps out of memory"),
        "we killed it: {log}"
    );
    assert!(log.contains("Shutting down: Master"), "{log}");
}

#[test]
fn int_and_quit_stop_at_once_even_with_a_request_in_the_app() {
    for (sig, name) in [(libc::SIGINT, "int"), (libc::SIGQUIT, "quit")] {
        // The default --graceful-timeout (30 s) must not apply to a quick stop.
        let mut server = start_hello(&["-w", "2"]);
        server.wait_for_workers(2);
        let workers = server.wait_worker_count(2, BOOT_TIMEOUT);
        let mut slow = request_in_app(&mut server, 60);

        server.signal(sig);
        let status = server.wait_exit(STOP_PATIENCE);
        assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
        for pid in workers {
            assert!(!pid_alive(pid), "{name}: worker {pid} outlived the master");
        }
        assert!(read_until_closed(&mut slow).is_empty());
        let log = server.log_text();
        assert!(
            log.contains(&format!("Handling signal: {name}")),
            "{name}: {log}"
        );
        for line in server.log.lock().unwrap().iter() {
            if !line.starts_with("sleeping") {
                assert_gunicorn_line(line);
            }
        }
    }
}

#[test]
fn int_during_a_graceful_stop_makes_it_quick_and_a_second_term_changes_nothing() {
    let mut server = start_hello(&["-w", "1", "--graceful-timeout", "120"]);
    let worker = server.wait_for_workers(1)[0];
    let mut slow = request_in_app(&mut server, 60);

    server.signal(libc::SIGTERM);
    server.wait_for_log("Handling signal: term", BOOT_TIMEOUT);
    // Impatience, gunicorn style: a second TERM is no news, INT means now.
    server.signal(libc::SIGTERM);
    assert!(pid_alive(server.pid()));
    server.signal(libc::SIGINT);
    server.wait_for_log("Quick shutdown requested", BOOT_TIMEOUT);
    let status = server.wait_exit(STOP_PATIENCE);
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
    assert!(!pid_alive(worker));
    assert!(read_until_closed(&mut slow).is_empty());
}

#[test]
fn ttou_never_goes_below_one_worker() {
    let mut server = start_hello(&["-w", "1"]);
    let first = server.wait_for_workers(1)[0];
    for _ in 0..2 {
        server.signal(libc::SIGTTOU);
        server.wait_for_log("Handling signal: ttou", BOOT_TIMEOUT);
    }
    server.signal(libc::SIGTTIN);
    let second = server.wait_for_workers(1)[0];
    // Had TTOU gone to 0 workers, `first` would have been sent TERM before TTIN was even sent,
    // and TTIN would have brought back one worker, not a second one.
    let mut both = vec![first, second];
    both.sort();
    assert_eq!(server.wait_until_workers(&both, BOOT_TIMEOUT), both);
    assert!(
        !server
            .log_text()
            .contains(&format!("Worker exiting (pid: {first})")),
        "{}",
        server.log_text()
    );
    assert_eq!(get(server.addr(), "/").status, 200);
}

#[test]
fn web_concurrency_sets_the_default_worker_count_and_w_wins_over_it() {
    let mut server = Server::start_in(&hello_args(&[]), &repo_root(), &[("WEB_CONCURRENCY", "3")]);
    server.wait_for_workers(3);
    server.wait_worker_count(3, BOOT_TIMEOUT);

    let mut server = Server::start_in(
        &hello_args(&["-w", "1"]),
        &repo_root(),
        &[("WEB_CONCURRENCY", "3")],
    );
    server.wait_for_workers(1);
    assert_eq!(get(server.addr(), "/").status, 200);
    // All initial workers are forked before the first one could answer.
    assert_eq!(server.worker_pids().len(), 1);

    let out = Command::new(ferrocorn_bin())
        .args(["hello:app"])
        .env("WEB_CONCURRENCY", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lots") && err.contains("--workers"), "{err}");
}

#[test]
fn port_env_binds_every_interface_unless_bind_is_given() {
    let port = free_port();
    let port_str = port.to_string();
    let mut server = Server::spawn(&hello_args(&[]), &repo_root(), &[("PORT", &port_str)]);
    server.wait_for_log(
        &format!("Listening at: http://0.0.0.0:{port} ("),
        BOOT_TIMEOUT,
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(addr, "/").status, 200);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));

    // -b wins over $PORT, as in gunicorn.
    let mut server = Server::start_in(&hello_args(&[]), &repo_root(), &[("PORT", &port_str)]);
    assert_eq!(get(server.addr(), "/").status, 200);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    assert!(
        !server.log_text().contains("0.0.0.0"),
        "{}",
        server.log_text()
    );
}

#[test]
fn repeated_bind_serves_every_address_from_the_same_worker() {
    let mut server = start_hello(&["-w", "1", "-b", "127.0.0.1:0", "-b", "[::1]:0"]);
    let first = server.addr();
    let second = server.wait_listening_tcp();
    let third = server.wait_listening_tcp();
    let worker = server.wait_for_workers(1)[0];
    assert!(third.is_ipv6(), "{third}");
    assert_ne!(first, second);
    for addr in [first, second, third, first, third, second] {
        let resp = get(addr, "/");
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, &b"Hello, World!\n"[..])
        );
    }
    assert_eq!(server.worker_pids(), vec![worker]);
}

/// `cmd` will find `fd` open, without close-on-exec, as descriptor `target`.
fn pass_fd(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: between fork and exec the closure calls only dup2/fcntl, which are
    // async-signal-safe, and touches no memory but its two copied integers.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                // dup2's copy never has close-on-exec.
                libc::dup2(fd, target)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// High descriptor numbers for passing sockets, clear of the ones std uses while spawning.
const PASS_FD_A: RawFd = 200;
const PASS_FD_B: RawFd = 201;

#[test]
fn fd_bind_serves_an_inherited_listening_socket() {
    let inherited = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = inherited.local_addr().unwrap();
    let mut cmd = Command::new(ferrocorn_bin());
    cmd.current_dir(repo_root())
        .args(hello_args(&["-w", "2", "-b", &format!("fd://{PASS_FD_A}")]));
    pass_fd(&mut cmd, inherited.as_raw_fd(), PASS_FD_A);
    let mut server = Server::spawn_command(cmd);
    assert_eq!(server.wait_listening_tcp(), addr);
    server.wait_for_workers(2);
    for _ in 0..4 {
        assert_eq!(get(addr, "/").status, 200);
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
}

#[test]
fn systemd_socket_activation_through_the_binary() {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    // systemd hands the sockets over as fds 3 and 4 and names the pid it execs; `sh` moves the
    // sockets there (bash: dash takes single-digit fds only) and `exec` keeps its pid, which is
    // then ferrocorn's.
    let mut cmd = Command::new("bash");
    cmd.current_dir(repo_root())
        .arg("-c")
        .arg(format!(
            "exec 3<&{PASS_FD_A} 4<&{PASS_FD_B} {PASS_FD_A}<&- {PASS_FD_B}<&-; \
             LISTEN_PID=$$ LISTEN_FDS=2 exec \"$0\" \"$@\""
        ))
        .arg(ferrocorn_bin())
        // Socket activation replaces the bind addresses, as in gunicorn.
        .args(hello_args(&["-w", "1", "-b", "127.0.0.1:0"]));
    pass_fd(&mut cmd, a.as_raw_fd(), PASS_FD_A);
    pass_fd(&mut cmd, b.as_raw_fd(), PASS_FD_B);
    let mut server = Server::spawn_command(cmd);
    let mut seen = vec![server.wait_listening_tcp(), server.wait_listening_tcp()];
    seen.sort();
    let mut expected = vec![addr_a, addr_b];
    expected.sort();
    assert_eq!(seen, expected);
    server.wait_for_workers(1);
    assert_eq!(get(addr_a, "/").status, 200);
    assert_eq!(get(addr_b, "/").status, 200);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    assert_eq!(
        server.count_log("Listening at:"),
        2,
        "{}",
        server.log_text()
    );
}

#[test]
fn a_port_in_use_is_a_clear_error_and_no_worker_is_forked() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = taken.local_addr().unwrap().to_string();
    let out = Command::new(ferrocorn_bin())
        .current_dir(repo_root())
        .args(hello_args(&["-b", &spec]))
        .env_remove("WEB_CONCURRENCY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot bind {spec}")), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
    assert!(!err.contains("Booting worker"), "{err}");
    assert!(!err.contains("Listening at"), "{err}");
}

#[test]
fn max_requests_recycles_the_worker_after_exactly_n_requests() {
    let mut server = start_hello(&["-w", "1", "--max-requests", "3"]);
    let first = server.wait_for_workers(1)[0];
    // Five pipelined requests on one connection: the worker answers three, then leaves.
    let bytes = raw_exchange(
        server.addr(),
        &b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(5),
    );
    let responses = parse_all_responses(&bytes);
    assert_eq!(responses.len(), 3, "{:?}", String::from_utf8_lossy(&bytes));
    assert!(responses.iter().all(|r| r.status == 200));
    assert_eq!(responses[2].header("connection"), Some("close"));
    let second = server.wait_for_workers(1)[0];
    assert_ne!(first, second);
    assert!(!server.worker_pids().contains(&first));
    assert_eq!(get(server.addr(), "/").status, 200);
    assert!(server
        .log_text()
        .contains(&format!("Worker exiting (pid: {first})")));
}

#[test]
fn max_requests_jitter_adds_zero_to_jitter_requests_per_worker() {
    let mut server = start_hello(&[
        "-w",
        "1",
        "--max-requests",
        "2",
        "--max-requests-jitter",
        "3",
    ]);
    let mut worker = server.wait_for_workers(1)[0];
    let mut counts = Vec::new();
    for _ in 0..4 {
        let bytes = raw_exchange(
            server.addr(),
            &b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(8),
        );
        let served = parse_all_responses(&bytes).len();
        assert!((2..=5).contains(&served), "worker {worker} served {served}");
        counts.push(served);
        let next = server.wait_for_workers(1)[0];
        assert_ne!(next, worker);
        worker = next;
    }
    eprintln!("requests per worker: {counts:?}");
}

#[test]
fn timeout_zero_disables_the_worker_watchdog() {
    let mut server = start_hello(&["-w", "1", "--timeout", "0"]);
    let worker = server.wait_for_workers(1)[0];
    // Two seconds without a heartbeat: any positive timeout below that would kill the worker.
    let resp = get(server.addr(), "/sleep?s=2");
    assert_eq!((resp.status, resp.text().as_str()), (200, "slept 2.0s\n"));
    assert_eq!(server.worker_pids(), vec![worker]);
    assert!(!server.log_text().contains("WORKER TIMEOUT"));
}

#[test]
fn a_worker_crashing_at_boot_is_respawned_with_a_growing_back_off() {
    let dir = TempDir::new("bootcrash");
    // Not an import error (that stops the server with code 4): the process just dies, as with a
    // crashing C extension.
    std::fs::write(
        dir.path().join("crasher.py"),
        "import os\nos._exit(1)\napp = None\n",
    )
    .unwrap();
    let mut server = Server::spawn(
        &[
            "-b",
            "127.0.0.1:0",
            "-w",
            "1",
            "--chdir",
            dir.str(),
            "crasher:app",
        ],
        &repo_root(),
        &[],
    );
    // Delays of 0.1, 0.2, 0.4 s, then 0.8 s after the fourth crash: four forks, not thousands.
    server.wait_for_log("backing off 0.8s before the next fork", BOOT_TIMEOUT);
    let log = server.log_text();
    assert_eq!(server.count_log("Booting worker with pid:"), 4, "{log}");
    assert_eq!(server.count_log("exited with code 1."), 4, "{log}");
    for step in ["0.1s", "0.2s", "0.4s"] {
        assert!(log.contains(&format!("backing off {step}")), "{log}");
    }
    // gunicorn keeps trying such workers; so do we, and TERM still stops the master at once.
    server.wait_for_log("Booting worker with pid:", BOOT_TIMEOUT);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
}

/// Start hello:app with a `sitecustomize` that records the pid of every process that initializes
/// Python; returns the server and the file of pids.
fn start_recording_python_inits(dir: &TempDir, extra: &[&str]) -> (Server, PathBuf) {
    let pids = dir.path().join("pids");
    std::fs::write(
        dir.path().join("sitecustomize.py"),
        "import os\nwith open(os.environ['FERROCORN_TEST_PY_PIDS'], 'a') as f:\n    \
         f.write(f'{os.getpid()}\\n')\n",
    )
    .unwrap();
    let mut args = extra.to_vec();
    args.extend_from_slice(&["-w", "2"]);
    let server = Server::start_in(
        &hello_args(&args),
        &repo_root(),
        &[
            ("PYTHONPATH", dir.str()),
            ("FERROCORN_TEST_PY_PIDS", pids.to_str().unwrap()),
        ],
    );
    (server, pids)
}

fn python_pids(path: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut pids: Vec<i32> = text.lines().map(|l| l.parse().unwrap()).collect();
    pids.sort();
    pids
}

#[test]
fn the_master_never_starts_python_without_preload_and_never_runs_threads() {
    let dir = TempDir::new("pyinit");
    let (mut server, pids_file) = start_recording_python_inits(&dir, &[]);
    let mut workers = server.wait_for_workers(2);
    workers.sort();
    let wait_for_inits = |expected: &[i32]| {
        poll(BOOT_TIMEOUT, || {
            (python_pids(&pids_file) == expected).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "Python started in {:?}, workers are {expected:?}",
                python_pids(&pids_file)
            )
        })
    };
    wait_for_inits(&workers);
    // A replacement worker starts its own interpreter; the master still has none.
    signal(workers[0], libc::SIGKILL);
    workers.push(server.wait_for_workers(1)[0]);
    workers.sort();
    wait_for_inits(&workers);
    assert_eq!(get(server.addr(), "/").status, 200);
    assert!(!python_pids(&pids_file).contains(&server.pid()));
    // fork() is only safe from a single-threaded process.
    assert_eq!(proc_status(server.pid(), "Threads").as_deref(), Some("1"));

    // The observable works: with --preload the master is where Python starts (once).
    let dir = TempDir::new("pyinit-preload");
    let (mut server, pids_file) = start_recording_python_inits(&dir, &["--preload"]);
    server.wait_for_workers(2);
    assert_eq!(get(server.addr(), "/").status, 200);
    assert_eq!(python_pids(&pids_file), vec![server.pid()]);
    assert_eq!(proc_status(server.pid(), "Threads").as_deref(), Some("1"));
}

#[test]
fn killing_every_worker_at_once_gets_exactly_as_many_replacements() {
    let mut server = start_hello(&["-w", "8"]);
    let mut old = server.wait_for_workers(8);
    old.sort();
    assert_eq!(server.wait_worker_count(8, BOOT_TIMEOUT), old);
    for pid in &old {
        signal(*pid, libc::SIGKILL);
    }
    let mut new = server.wait_for_workers(8);
    new.sort();
    assert!(new.iter().all(|pid| !old.contains(pid)), "{old:?} {new:?}");
    assert_eq!(server.wait_until_workers(&new, BOOT_TIMEOUT), new);
    assert_eq!(
        server.count_log("was sent SIGKILL! Perhaps out of memory?"),
        8
    );
    for _ in 0..8 {
        assert_eq!(get(server.addr(), "/").status, 200);
    }
    assert_eq!(
        server.count_log("Booting worker with pid:"),
        16,
        "{}",
        server.log_text()
    );
}

#[test]
fn umask_sets_the_unix_socket_mode_and_leaves_the_process_umask_alone() {
    let dir = TempDir::new("umask");
    // (--umask value, socket mode). No --umask: 0o777, like gunicorn (umask 0), whatever the
    // process umask: nginx running as another user can connect.
    for (umask, mode) in [(None, 0o777), (Some("007"), 0o770), (Some("0o077"), 0o700)] {
        let sock = dir.path().join("app.sock");
        let unix = format!("unix:{}", sock.display());
        let mut args = vec!["-b", unix.as_str(), "-w", "1"];
        if let Some(umask) = umask {
            args.extend_from_slice(&["--umask", umask]);
        }
        let mut cmd = Command::new("sh");
        cmd.current_dir(repo_root())
            .arg("-c")
            .arg("umask 027; exec \"$0\" \"$@\"")
            .arg(ferrocorn_bin())
            .args(hello_args(&args));
        let mut server = Server::spawn_command(cmd);
        server.wait_for_log(&format!("Listening at: {unix}"), BOOT_TIMEOUT);
        let worker = server.wait_for_workers(1)[0];
        let got = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "--umask {umask:?}: socket mode {got:o}");
        // The app's own files keep the umask it was started with.
        for pid in [server.pid(), worker] {
            assert_eq!(proc_status(pid, "Umask").as_deref(), Some("0027"));
        }
        let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        assert_eq!(parse_response(&bytes, false).unwrap().0.status, 200);
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    }
}

#[test]
fn usr2_starts_a_new_master_on_the_same_sockets_that_takes_over_from_the_old() {
    let dir = TempDir::new("usr2");
    let sock = dir.path().join("app.sock");
    let pidfile = dir.path().join("app.pid");
    let pidfile2 = dir.path().join("app.pid.2");
    let unix = format!("unix:{}", sock.display());
    let mut server = start_hello(&["-w", "1", "-b", &unix, "--pid", pidfile.to_str().unwrap()]);
    let old_worker = server.wait_for_workers(1)[0];
    let addr = server.addr();

    let new_master = server.reexec();
    let _cleanup = KillOnDrop(new_master);
    // Same sockets (inherited, not bound again: a second bind of the port would fail).
    server.wait_for_log(
        &format!("Listening at: http://{addr} ({new_master})"),
        BOOT_TIMEOUT,
    );
    server.wait_for_log(
        &format!("Listening at: {unix} ({new_master})"),
        BOOT_TIMEOUT,
    );
    let new_worker = server.wait_for_workers(1)[0];
    assert_eq!(children_of(new_master), vec![new_worker]);
    assert!(children_of(server.pid()).contains(&old_worker));
    let read_pid = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    };
    assert_eq!(read_pid(&pidfile), Some(server.pid().to_string()));
    wait_until("the new master writes PIDFILE.2", || {
        read_pid(&pidfile2) == Some(new_master.to_string())
    });

    // One new master at a time, and none from a master whose parent master still runs.
    server.signal(libc::SIGUSR2);
    server.wait_for_log("USR2 signal ignored. Child exists.", BOOT_TIMEOUT);
    signal(new_master, libc::SIGUSR2);
    server.wait_for_log("USR2 signal ignored. Parent exists.", BOOT_TIMEOUT);

    // The old master stops; the new one serves on, with the socket file and the pid file.
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    assert!(!pid_alive(old_worker));
    assert!(
        sock.exists(),
        "the old master leaves the socket to the new one"
    );
    server.wait_for_log("Master has been promoted.", BOOT_TIMEOUT);
    wait_until("the promoted master takes the pid file", || {
        read_pid(&pidfile) == Some(new_master.to_string()) && !pidfile2.exists()
    });
    assert_eq!(get(addr, "/").status, 200);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    assert_eq!(parse_response(&bytes, false).unwrap().0.status, 200);

    // And it stops like any master, cleaning up after itself.
    signal(new_master, libc::SIGTERM);
    server.wait_for_log(
        &format!("[{new_master}] [INFO] Shutting down: Master"),
        STOP_PATIENCE,
    );
    wait_until("the new master exits", || !pid_alive(new_master));
    assert!(!pid_alive(new_worker));
    assert!(
        !sock.exists(),
        "the promoted master removes the socket file"
    );
    assert!(!pidfile.exists());
}

#[test]
fn workers_stop_when_the_master_is_killed() {
    assert_workers_stop_when_the_master_is_killed(start_hello(&["-w", "2"]));
}

#[test]
fn a_stopping_master_unlinks_its_unix_socket_first() {
    let dir = TempDir::new("unlink");
    let sock = dir.path().join("app.sock");
    let unix = format!("unix:{}", sock.display());
    let mut server = start_hello(&["-w", "1", "-b", &unix, "--graceful-timeout", "5"]);
    server.wait_for_workers(1);
    let _slow = request_in_app(&mut server, 60);
    assert!(sock.exists());
    server.signal(libc::SIGTERM);
    // As gunicorn: gone while the master still waits for the busy worker, so a proxy's new
    // connections fail at once instead of queueing for a server that is going away.
    wait_until("the socket file is unlinked", || !sock.exists());
    assert!(pid_alive(server.pid()), "{}", server.log_text());
    assert_eq!(
        std::os::unix::net::UnixStream::connect(&sock)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
}

#[test]
fn a_preloaded_app_that_starts_threads_is_warned_about_at_fork() {
    let dir = TempDir::new("threads");
    std::fs::write(
        dir.path().join("threaded.py"),
        "import threading, time\n\
         threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n\
         def app(environ, start_response):\n    \
             start_response('200 OK', [('Content-Length', '2')])\n    \
             return [b'ok']\n",
    )
    .unwrap();
    let mut server = Server::start(&["--preload", "-w", "2", "--chdir", dir.str(), "threaded:app"]);
    server.wait_for_log(
        "The master has 2 threads when forking workers",
        BOOT_TIMEOUT,
    );
    server.wait_for_workers(2);
    assert_eq!(get(server.addr(), "/").text(), "ok");
    assert_eq!(server.count_log("threads when forking"), 1, "said once");

    // Without --preload the thread starts in each worker: nothing to say.
    let mut server = Server::start(&["-w", "2", "--chdir", dir.str(), "threaded:app"]);
    server.wait_for_workers(2);
    assert_eq!(get(server.addr(), "/").text(), "ok");
    signal(server.worker_pids()[0], libc::SIGKILL);
    server.wait_for_workers(1);
    assert_eq!(server.count_log("threads when forking"), 0);
}

#[test]
fn type_notify_units_are_told_ready_once_the_sockets_are_bound() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let abstract_name = format!("ferrocorn-test-notify-{}", std::process::id());
    let by_path = UnixDatagram::bind(&path).unwrap();
    let by_name =
        UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap();
    let at_name = format!("@{abstract_name}");
    for (sock, env) in [
        (by_path, path.to_str().unwrap()),
        (by_name, at_name.as_str()),
    ] {
        sock.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
        let server = Server::start_in(&hello_args(&[]), &repo_root(), &[("NOTIFY_SOCKET", env)]);
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        let message = String::from_utf8_lossy(&buf[..n]);
        assert!(message.split('\n').any(|l| l == "READY=1"), "{message:?}");
        // Ready means bound: connections are accepted (and served once a worker is up).
        assert_eq!(get(server.addr(), "/").status, 200);
    }
}

#[test]
fn common_gunicorn_flags_are_accepted_and_forwarded_allow_ips_wins_over_the_environment() {
    let apps = repo_root().join("tests/apps");
    let server = Server::start_in(
        &[
            "--pythonpath",
            apps.to_str().unwrap(),
            "--worker-tmp-dir",
            "/dev/shm",
            "--worker-connections",
            "1000",
            "--forwarded-allow-ips",
            "192.0.2.1",
            "battery:app",
        ],
        &repo_root(),
        // Would trust this test's 127.0.0.1; the flag says only 192.0.2.1.
        &[("FORWARDED_ALLOW_IPS", "127.0.0.1")],
    );
    let resp = request(
        server.addr(),
        b"GET /environ HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let json = resp.text();
    assert!(json.contains("\"wsgi.url_scheme\": \"http\""), "{json}");
    assert!(
        json.contains("\"HTTP_X_FORWARDED_PROTO\": \"https\""),
        "{json}"
    );
}

#[test]
fn capture_output_sends_the_apps_prints_to_the_log_file() {
    let dir = TempDir::new("capture");
    std::fs::write(
        dir.path().join("printer.py"),
        "print('printed at import', flush=True)\n\
         def app(environ, start_response):\n    \
             print('printed in a request', flush=True)\n    \
             start_response('200 OK', [('Content-Length', '2')])\n    \
             return [b'ok']\n",
    )
    .unwrap();
    let log = dir.path().join("error.log");
    let mut server = Server::spawn(
        &[
            "-b",
            "127.0.0.1:0",
            "--chdir",
            dir.str(),
            "--log-file",
            log.to_str().unwrap(),
            "--capture-output",
            "printer:app",
        ],
        &repo_root(),
        &[],
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the listen line reaches the log file", || {
        text().contains("Listening at: http://")
    });
    let addr: std::net::SocketAddr = text()
        .split("Listening at: http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(get(addr, "/").text(), "ok");
    wait_until("both prints reach the log file", || {
        let t = text();
        t.contains("printed at import") && t.contains("printed in a request")
    });
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    assert!(!server.log_text().contains("printed"), "nothing on stdout");
}

#[test]
fn chdir_applies_to_the_master_so_relative_paths_land_inside_it() {
    let dir = hello_app_dir("chdir");
    // Started from the repository root; every relative path is meant inside --chdir.
    let mut server = Server::spawn(
        &[
            "--chdir",
            dir.str(),
            "-b",
            "unix:app.sock",
            "--pid",
            "app.pid",
            "--log-file",
            "app.log",
            "hello:app",
        ],
        &repo_root(),
        &[],
    );
    let sock = dir.path().join("app.sock");
    wait_until("the socket appears inside --chdir", || sock.exists());
    // The pid file is written after the sockets are bound.
    let pidfile = dir.path().join("app.pid");
    wait_until("the pid file appears inside --chdir", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n'))
    });
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(pid.trim(), server.pid().to_string());
    let log = dir.path().join("app.log");
    wait_until("a worker boots", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Booting worker"))
    });
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    assert_eq!(
        parse_response(&bytes, false).unwrap().0.body,
        b"Hello, World!\n"
    );
    // USR1 in a worker reopens the same file, not one relative to another directory.
    server.signal(libc::SIGUSR1);
    wait_until("the worker reopens app.log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Worker reopened its log file"))
    });
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(0));
    assert!(!repo_root().join("app.sock").exists() && !repo_root().join("app.log").exists());

    let out = Command::new(ferrocorn_bin())
        .args(["--chdir", "/nonexistent/ferrocorn-test", "hello:app"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot change directory to /nonexistent/ferrocorn-test"),
        "{err}"
    );
}

#[test]
fn initgroups_without_user_is_a_clear_error() {
    let out = Command::new(ferrocorn_bin())
        .args(["--initgroups", "hello:app"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--initgroups needs --user"));
}

/// With `--user`, a worker that cannot reach Python's standard library (pyenv's under /root, a
/// common set-up) fails naming the directory that keeps the user out, not just Python's own
/// "failed to get the Python codec". Where the user can reach it, the app is served.
#[test]
#[ignore = "needs root: --user switches the workers to nobody"]
fn with_user_a_python_the_user_cannot_reach_is_named() {
    let dir = hello_app_dir("user-python");
    let args = ["--user", "nobody", "--group", "nogroup", "hello:app"];
    let mut server = Server::start_in(&args, dir.path(), &[]);
    // Answered once the worker has loaded the app; reset if the master gives up.
    let answer = raw_exchange(
        server.addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    if answer.starts_with(b"HTTP/1.1 200") {
        return;
    }
    assert_eq!(server.wait_exit(STOP_PATIENCE).code(), Some(4));
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("is out of reach of uid 65534: it may not enter "))
        .unwrap_or_else(|| panic!("the worker failed without naming why: {log}"));
    // The directory named really is closed to others (no search bit for them).
    let named = line.split("it may not enter ").nth(1).unwrap();
    let named = named.split(';').next().unwrap();
    let mode = std::fs::metadata(named).unwrap().permissions().mode();
    assert_eq!(mode & 0o001, 0, "{named} is searchable by others: {line}");
}
