//! Real signals between real processes.
//!
//! `harness = false`: signal handlers are process-wide, so every case runs in its own forked
//! process, forked from this single-threaded main (a libtest harness would have threads).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ferrocorn_signals::{Command, MasterSignals, WorkerSignals, WorkerState};

/// How long a case waits for something that must happen; reaching it fails the case.
const PATIENCE: Duration = Duration::from_secs(30);

/// fork(2): 0 in the child, the child's pid in the parent.
fn fork() -> libc::pid_t {
    // SAFETY: callers fork only from single-threaded processes, so the child may run any code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// In a forked child: run `f`, then exit 0, or 101 if it panicked. A child still running after
/// [`PATIENCE`] dies of SIGALRM, so a case that would hang fails instead.
fn child(f: impl FnOnce()) -> ! {
    // SAFETY: alarm(2) only arms a timer for this process.
    unsafe { libc::alarm(PATIENCE.as_secs() as u32) };
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => 0,
        Err(_) => 101,
    };
    // SAFETY: end the child without running the parent's exit handlers.
    unsafe { libc::_exit(code) }
}

/// Fork; the child runs `f` (see [`child`]).
fn fork_run(f: impl FnOnce()) -> libc::pid_t {
    let pid = fork();
    if pid == 0 {
        child(f);
    }
    pid
}

/// Wait for a child; the raw wait status.
fn wait_status(pid: libc::pid_t) -> c_int {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child into a valid int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        assert_eq!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::Interrupted,
            "waitpid"
        );
    }
}
use libc::c_int;

fn assert_exited_ok(pid: libc::pid_t) {
    let status = wait_status(pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child {pid} failed: status {status:#x}"
    );
}

fn kill(pid: libc::pid_t, sig: c_int) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

fn raise(sig: c_int) {
    // SAFETY: as kill; raise delivers to this thread before it returns.
    assert_eq!(unsafe { libc::raise(sig) }, 0);
}

fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

fn disposition(sig: c_int) -> libc::sighandler_t {
    // SAFETY: queries the current action into a zeroed struct.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut act), 0);
        act.sa_sigaction
    }
}

/// Collect master commands until `done` says so; panics after [`PATIENCE`].
fn collect_until(master: &mut MasterSignals, done: impl Fn(&[Command]) -> bool) -> Vec<Command> {
    let deadline = Instant::now() + PATIENCE;
    let mut all = Vec::new();
    while !done(&all) {
        assert!(Instant::now() < deadline, "gave up waiting; got {all:?}");
        all.extend(master.wait(Duration::from_secs(1)));
    }
    all
}

/// Reaps a worker child (the way the arbiter will) and returns everything the master queued
/// meanwhile, up to its SIGCHLD.
fn reap_and_collect(master: &mut MasterSignals, pid: libc::pid_t) -> (c_int, Vec<Command>) {
    let commands = collect_until(master, |c| c.contains(&Command::ChildExited));
    (wait_status(pid), commands)
}

/// Fork a worker: the child replaces the master's handlers and runs `body`, which calls `ready`
/// when the parent may start signalling it. Returns once it did, with the master back.
fn fork_worker(
    master: MasterSignals,
    body: impl FnOnce(WorkerSignals, &mut dyn FnMut()),
) -> (libc::pid_t, MasterSignals) {
    let (mut ready_r, mut ready_w) = UnixStream::pair().unwrap();
    let pid = fork();
    if pid == 0 {
        child(|| {
            drop(ready_r);
            let worker = WorkerSignals::install_replacing(master).unwrap();
            body(worker, &mut || ready_w.write_all(b"r").unwrap());
        });
    }
    drop(ready_w);
    ready_r
        .read_exact(&mut [0u8])
        .expect("the worker died before it was ready");
    (pid, master)
}

/// The worker exited with status 0 and the master queued nothing but its SIGCHLD.
fn assert_worker_ok_master_untouched(master: &mut MasterSignals, pid: libc::pid_t) {
    let (status, commands) = reap_and_collect(master, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "worker failed: {status:#x}"
    );
    assert_eq!(
        commands,
        vec![Command::ChildExited],
        "the worker's signals must not reach the master's queue"
    );
    assert_eq!(master.pending(), vec![]);
}

fn queue_keeps_arrival_order() {
    let mut master = MasterSignals::install().unwrap();
    assert_eq!(master.pending(), vec![]);
    for sig in [
        libc::SIGHUP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTTIN,
    ] {
        raise(sig);
    }
    assert_eq!(
        master.wait(Duration::ZERO),
        vec![
            Command::Reload,
            Command::IncrementWorkers,
            Command::DecrementWorkers,
            Command::ReopenLogs,
            Command::Reexec,
            Command::StopWorkers,
            Command::GracefulStop,
            Command::QuickStop,
            Command::QuickStop,
            Command::IncrementWorkers,
        ]
    );
    assert_eq!(master.pending(), vec![]);
    // send() queues like a signal; wake() in between adds no command.
    master.send(Command::DecrementWorkers);
    master.wake();
    raise(libc::SIGHUP);
    assert_eq!(
        master.pending(),
        vec![Command::DecrementWorkers, Command::Reload]
    );
}

fn wait_signals_tells_int_from_quit() {
    let mut master = MasterSignals::install().unwrap();
    for sig in [libc::SIGQUIT, libc::SIGINT, libc::SIGTERM] {
        raise(sig);
    }
    // A wake-up is no signal.
    master.wake();
    assert_eq!(
        master.wait_signals(Duration::ZERO),
        vec![libc::SIGQUIT, libc::SIGINT, libc::SIGTERM]
    );
    assert_eq!(master.wait_signals(Duration::ZERO), vec![]);
}

fn signals_from_another_process_do_not_kill_the_master() {
    let mut master = MasterSignals::install().unwrap();
    let me = std::process::id() as libc::pid_t;
    let sender = fork_run(|| {
        kill(me, libc::SIGINT);
        kill(me, libc::SIGTTIN);
        kill(me, libc::SIGQUIT);
    });
    let got = collect_until(&mut master, |c| {
        [
            Command::QuickStop,
            Command::IncrementWorkers,
            Command::ChildExited,
        ]
        .iter()
        .all(|x| c.contains(x))
    });
    // Still here after SIGINT and SIGQUIT, which would have killed an unprepared process.
    assert_exited_ok(sender);
    assert!(got.iter().all(|c| [
        Command::QuickStop,
        Command::IncrementWorkers,
        Command::ChildExited
    ]
    .contains(c)));
}

fn wake_interrupts_wait() {
    let mut master = MasterSignals::install().unwrap();
    master.wake();
    assert!(readable_now(master.fd()));
    // Would block for an hour without the wake-up.
    assert_eq!(master.wait(Duration::from_secs(3600)), vec![]);
    assert!(!readable_now(master.fd()), "wait must consume the wake-up");

    // From another thread, while wait() blocks.
    let waker = master.waker();
    let (mut started_r, mut started_w) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut b = [0u8];
        started_r.read_exact(&mut b).unwrap();
        waker.wake();
    });
    started_w.write_all(b"go").unwrap();
    assert_eq!(master.wait(Duration::from_secs(3600)), vec![]);
    t.join().unwrap();
    // An empty wait with a short timeout just times out.
    assert_eq!(master.wait(Duration::from_millis(1)), vec![]);
}

fn worker_term_sets_stopping_not_master_pipe() {
    let master = MasterSignals::install().unwrap();
    let master_fd = master.fd();
    let (pid, mut master) = fork_worker(master, |worker, ready| {
        assert_eq!(worker.state(), WorkerState::Running);
        assert!(
            !fd_is_open(master_fd),
            "the master's pipe must be closed in the worker"
        );
        assert_eq!(disposition(libc::SIGHUP), libc::SIG_DFL);
        assert_eq!(disposition(libc::SIGCHLD), libc::SIG_DFL);
        assert_eq!(disposition(libc::SIGUSR2), libc::SIG_DFL);
        assert_eq!(disposition(libc::SIGWINCH), libc::SIG_IGN);
        assert_eq!(disposition(libc::SIGTTIN), libc::SIG_IGN);
        assert_eq!(disposition(libc::SIGTTOU), libc::SIG_IGN);
        assert!(!readable_now(worker.wake_fd()));
        ready();
        assert!(worker.wait_wake(PATIENCE), "no wake-up for SIGTERM");
        assert_eq!(worker.state(), WorkerState::Stopping);
        worker.clear_wake();
        assert!(!readable_now(worker.wake_fd()));
        // USR1 wakes too and asks for reopened logs, without changing the state.
        raise(libc::SIGUSR1);
        assert!(readable_now(worker.wake_fd()));
        assert!(worker.take_reopen_logs());
        assert!(!worker.take_reopen_logs());
        assert_eq!(worker.state(), WorkerState::Stopping);
        // QUIT escalates; a later TERM does not step back.
        raise(libc::SIGQUIT);
        raise(libc::SIGTERM);
        assert_eq!(worker.state(), WorkerState::Exit);
    });
    kill(pid, libc::SIGTERM);
    assert_worker_ok_master_untouched(&mut master, pid);
}

fn worker_quit_interrupts_a_blocking_read() {
    let master = MasterSignals::install().unwrap();
    let (idle_r, idle_w) = UnixStream::pair().unwrap();
    let (pid, mut master) = fork_worker(master, |worker, ready| {
        ready();
        // Nobody writes to this socket (the parent keeps the other end open): only a signal that
        // interrupts the call (no SA_RESTART) gets us out.
        let mut b = [0u8];
        // SAFETY: reading into a live one-byte buffer.
        let n = unsafe { libc::read(idle_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::Interrupted
        );
        assert_eq!(worker.state(), WorkerState::Exit);
    });
    // A QUIT that lands before the child is inside read() only sets the state; the next one must
    // interrupt the read. So repeat until the child exits (each wait ends early on its SIGCHLD).
    let deadline = Instant::now() + PATIENCE;
    let mut commands = Vec::new();
    while !commands.contains(&Command::ChildExited) {
        assert!(
            Instant::now() < deadline,
            "the worker never left read(); got {commands:?}"
        );
        kill(pid, libc::SIGQUIT);
        commands.extend(master.wait(Duration::from_millis(50)));
    }
    let status = wait_status(pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "worker failed: {status:#x}"
    );
    assert_eq!(
        commands,
        vec![Command::ChildExited],
        "the worker's signals must not reach the master's queue"
    );
    drop(idle_w);
}

fn signal_between_fork_and_install_is_replayed() {
    let mut master = MasterSignals::install().unwrap();
    let pid = fork();
    if pid == 0 {
        child(|| {
            // Still running the master's actions here, as a worker does right after fork.
            raise(libc::SIGTERM);
            raise(libc::SIGUSR1);
            let worker = WorkerSignals::install_replacing(master).unwrap();
            assert_eq!(worker.state(), WorkerState::Stopping);
            assert!(worker.take_reopen_logs());
            assert!(
                readable_now(worker.wake_fd()),
                "a replayed signal must wake the worker"
            );
        });
    }
    assert_worker_ok_master_untouched(&mut master, pid);
}

fn worker_dies_of_sighup_like_gunicorns() {
    let master = MasterSignals::install().unwrap();
    let (pid, mut master) = fork_worker(master, |worker, ready| {
        ready();
        // TTIN is ignored (no wake-up, not stopped); HUP then kills us before PATIENCE ends.
        while worker.state() == WorkerState::Running && worker.wait_wake(PATIENCE) {
            worker.clear_wake();
        }
        panic!("still alive");
    });
    kill(pid, libc::SIGTTIN);
    kill(pid, libc::SIGHUP);
    let (status, commands) = reap_and_collect(&mut master, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGHUP,
        "status {status:#x}"
    );
    assert_eq!(commands, vec![Command::ChildExited]);
}

fn main() {
    let cases: [(&str, fn()); 8] = [
        ("queue_keeps_arrival_order", queue_keeps_arrival_order),
        (
            "signals_from_another_process_do_not_kill_the_master",
            signals_from_another_process_do_not_kill_the_master,
        ),
        ("wake_interrupts_wait", wake_interrupts_wait),
        (
            "worker_term_sets_stopping_not_master_pipe",
            worker_term_sets_stopping_not_master_pipe,
        ),
        (
            "worker_quit_interrupts_a_blocking_read",
            worker_quit_interrupts_a_blocking_read,
        ),
        (
            "signal_between_fork_and_install_is_replayed",
            signal_between_fork_and_install_is_replayed,
        ),
        (
            "worker_dies_of_sighup_like_gunicorns",
            worker_dies_of_sighup_like_gunicorns,
        ),
        (
            "wait_signals_tells_int_from_quit",
            wait_signals_tells_int_from_quit,
        ),
    ];
    // No case needs root: the root-only pass (`--ignored`) has nothing to run here.
    if std::env::args().any(|a| a == "--ignored") {
        println!(
            "\ntest result: ok. 0 passed; 0 failed; 0 ignored; {} filtered out",
            cases.len()
        );
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let status = wait_status(fork_run(case));
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        println!(
            "test {name} ... {}",
            if ok {
                "ok".to_string()
            } else {
                format!("FAILED (status {status:#x})")
            }
        );
        failed += usize::from(!ok);
    }
    println!("\ntest result: {} failed", failed);
    std::process::exit(i32::from(failed > 0));
}
