//! An app thread: take a request whose head the I/O thread read, call the app, write the response,
//! give the connection back.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Instant, SystemTime};

use ferrocorn_http::{error_head_response, error_response, RequestHead};
use ferrocorn_listener::PeerAddr;

use crate::pool::{After, Connection, Job, Pool, Returned};
use crate::request::{BodyState, Conn};
use crate::response::Sent;
use crate::sock::{Linger, ReadBuf, Sock};
use crate::{
    App, AppError, Completed, Control, Monitor, Request, Response, ServerAddr, WorkerConfig,
    WorkerState,
};

/// Most unread request body the worker reads and discards to keep a connection alive.
const DRAIN_BUDGET: u64 = 64 * 1024;

/// Largest write buffer kept between responses.
const WBUF_KEEP: usize = 64 * 1024;

pub(crate) struct AppThread<'r> {
    pub(crate) index: usize,
    pub(crate) app: &'r mut (dyn App + Send),
    pub(crate) pool: &'r Pool,
    pub(crate) config: &'r WorkerConfig,
    pub(crate) monitor: &'r dyn Monitor,
    pub(crate) control: &'r dyn Control,
    pub(crate) servers: &'r [ServerAddr],
}

/// How one request went, for the connection and the record.
struct Served {
    after: After,
    sent: Sent,
    aborted: bool,
}

impl AppThread<'_> {
    /// Before the first request, on the thread that will serve: the app's own preparations,
    /// and how to interrupt it.
    pub(crate) fn start(&mut self) {
        let interrupter = self.app.interrupter();
        let _ = self.pool.lanes[self.index].interrupter.set(interrupter);
    }

    /// Serve jobs until the pool closes.
    pub(crate) fn run(mut self) {
        self.start();
        let mut wbuf = Vec::new();
        let mut previous = None;
        while let Some(job) = self.pool.next_job(previous.take()) {
            previous = Some(self.serve_job(job, &mut wbuf));
            self.trim(&mut wbuf);
        }
    }

    /// One big streamed response should not pin its buffer for the thread's lifetime.
    pub(crate) fn trim(&self, wbuf: &mut Vec<u8>) {
        if wbuf.capacity() > WBUF_KEEP {
            *wbuf = Vec::new();
        }
    }

    pub(crate) fn serve_job(&mut self, job: Job, wbuf: &mut Vec<u8>) -> Returned {
        let Job { conn, head, last } = job;
        let Connection {
            stream,
            peer,
            listener,
            mut rbuf,
            token,
            nodelay,
            watched,
            quiet,
        } = conn;
        let lane = &self.pool.lanes[self.index];
        lane.begin(&head, stream.as_raw_fd());
        let monitor = self.monitor;
        let beat = || monitor.beat();
        let conn = Conn {
            sock: Sock::adopt(stream, nodelay, lane, self.config.output_buffer, &beat),
            io_timeout: self.config.io_timeout,
            head_sent: Cell::new(false),
            awaiting_continue: Cell::new(false),
            body_failed: Cell::new(false),
        };
        self.monitor.request_started(self.index, &head);
        let (started_at, clock) = (SystemTime::now(), Instant::now());
        let server = &self.servers[listener];
        let served = self.serve_request(&conn, &head, &peer, server, &mut rbuf, wbuf, last);
        let abandoned = lane
            .abandoned
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        if !abandoned {
            let took = (started_at, clock.elapsed());
            self.report(&head, &peer, &served.sent, took);
        }
        lane.end();
        let (stream, out, nodelay) = conn
            .sock
            .into_parts()
            .expect("the I/O loop's connections are sockets");
        Returned {
            conn: Connection {
                stream,
                peer,
                listener,
                rbuf,
                token,
                nodelay,
                watched,
                quiet,
            },
            out,
            // The I/O thread answered an abandoned request and shut its socket down.
            after: if abandoned {
                After::Close(Linger::No)
            } else {
                served.after
            },
            aborted: served.aborted,
            abandoned,
        }
    }

    /// Tell the monitor the request is over (the access log's line, the metrics).
    fn report(
        &self,
        head: &RequestHead,
        peer: &PeerAddr,
        sent: &Sent,
        (started_at, duration): (SystemTime, std::time::Duration),
    ) {
        self.monitor.request_finished(
            self.index,
            &Completed {
                head,
                peer,
                status: sent.status,
                response_headers: &sent.headers,
                body_bytes: sent.body_bytes,
                thread: self.index,
                started_at,
                duration,
                app: &*self.app,
            },
        );
    }

    /// Call the app for one request and complete the response.
    #[allow(clippy::too_many_arguments)]
    fn serve_request(
        &mut self,
        conn: &Conn<'_>,
        head: &RequestHead,
        peer: &PeerAddr,
        server: &ServerAddr,
        rbuf: &mut ReadBuf,
        wbuf: &mut Vec<u8>,
        last: bool,
    ) -> Served {
        let mut body = BodyState::new(head, &self.config.limits);
        conn.awaiting_continue
            .set(head.expects_continue() && !body.is_done());
        let (pool, control) = (self.pool, self.control);
        // Asked as late as the head leaves: a stop that came meanwhile makes it the last.
        let closing = || pool.is_closing() || control.state() != WorkerState::Running;
        // With no keep-alive time a persistent connection would be closed at once anyway: say so.
        let keep_alive = head.keep_alive() && !last && !self.config.keepalive.is_zero();
        let mut res = Response::new(
            conn,
            wbuf,
            head.version(),
            head.method() == "HEAD",
            keep_alive,
            &closing,
            &self.config.server_header,
        );
        let result = {
            let mut req = Request {
                head,
                peer,
                server,
                conn,
                rbuf,
                body: &mut body,
            };
            call_app(&mut *self.app, &mut req, &mut res)
        };
        let result = result.and_then(|()| res.finish());
        let persists = matches!(result, Ok(true)) && res.persists() && !last;
        let head_sent = res.head_sent();
        let sent = res.take_sent();
        drop(res);
        let linger = Linger::when(body.unread_may_follow() || !rbuf.is_empty());
        match result {
            Ok(_) if persists => Served {
                after: drain_for_next_request(conn, &mut body, rbuf),
                sent,
                aborted: false,
            },
            Ok(_) => Served {
                after: After::Close(linger),
                sent,
                aborted: false,
            },
            Err(err) => after_app_error(conn, head, &body, err, head_sent, sent, linger),
        }
    }
}

/// What an app error leaves: the error logged, answered if nothing was sent yet, the
/// connection closed.
fn after_app_error(
    conn: &Conn<'_>,
    head: &RequestHead,
    body: &BodyState,
    err: AppError,
    head_sent: bool,
    sent: Sent,
    linger: Linger,
) -> Served {
    log_app_error(head, &err, body);
    let aborted = matches!(err, AppError::Aborted(_));
    let sent = if head_sent {
        sent
    } else {
        answer_app_error(conn, head, body, &err).unwrap_or(sent)
    };
    Served {
        after: After::Close(linger),
        sent,
        aborted,
    }
}

/// Read and discard what the app left of the request body so the next request can be read; a
/// body too big to drain within the budget ends the connection instead.
fn drain_for_next_request(conn: &Conn<'_>, body: &mut BodyState, rbuf: &mut ReadBuf) -> After {
    if body.drain(conn, rbuf, DRAIN_BUDGET) {
        After::KeepAlive
    } else {
        After::Close(Linger::Full)
    }
}

/// Answer an app error that came before any of the response was sent (the connection closes
/// after it). Returns what was sent, or `None` when the client vanished or stalled.
fn answer_app_error(
    conn: &Conn<'_>,
    head: &RequestHead,
    body: &BodyState,
    err: &AppError,
) -> Option<Sent> {
    // A response to HEAD never has a body, errors included.
    let head_request = head.method() == "HEAD";
    let bytes = match (&body.http_error, err) {
        (Some(e), _) if head_request => e.head_response(),
        (Some(e), _) => e.response(),
        (None, AppError::Io(_)) if body.io_failed => return None,
        _ if head_request => error_head_response(500),
        _ => error_response(500),
    };
    if let Err(e) = conn.sock.write_all(&bytes, conn.io_timeout, false) {
        log::debug!("sending an error response failed: {e}");
        return None;
    }
    Some(error_sent(&bytes))
}

/// What an error response of the worker's own sent (`HTTP/1.1 NNN ...`).
pub(crate) fn error_sent(response: &[u8]) -> Sent {
    let status = response
        .get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok());
    Sent {
        status,
        headers: Vec::new(),
        body_bytes: ferrocorn_http::serialized_body_len(response),
    }
}

fn log_app_error(head: &RequestHead, err: &AppError, body: &BodyState) {
    match err {
        AppError::Io(e) if body.http_error.is_some() || body.io_failed => {
            log::debug!(
                "reading the body of {} {}: {e}",
                head.method(),
                head.target()
            );
        }
        AppError::Io(e) => log::info!(
            "connection error during {} {}: {e}",
            head.method(),
            head.target()
        ),
        // The app logged it already (a Python traceback, say): once is enough.
        AppError::Failed(_) => log::debug!("Error handling request {}: {err}", head.target()),
        AppError::BadResponse(_) => log::error!("Error handling request {}: {err}", head.target()),
        AppError::Aborted(_) => log::error!(
            "Request {} {} aborted after the worker timed out; the worker exits",
            head.method(),
            head.target()
        ),
    }
}

/// Call the app; a panic becomes an error the caller answers (the worker lives on).
fn call_app(
    app: &mut dyn App,
    req: &mut Request<'_>,
    res: &mut Response<'_>,
) -> Result<(), AppError> {
    catch_unwind(AssertUnwindSafe(|| app.call(req, res))).unwrap_or_else(|panic| {
        // Nobody logged this one (the panic message went to stderr only).
        let msg = panic_message(&panic);
        log::error!("Error handling request {}: {msg}", req.head.target());
        Err(AppError::Failed(msg))
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string());
    format!("the application panicked: {msg}")
}
