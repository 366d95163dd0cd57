//! The arbiter's loop with real forks and real signals, without HTTP or Python.
//!
//! `harness = false`: every case runs in a process forked from this single-threaded main, and
//! SIGALRM ends a case that hangs (its default action kills the process, which fails the case).

use std::time::Duration;

use ferrocorn_arbiter::{Arbiter, ArbiterConfig, ForkHooks};
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
    let mut arbiter = Arbiter::new(config, signals, ForkHooks::default()).unwrap();
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
        .unwrap();
    assert_eq!(code, 0);
    assert!(arbiter.worker_pids().is_empty());
}

fn main() {
    let cases: [(&str, fn()); 1] = [(
        "term_then_quit_in_one_batch_is_a_quick_stop",
        term_then_quit_in_one_batch_is_a_quick_stop,
    )];
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
