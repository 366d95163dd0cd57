//! Out of file descriptors: accept fails with EMFILE; the worker reports it and keeps going, and
//! serves the waiting client once descriptors are free again. Alone in its own test binary
//! (process), since the descriptor limit is process-wide.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use common::{config, Server};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Collects error-level log lines and lets the test wait for one.
struct Capture {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

static CAPTURE: Capture = Capture {
    lines: Mutex::new(Vec::new()),
    changed: Condvar::new(),
};

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Error
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            self.lines.lock().unwrap().push(r.args().to_string());
            self.changed.notify_all();
        }
    }
    fn flush(&self) {}
}

#[test]
fn emfile_on_accept_is_reported_and_survived() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Error);
    let (app, entered, release) = common::gated_app();
    let server = Server::start(app, config());
    let mut busy = server.connect();
    busy.send(b"GET /busy HTTP/1.1\r\nHost: t\r\n\r\n");
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    // The worker's only app thread is busy: it accepts no one until the thread is free.
    let mut client = server.connect();
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    // The lowest free descriptor is the one accept would need: allow none from there on.
    let next_fd = File::open("/dev/null").unwrap().as_raw_fd() as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, next_fd, hard).unwrap();
    release.send(()).unwrap();
    assert_eq!(busy.read_response().status, 200);

    let lines = CAPTURE.lines.lock().unwrap();
    let (lines, timeout) = CAPTURE
        .changed
        .wait_timeout_while(lines, Duration::from_secs(30), |l| {
            !l.iter()
                .any(|l| l.contains("accept on") && l.contains("Too many open files"))
        })
        .unwrap();
    assert!(!timeout.timed_out(), "no accept error logged: {lines:?}");
    drop(lines);

    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    release.send(()).unwrap();
    let r = client.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "finished "));
}
