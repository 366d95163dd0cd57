//! The arbiter's loop with real forks and real signals, without HTTP or Python.
//!
//! `harness = false`: every case runs in a process forked from this single-threaded main, and
//! SIGALRM ends a case that hangs (its default action kills the process, which fails the case).

use std::time::Duration;

use std::os::fd::RawFd;

use ferrocorn_arbiter::{
    Arbiter, ArbiterConfig, ArbiterStatus, ExitCause, Hooks, NoHooks, PollFd, SlotState, Want,
};
use ferrocorn_signals::{Command, MasterSignals, WorkerState};

/// Seconds after which a hanging case is killed.
const PATIENCE_SECS: u32 = 30;

/// `workers` workers, no timeout, 5 s to stop.
fn quick_config(workers: usize) -> ArbiterConfig {
    ArbiterConfig {
        workers,
        timeout: None,
        graceful_timeout: Duration::from_secs(5),
        ..ArbiterConfig::default()
    }
}

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
        ..ArbiterConfig::default()
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
    let mut arbiter =
        Arbiter::new(quick_config(1), MasterSignals::install().unwrap(), hooks).unwrap();
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

/// A file shared by a case's workers (they cannot talk to the master, the case's own process).
fn case_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ferrocorn-arbiter-{name}-{}", std::process::id()))
}

fn a_reload_whose_workers_cannot_load_the_app_keeps_the_old_worker() {
    let old_pid_file = case_file("old-pid");
    let verdict_file = case_file("verdict");
    let mut arbiter =
        Arbiter::new(quick_config(1), MasterSignals::install().unwrap(), NoHooks).unwrap();
    let (old, verdict) = (old_pid_file.clone(), verdict_file.clone());
    let code = arbiter
        .run(&mut |ctx| {
            // SAFETY: alarm arms a timer; getpid/getppid read ids; kill signals our master.
            unsafe { libc::alarm(PATIENCE_SECS) };
            let me = std::process::id() as i32;
            match ctx.age {
                // The first worker boots (its first beat), then asks for a reload and serves on.
                1 => {
                    ctx.slot.beat();
                    std::fs::write(&old, me.to_string()).unwrap();
                    // SAFETY: kill signals our master.
                    unsafe { libc::kill(libc::getppid(), libc::SIGHUP) };
                    while ctx.signals.state() != WorkerState::Exit {
                        ctx.slot.beat();
                        ctx.signals.wait_wake(Duration::from_millis(100));
                        ctx.signals.clear_wake();
                    }
                    0
                }
                // Its replacement cannot load the app.
                2 => ferrocorn_arbiter::APP_LOAD_ERROR,
                // Retried after the back-off: the old worker must still be there; then stop.
                _ => {
                    let old: i32 = std::fs::read_to_string(&old).unwrap().parse().unwrap();
                    // SAFETY: kill with signal 0 only checks that the process exists.
                    let alive = unsafe { libc::kill(old, 0) } == 0;
                    std::fs::write(&verdict, if alive { "alive" } else { "gone" }).unwrap();
                    // SAFETY: kill signals our master.
                    unsafe { libc::kill(libc::getppid(), libc::SIGTERM) };
                    ferrocorn_arbiter::APP_LOAD_ERROR
                }
            }
        })
        .code();
    let verdict = std::fs::read_to_string(&verdict_file).unwrap_or_default();
    let _ = std::fs::remove_file(&old_pid_file);
    let _ = std::fs::remove_file(&verdict_file);
    assert_eq!(
        code, 0,
        "a load failure during a reload does not stop the server"
    );
    assert_eq!(
        verdict, "alive",
        "the old worker serves while the new ones fail"
    );
}

fn a_load_failure_at_first_start_stops_the_server() {
    let mut arbiter =
        Arbiter::new(quick_config(2), MasterSignals::install().unwrap(), NoHooks).unwrap();
    let code = arbiter
        .run(&mut |_ctx| ferrocorn_arbiter::APP_LOAD_ERROR)
        .code();
    assert_eq!(code, ferrocorn_arbiter::APP_LOAD_ERROR);
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
        ..ArbiterConfig::default()
    };
    let mut arbiter = Arbiter::new(config, MasterSignals::install().unwrap(), hooks).unwrap();
    let code = arbiter
        .run(&mut |ctx| {
            // SAFETY: alarm only arms a timer for this process.
            unsafe { libc::alarm(PATIENCE_SECS) };
            ctx.slot.beat();
            ctx.slot.request_started(0, "GET", "/probe");
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

/// Appends the master's log lines to a file its workers can read (the case's only way to tell
/// them what the master said).
struct FileLogger(std::path::PathBuf);

impl log::Log for FileLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .unwrap();
        // One write per line, so a reader never sees half of one.
        let line = format!("[{}] {}\n", record.level(), record.args());
        file.write_all(line.as_bytes()).unwrap();
    }

    fn flush(&self) {}
}

/// Send the master's log to a fresh case file; returns its path.
fn log_to_file(name: &str) -> std::path::PathBuf {
    let path = case_file(name);
    let _ = std::fs::remove_file(&path);
    log::set_boxed_logger(Box::new(FileLogger(path.clone()))).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    path
}

/// The lines of the log file holding `needle`.
fn log_lines(path: &std::path::Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// Beat every 100 ms for `period` (the lanes stay as they are).
fn keep_beating(slot: &ferrocorn_arbiter::WorkerSlot, period: Duration) {
    let until = std::time::Instant::now() + period;
    while std::time::Instant::now() < until {
        slot.beat();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keeps each worker's exit cause.
struct RecordExits(std::rc::Rc<std::cell::RefCell<Vec<ExitCause>>>);

impl Hooks for RecordExits {
    fn worker_exited(&mut self, _pid: i32, cause: ExitCause) {
        self.0.borrow_mut().push(cause);
    }
}

/// `threads` lanes, `--timeout 1`.
fn timeout_config(threads: usize) -> ArbiterConfig {
    ArbiterConfig {
        timeout: Some(Duration::from_secs(1)),
        threads,
        ..quick_config(1)
    }
}

fn a_request_past_the_timeout_counts_as_a_timeout_and_a_beating_worker_is_not_signalled() {
    let log = log_to_file("named-once");
    let exits = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let hooks = RecordExits(exits.clone());
    let mut arbiter =
        Arbiter::new(timeout_config(3), MasterSignals::install().unwrap(), hooks).unwrap();
    let code = arbiter
        .run(&mut |ctx| {
            // SAFETY: alarm only arms a timer for this process.
            unsafe { libc::alarm(PATIENCE_SECS) };
            ctx.slot.beat();
            ctx.slot.request_started(0, "GET", "/quick");
            ctx.slot.request_started(2, "GET", "/slow");
            ctx.slot.request_finished(0);
            // The worker's watchdog beats on while its app thread is stuck past the timeout
            // (the worker itself interrupts it and says so), for a few of the master's ticks.
            keep_beating(&ctx.slot, Duration::from_millis(4500));
            ctx.slot.request_finished(2);
            // SAFETY: kill signals our master.
            unsafe { libc::kill(libc::getppid(), libc::SIGTERM) };
            while ctx.signals.state() == WorkerState::Running {
                ctx.signals.wait_wake(Duration::from_millis(100));
                ctx.signals.clear_wake();
            }
            0
        })
        .code();
    let named = log_lines(&log, "WORKER TIMEOUT");
    let aborts = log_lines(&log, "SIGABRT");
    let _ = std::fs::remove_file(&log);
    assert_eq!(code, 0);
    assert!(
        named.is_empty(),
        "the worker names it, not the master: {named:?}"
    );
    assert!(aborts.is_empty(), "{aborts:?}");
    assert_eq!(
        *exits.borrow(),
        [ExitCause::Timeout],
        "its exit counts as a timeout"
    );
}

fn a_request_stuck_well_past_the_timeout_aborts_the_worker_though_it_beats() {
    let log = log_to_file("stuck-lane");
    let exits = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let hooks = RecordExits(exits.clone());
    let mut arbiter =
        Arbiter::new(timeout_config(2), MasterSignals::install().unwrap(), hooks).unwrap();
    let code = arbiter
        .run(&mut |ctx| {
            // SAFETY: alarm only arms a timer for this process.
            unsafe { libc::alarm(PATIENCE_SECS) };
            if ctx.age > 1 {
                // The replacement: the case is over.
                // SAFETY: kill signals our master.
                unsafe { libc::kill(libc::getppid(), libc::SIGTERM) };
                return 0;
            }
            ctx.slot.beat();
            ctx.slot.request_started(1, "POST", "/stuck");
            // Beats for ever, never deals with its stuck request: SIGABRT's default action
            // ends it.
            keep_beating(&ctx.slot, Duration::from_secs(u64::from(PATIENCE_SECS)));
            0
        })
        .code();
    let named = log_lines(&log, "WORKER TIMEOUT");
    let aborts = log_lines(&log, "sending SIGABRT");
    let _ = std::fs::remove_file(&log);
    assert_eq!(code, 0);
    // Named once, as the master gives up on the worker.
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(named[0].contains("still serving POST /stuck "), "{named:?}");
    assert_eq!(aborts.len(), 1, "{aborts:?}");
    assert!(
        aborts[0].contains("still serving POST /stuck ") && aborts[0].contains("after its timeout"),
        "{aborts:?}"
    );
    assert_eq!(exits.borrow().first(), Some(&ExitCause::Timeout));
}

fn a_silent_worker_is_aborted_and_the_log_names_its_request() {
    let log = log_to_file("silent");
    let mut arbiter = Arbiter::new(
        timeout_config(1),
        MasterSignals::install().unwrap(),
        NoHooks,
    )
    .unwrap();
    let code = arbiter
        .run(&mut |ctx| {
            // SAFETY: alarm only arms a timer for this process.
            unsafe { libc::alarm(PATIENCE_SECS) };
            if ctx.age > 1 {
                // SAFETY: kill signals our master.
                unsafe { libc::kill(libc::getppid(), libc::SIGTERM) };
                return 0;
            }
            ctx.slot.beat();
            ctx.slot.request_started(0, "GET", "/hung");
            // Hung as a whole: no more beats.
            std::thread::sleep(Duration::from_secs(u64::from(PATIENCE_SECS)));
            0
        })
        .code();
    let named = log_lines(&log, "WORKER TIMEOUT");
    let aborts = log_lines(&log, "sending SIGABRT");
    let _ = std::fs::remove_file(&log);
    assert_eq!(code, 0);
    assert_eq!(named.len(), 1, "named once: {named:?}");
    assert!(named[0].contains("serving GET /hung for "), "{named:?}");
    assert_eq!(aborts.len(), 1, "{aborts:?}");
    assert!(
        aborts[0].contains("WORKER TIMEOUT (pid:") && aborts[0].contains(") silent for "),
        "{aborts:?}"
    );
    assert!(aborts[0].contains("(serving GET /hung for "), "{aborts:?}");
}

fn a_silent_worker_serving_nothing_is_aborted_with_gunicorns_words() {
    let log = log_to_file("silent-idle");
    let mut arbiter = Arbiter::new(
        timeout_config(1),
        MasterSignals::install().unwrap(),
        NoHooks,
    )
    .unwrap();
    let code = arbiter
        .run(&mut |ctx| {
            // SAFETY: alarm only arms a timer for this process.
            unsafe { libc::alarm(PATIENCE_SECS) };
            if ctx.age > 1 {
                // SAFETY: kill signals our master.
                unsafe { libc::kill(libc::getppid(), libc::SIGTERM) };
                return 0;
            }
            ctx.slot.beat();
            std::thread::sleep(Duration::from_secs(u64::from(PATIENCE_SECS)));
            0
        })
        .code();
    let aborts = log_lines(&log, "sending SIGABRT");
    let _ = std::fs::remove_file(&log);
    assert_eq!(code, 0);
    assert_eq!(aborts.len(), 1, "{aborts:?}");
    assert!(
        aborts[0].contains("WORKER TIMEOUT (pid:")
            && aborts[0].contains(") silent for ")
            && aborts[0].contains("(not serving a request)"),
        "{aborts:?}"
    );
}

/// One case of this harness: like libtest's, a case with an `ignore` reason runs only under
/// `--ignored` (`cargo xtask ci` as root runs those and counts them against these markers).
struct Case {
    name: &'static str,
    run: fn(),
    ignore: Option<&'static str>,
}

fn main() {
    let cases = [
        Case {
            name: "term_then_quit_in_one_batch_is_a_quick_stop",
            run: term_then_quit_in_one_batch_is_a_quick_stop,
            ignore: None,
        },
        Case {
            name: "a_failing_fork_is_retried_after_a_back_off_not_fatal",
            run: a_failing_fork_is_retried_after_a_back_off_not_fatal,
            ignore: Some("needs root: setuid to nobody"),
        },
        Case {
            name: "a_reload_whose_workers_cannot_load_the_app_keeps_the_old_worker",
            run: a_reload_whose_workers_cannot_load_the_app_keeps_the_old_worker,
            ignore: None,
        },
        Case {
            name: "a_load_failure_at_first_start_stops_the_server",
            run: a_load_failure_at_first_start_stops_the_server,
            ignore: None,
        },
        Case {
            name: "a_hook_descriptor_is_served_from_the_loop_with_the_workers_status",
            run: a_hook_descriptor_is_served_from_the_loop_with_the_workers_status,
            ignore: None,
        },
        Case {
            name: "a_request_past_the_timeout_counts_as_a_timeout_and_a_beating_worker_is_not_signalled",
            run: a_request_past_the_timeout_counts_as_a_timeout_and_a_beating_worker_is_not_signalled,
            ignore: None,
        },
        Case {
            name: "a_request_stuck_well_past_the_timeout_aborts_the_worker_though_it_beats",
            run: a_request_stuck_well_past_the_timeout_aborts_the_worker_though_it_beats,
            ignore: None,
        },
        Case {
            name: "a_silent_worker_is_aborted_and_the_log_names_its_request",
            run: a_silent_worker_is_aborted_and_the_log_names_its_request,
            ignore: None,
        },
        Case {
            name: "a_silent_worker_serving_nothing_is_aborted_with_gunicorns_words",
            run: a_silent_worker_serving_nothing_is_aborted_with_gunicorns_words,
            ignore: None,
        },
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ignored_only = args.iter().any(|a| a == "--ignored");
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for case in cases {
        if !filter.is_empty() && !filter.iter().any(|f| case.name.contains(f.as_str())) {
            continue;
        }
        if case.ignore.is_some() != ignored_only {
            let reason = case.ignore.map(|r| format!(", {r}")).unwrap_or_default();
            println!("test {} ... ignored{reason}", case.name);
            ignored += 1;
            continue;
        }
        let ok = run_forked(case.run);
        println!(
            "test {} ... {}",
            case.name,
            if ok { "ok" } else { "FAILED" }
        );
        passed += usize::from(ok);
        failed += usize::from(!ok);
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {verdict}. {passed} passed; {failed} failed; {ignored} ignored");
    std::process::exit(i32::from(failed > 0));
}

/// Run `case` in a forked child; whether it passed.
fn run_forked(case: fn()) -> bool {
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
    if !ok {
        println!("case process ended with status {status:#x}");
    }
    ok
}
