//! The arbiter's loop with real forks and real signals, without HTTP or Python.
//!
//! `harness = false`: every case runs in a process forked from this single-threaded main, and
//! SIGALRM ends a case that hangs (its default action kills the process, which fails the case).

use std::time::Duration;

use std::os::fd::RawFd;

use ferrocorn_arbiter::{
    Arbiter, ArbiterConfig, ArbiterStatus, Hooks, NoHooks, PollFd, SlotState, Want,
};
use ferrocorn_signals::{Command, MasterSignals, WorkerState};

/// Seconds after which a hanging case is killed.
const PATIENCE_SECS: u32 = 30;

fn term_then_quit_in_one_batch_is_a_quick_stop() {
    let signals = MasterSignals::install().unwrap();
    // Queued before the loop first looks: it reads both at once, TERM first.
    signals.send(Command::GracefulStop);
    signals.send(Command::QuickStop);
    let config = ArbiterConfig {
        workers: 1,
        timeout: None,
        // Far beyond PATIENCE_SECS: a graceful stop would hang the case.
        graceful_timeout: Duration::from_secs(600),
    };
    let mut arbiter = Arbiter::new(config, signals, NoHooks).unwrap();
    let code = arbiter
        .run(&mut |ctx| {
            // Timers are not inherited by fork: a worker left behind by a failed case must end
            // too, or it would hold the test's output open.
            // SAFETY: alarm only arms a timer for this process.
            unsafe { libc::alarm(PATIENCE_SECS) };
            // A worker busy for ever: TERM (finish first) does not end it, QUIT does.
            while ctx.signals.state() != WorkerState::Exit {
                ctx.signals.wait_wake(Duration::from_millis(100));
                ctx.signals.clear_wake();
            }
            0
        })
        .code();
    assert_eq!(code, 0);
    assert!(arbiter.worker_pids().is_empty());
}

/// Set the soft process limit (`None`: up to the hard limit), which needs no privilege.
fn set_nproc_soft_limit(soft: Option<libc::rlim_t>) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live rlimit struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) };
    assert_eq!(rc, 0);
    limit.rlim_cur = soft.unwrap_or(limit.rlim_max);
    // SAFETY: setrlimit reads a live rlimit struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &limit) }, 0);
}

/// Counts fork attempts; the limit goes away (a process elsewhere exited) before the third.
struct CountForks(std::rc::Rc<std::cell::Cell<u32>>);

impl Hooks for CountForks {
    fn before_fork(&mut self) {
        self.0.set(self.0.get() + 1);
        if self.0.get() == 3 {
            set_nproc_soft_limit(None);
        }
    }
}

fn a_failing_fork_is_retried_after_a_back_off_not_fatal() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to become another user");
        return;
    }
    // As `nobody` with a soft limit of one process, this process alone reaches the limit:
    // fork fails with EAGAIN (root would be exempt).
    set_nproc_soft_limit(Some(1));
    // SAFETY: setgid/setuid change this (forked, single-threaded) case process's credentials.
    assert_eq!(unsafe { libc::setgid(65534) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setuid(65534) }, 0);
    // SAFETY: fork in a single-threaded process; the child only calls _exit.
    let probe = unsafe { libc::fork() };
    if probe == 0 {
        // SAFETY: ends the probe child at once.
        unsafe { libc::_exit(0) };
    }
    assert_eq!(probe, -1, "fork must fail under the limit");

    let attempts = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let counted = attempts.clone();
    let hooks = CountForks(counted);
    let config = ArbiterConfig {
        workers: 1,
        timeout: None,
        graceful_timeout: Duration::from_secs(5),
    };
    let signals = MasterSignals::install().unwrap();
    let mut arbiter = Arbiter::new(config, signals, hooks).unwrap();
    let code = arbiter
        .run(&mut |_ctx| {
            // SAFETY: alarm arms a timer; kill signals our parent, the master, to stop.
            unsafe {
                libc::alarm(PATIENCE_SECS);
                libc::kill(libc::getppid(), libc::SIGTERM);
            }
            0
        })
        .code();
    // A failed fork must not end the master.
    assert_eq!(code, 0);
    assert_eq!(attempts.get(), 3, "two failed forks, then one that worked");
}

/// Polls one pipe beside the signal queue; when it is readable, keeps the master's status and
/// stops the master (QUIT to itself).
struct WatchPipe {
    read: RawFd,
    seen: std::rc::Rc<std::cell::RefCell<Option<ArbiterStatus>>>,
}

impl Hooks for WatchPipe {
    fn poll_fds(&mut self) -> Vec<PollFd> {
        vec![PollFd {
            fd: self.read,
            want: Want::Read,
        }]
    }

    fn fd_ready(&mut self, fd: RawFd, status: &ArbiterStatus) {
        assert_eq!(fd, self.read);
        let mut byte = 0u8;
        // SAFETY: reads one byte into a live local from the pipe we own.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        assert_eq!(n, 1);
        *self.seen.borrow_mut() = Some(status.clone());
        // SAFETY: kill only sends a signal, to this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGQUIT) };
    }
}

fn a_hook_descriptor_is_served_from_the_loop_with_the_workers_status() {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into a live array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [read, write] = fds;
    let seen = std::rc::Rc::new(std::cell::RefCell::new(None));
    let hooks = WatchPipe {
        read,
        seen: seen.clone(),
    };
    let config = ArbiterConfig {
        workers: 1,
        timeout: None,
        graceful_timeout: Duration::from_secs(5),
    };
    let mut arbiter = Arbiter::new(config, MasterSignals::install().unwrap(), hooks).unwrap();
    let code = arbiter
        .run(&mut |ctx| {
            // SAFETY: alarm only arms a timer for this process.
            unsafe { libc::alarm(PATIENCE_SECS) };
            ctx.slot.beat();
            ctx.slot.request_started("GET", "/probe");
            // SAFETY: writes one byte from a live local to the inherited pipe.
            assert_eq!(unsafe { libc::write(write, b"x".as_ptr().cast(), 1) }, 1);
            while ctx.signals.state() != WorkerState::Exit {
                ctx.signals.wait_wake(Duration::from_millis(100));
                ctx.signals.clear_wake();
            }
            0
        })
        .code();
    assert_eq!(code, 0);
    let status = seen.borrow_mut().take().expect("fd_ready was called");
    assert_eq!(status.master_pid, std::process::id() as i32);
    assert_eq!((status.target, status.workers.len()), (1, 1));
    let worker = &status.workers[0];
    assert_eq!(worker.age, 1);
    assert_eq!(worker.predecessor_exit, None);
    assert_eq!(worker.slot.state, SlotState::Busy);
    assert_eq!(worker.slot.request().as_deref(), Some("GET /probe"));
}

fn main() {
    let cases: [(&str, fn()); 3] = [
        (
            "a_hook_descriptor_is_served_from_the_loop_with_the_workers_status",
            a_hook_descriptor_is_served_from_the_loop_with_the_workers_status,
        ),
        (
            "term_then_quit_in_one_batch_is_a_quick_stop",
            term_then_quit_in_one_batch_is_a_quick_stop,
        ),
        (
            "a_failing_fork_is_retried_after_a_back_off_not_fatal",
            a_failing_fork_is_retried_after_a_back_off_not_fatal,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        // SAFETY: this main is single-threaded, so the child inherits no lock held elsewhere.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: alarm only arms a timer for this process.
            unsafe { libc::alarm(PATIENCE_SECS) };
            let ok = std::panic::catch_unwind(case).is_ok();
            // SAFETY: _exit ends the forked case without running the parent's exit handlers.
            unsafe { libc::_exit(i32::from(!ok)) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we just forked, writing into a live int.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {}
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
    println!("\ntest result: {failed} failed");
    std::process::exit(i32::from(failed > 0));
}
