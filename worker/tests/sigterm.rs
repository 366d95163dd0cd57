//! The real signal path: `run` with the process's `WorkerSignals`, stopped by a real SIGTERM.
//! Alone in its own test binary (process), since signal handlers are process-wide.

mod common;

use std::time::Duration;

use common::{config, tcp_listener, Client};
use ferrocorn_signals::{MasterSignals, WorkerSignals};
use ferrocorn_worker::{run, Exit, WorkerState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn sigterm_finishes_the_request_in_hand_then_run_returns() {
    let signals = WorkerSignals::install_replacing(MasterSignals::install().unwrap()).unwrap();
    let (listener, addr) = tcp_listener();
    let (app, entered, release) = common::gated_app();
    let cfg = config();
    std::thread::scope(|s| {
        let signals = &signals;
        let client = s.spawn(move || {
            let mut c = Client::connect(addr);
            c.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody");
            entered.recv().unwrap();
            kill(Pid::this(), Signal::SIGTERM).unwrap();
            // The handler may run on another thread: wait until it has recorded the signal.
            while signals.state() != WorkerState::Stopping {
                assert!(
                    signals.wait_wake(Duration::from_secs(10)),
                    "SIGTERM was not handled"
                );
            }
            release.send(()).unwrap();
            let r = c.read_response();
            assert_eq!(r.text(), "finished body");
            assert_eq!(r.header("Connection"), Some("close"));
            assert!(c.at_eof());
        });
        let exit = run(&mut common::apps(app), &[listener], &cfg, signals, &|| {}).unwrap();
        assert_eq!(exit, Exit::Stopped);
        client.join().unwrap();
    });
}
