//! What the worker tells its [`Monitor`] (the arbiter's scoreboard in ferrocorn), and how it ends
//! a request the app reports as aborted after a worker timeout.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{config, gated_app, tcp_listener, Client, TestControl};
use ferrocorn_testkit::{accept_queue_len, Resp};
use ferrocorn_worker::{
    fn_app, run_with, AppError, Completed, Exit, Monitor, RequestHead, WorkerState,
};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Started(String),
    /// Status, body bytes and the app's response headers, as the access log gets them.
    Finished(Option<u16>, u64, Vec<String>),
}

/// Records request events (beats are many and not asserted here).
struct Recorder(mpsc::Sender<Event>);

impl Monitor for Recorder {
    fn beat(&self) {}
    fn request_started(&self, _thread: usize, head: &RequestHead) {
        let _ = self.0.send(Event::Started(format!(
            "{} {}",
            head.method(),
            head.target()
        )));
    }
    fn request_finished(&self, _thread: usize, done: &Completed<'_>) {
        let headers = done
            .response_headers
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        let _ = self
            .0
            .send(Event::Finished(done.status, done.body_bytes, headers));
    }
}

fn next(events: &mpsc::Receiver<Event>) -> Event {
    events
        .recv_timeout(Duration::from_secs(10))
        .expect("no monitor event")
}

#[test]
fn each_request_is_reported_started_then_finished_and_an_aborted_one_ends_the_loop() {
    let (listener, addr) = tcp_listener();
    let control = Arc::new(TestControl::new());
    let c = Arc::clone(&control);
    let (tx, events) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let app = fn_app(|req, res| {
            if req.head.path() == "/stuck" {
                return Err(AppError::Aborted("timed out".into()));
            }
            res.start(200, "OK", vec![(b"Content-Length".to_vec(), b"2".to_vec())])?;
            res.write(b"ok")
        });
        let monitor = Recorder(tx);
        run_with(
            &mut common::apps(app),
            &[listener],
            &config(),
            &*c,
            &monitor,
        )
    });
    let mut client = Client::connect(addr);
    client.send(b"GET /fine?a=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
    assert_eq!(next(&events), Event::Started("GET /fine?a=1".into()));
    assert_eq!(
        next(&events),
        Event::Finished(Some(200), 2, vec!["Content-Length: 2".into()])
    );

    client.send(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status, 500);
    assert_eq!(resp.header("Connection"), Some("close"));
    assert!(client.at_eof());
    assert_eq!(next(&events), Event::Started("GET /stuck".into()));
    // The worker's own 500 page: its status and body size.
    match next(&events) {
        Event::Finished(Some(500), bytes, headers) if bytes > 0 && headers.is_empty() => {}
        other => panic!("{other:?}"),
    }
    // The worker leaves its loop by itself: the arbiter is replacing it.
    assert_eq!(worker.join().unwrap().unwrap(), Exit::Aborted);
}

/// Says whether the whole server is stopping (the flag the arbiter sets in ferrocorn).
struct ServerStopping(bool);

impl Monitor for ServerStopping {
    fn beat(&self) {}
    fn drain_on_stop(&self) -> bool {
        self.0
    }
}

/// One request in hand, three clients with their requests queued on the listener, then a
/// graceful stop. Returns what each queued client read (`Err` when it got no response) and how
/// the loop ended.
fn stop_with_a_queue(drain: bool) -> (Vec<std::io::Result<Resp>>, Exit) {
    let (listener, addr) = tcp_listener();
    let control = Arc::new(TestControl::new());
    let c = Arc::clone(&control);
    let (app, entered, release) = gated_app();
    let worker = std::thread::spawn(move || {
        let monitor = ServerStopping(drain);
        run_with(
            &mut common::apps(app),
            &[listener],
            &config(),
            &*c,
            &monitor,
        )
    });
    let mut busy = Client::connect(addr);
    busy.send(b"GET /busy HTTP/1.1\r\nHost: t\r\n\r\n");
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut queued: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    for client in &mut queued {
        client.send(b"GET /queued HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    ferrocorn_testkit::wait_for("clients queued", Duration::from_secs(10), || {
        (accept_queue_len(addr) == Some(3)).then_some(())
    });
    control.set(WorkerState::Stopping);
    // One for each call; a worker that exits after the first drops the app and the others fail.
    for _ in 0..4 {
        let _ = release.send(());
    }
    let first = busy.read_response();
    assert_eq!(
        (first.status, first.header("Connection")),
        (200, Some("close"))
    );
    let exit = worker.join().unwrap().unwrap();
    let read = queued
        .iter_mut()
        .map(|c| c.read_response_for(false))
        .collect();
    (read, exit)
}

#[test]
fn a_stop_of_the_whole_server_serves_every_queued_connection_first() {
    let (read, exit) = stop_with_a_queue(true);
    for resp in read {
        let resp = resp.expect("a queued client got its response");
        assert_eq!(resp.text(), "finished ");
        assert_eq!(resp.header("Connection"), Some("close"));
    }
    assert_eq!(exit, Exit::Stopped);
}

#[test]
fn a_retired_worker_leaves_the_queue_to_the_others() {
    let (read, exit) = stop_with_a_queue(false);
    assert!(read.iter().all(|r| r.is_err()), "{read:?}");
    assert_eq!(exit, Exit::Stopped);
}
