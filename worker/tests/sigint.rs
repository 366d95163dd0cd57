//! The real signal path for a quick stop: SIGINT ends an idle keep-alive wait and `run` at once.
//! Alone in its own test binary (process), since signal handlers are process-wide.

mod common;

use std::time::Duration;

use common::{config, tcp_listener, Client};
use ferrocorn_signals::{MasterSignals, WorkerSignals};
use ferrocorn_worker::{fn_app, run, Exit};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn sigint_closes_an_idle_connection_and_run_returns() {
    let signals = WorkerSignals::install_replacing(MasterSignals::install().unwrap()).unwrap();
    let (listener, addr) = tcp_listener();
    let app = fn_app(|_req, res| {
        res.start(200, "OK", vec![(b"Content-Length".to_vec(), b"2".to_vec())])?;
        res.write(b"ok")
    });
    let mut cfg = config();
    // Far past the client's read timeout: only the signal can end the idle wait in time.
    cfg.keepalive = Duration::from_secs(300);
    std::thread::scope(|s| {
        let client = s.spawn(move || {
            let mut c = Client::connect(addr);
            let r = c.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(r.header("Connection"), Some("keep-alive"));
            kill(Pid::this(), Signal::SIGINT).unwrap();
            assert!(c.at_eof());
        });
        let exit = run(&mut common::apps(app), &[listener], &cfg, &signals, &|| {}).unwrap();
        assert_eq!(exit, Exit::Stopped);
        client.join().unwrap();
    });
}
