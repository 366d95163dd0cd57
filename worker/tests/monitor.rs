//! What the worker tells its [`Monitor`] (the arbiter's scoreboard in ferrocorn), and how it ends
//! a request the app reports as aborted after a worker timeout.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{config, tcp_listener, Client, TestControl};
use ferrocorn_worker::{fn_app, run_with, AppError, Exit, Monitor, RequestHead};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Started(String),
    Finished,
}

/// Records request events (beats are many and not asserted here).
struct Recorder(mpsc::Sender<Event>);

impl Monitor for Recorder {
    fn beat(&mut self) {}
    fn request_started(&mut self, head: &RequestHead) {
        let _ = self.0.send(Event::Started(format!(
            "{} {}",
            head.method(),
            head.target()
        )));
    }
    fn request_finished(&mut self) {
        let _ = self.0.send(Event::Finished);
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
        let mut app = fn_app(|req, res| {
            if req.head.path() == "/stuck" {
                return Err(AppError::Aborted("timed out".into()));
            }
            res.start(200, "OK", vec![(b"Content-Length".to_vec(), b"2".to_vec())])?;
            res.write(b"ok")
        });
        let mut monitor = Recorder(tx);
        run_with(&mut app, &[listener], &config(), &*c, &mut monitor)
    });
    let mut client = Client::connect(addr);
    client.send(b"GET /fine?a=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
    assert_eq!(next(&events), Event::Started("GET /fine?a=1".into()));
    assert_eq!(next(&events), Event::Finished);

    client.send(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status, 500);
    assert_eq!(resp.header("Connection"), Some("close"));
    assert!(client.at_eof());
    assert_eq!(next(&events), Event::Started("GET /stuck".into()));
    assert_eq!(next(&events), Event::Finished);
    // The worker leaves its loop by itself: the arbiter is replacing it.
    assert_eq!(worker.join().unwrap().unwrap(), Exit::Aborted);
}
