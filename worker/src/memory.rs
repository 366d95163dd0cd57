//! A connection in memory: the real [`Request`] and [`Response`] without a socket or a worker
//! loop, for unit tests of apps and adapters.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use ferrocorn_http::{
    BodyDecoder, BodyFraming, HeadParser, Limits, Parsed, RequestError, RequestHead,
};
use ferrocorn_listener::PeerAddr;

use crate::request::{BodyState, Conn};
use crate::sock::{ReadBuf, Sock};
use crate::{AppError, Headers, Request, Response, ServerAddr};

/// What an app did with a [`Response`] in memory, and the bytes that went out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Every successful [`Response::start`]: status, reason, headers.
    pub starts: Vec<(u16, String, Headers)>,
    /// [`Response::write`] calls.
    pub writes: usize,
    /// [`Response::sendfile`] calls: offset and length.
    pub sendfiles: Vec<(u64, Option<u64>)>,
    /// The response as sent on the wire, head and framed body.
    pub wire: Vec<u8>,
}

impl Recorded {
    /// The status of the head sent, if one was.
    pub fn status(&self) -> Option<u16> {
        self.parse_head().map(|head| head.status)
    }

    /// A header of the head sent (as sent, so the server's own fields are there too).
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.parse_head()?
            .headers
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The body sent, without its framing (as much as arrived, if it was cut short).
    pub fn body(&self) -> Vec<u8> {
        let Some(head) = self.parse_head() else {
            return Vec::new();
        };
        let rest = &self.wire[head.len..];
        let has = |name: &str, value: &str| {
            head.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case(name) && v.eq_ignore_ascii_case(value.as_bytes())
            })
        };
        if !has("transfer-encoding", "chunked") {
            return rest.to_vec();
        }
        let mut out = Vec::new();
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, &Limits::default());
        // A stream cut short keeps what was decoded before the cut.
        let _ = decoder.decode(rest, &mut out);
        out
    }

    fn parse_head(&self) -> Option<SentHead> {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(len) = head.parse(&self.wire).ok()? else {
            return None;
        };
        let headers = head
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect();
        Some(SentHead {
            status: head.code?,
            headers,
            len,
        })
    }
}

/// The head at the start of [`Recorded::wire`].
struct SentHead {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    /// Its length in bytes (the body follows).
    len: usize,
}

fn no_heartbeat() {}

/// One request in memory: parsed from the bytes a client would send, served by the real
/// [`Request`] and [`Response`], the response recorded instead of sent.
///
/// ```
/// use ferrocorn_worker::MemoryConn;
/// let mut conn = MemoryConn::new(b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
/// conn.serve(|req, res| res.text(200, format!("{}\n", req.head.path()))).unwrap();
/// assert_eq!(conn.recorded().status(), Some(200));
/// assert_eq!(conn.recorded().body(), b"/hi\n");
/// ```
#[derive(Debug)]
pub struct MemoryConn {
    head: RequestHead,
    peer: PeerAddr,
    server: ServerAddr,
    conn: Conn<'static>,
    rbuf: ReadBuf,
    body: BodyState,
    wbuf: Vec<u8>,
}

impl MemoryConn {
    /// `raw` is what the client sends: a request head, then its body (the client then closes).
    pub fn new(raw: &[u8]) -> Result<MemoryConn, RequestError> {
        MemoryConn::with_limits(raw, &Limits::default())
    }

    /// [`MemoryConn::new`] with these size limits instead of the defaults.
    pub fn with_limits(raw: &[u8], limits: &Limits) -> Result<MemoryConn, RequestError> {
        let (head, used) = match HeadParser::new().parse(raw, limits)? {
            Parsed::Complete(head, used) => (head, used),
            Parsed::Partial => return Err(RequestError::BadRequest("incomplete request head")),
        };
        let body = BodyState::new(&head, limits);
        Ok(MemoryConn {
            head,
            peer: PeerAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 40000))),
            server: ServerAddr {
                name: "localhost".to_string(),
                port: "8000".to_string(),
                scheme: "http",
            },
            conn: Conn {
                sock: Sock::memory(raw[used..].to_vec(), &no_heartbeat),
                io_timeout: Duration::from_secs(30),
                head_sent: Cell::new(false),
                awaiting_continue: Cell::new(false),
                body_failed: Cell::new(false),
            },
            rbuf: ReadBuf::new(),
            body,
            wbuf: Vec::new(),
        })
    }

    /// Pretend the client is `peer` (default `127.0.0.1:40000`).
    pub fn with_peer(mut self, peer: PeerAddr) -> MemoryConn {
        self.peer = peer;
        self
    }

    /// Pretend the request arrived at `server` (default `localhost`, port 8000, `http`).
    pub fn with_server(mut self, server: ServerAddr) -> MemoryConn {
        self.server = server;
        self
    }

    /// Let `n` sends through, then fail every later one as a client that went away does.
    pub fn fail_writes_after(self, n: usize) -> MemoryConn {
        if let Some(m) = self.conn.sock.memory_io() {
            m.borrow_mut().fail_after = Some(n);
        }
        self
    }

    /// Run `app` with this connection's request and response, then end the response as the
    /// worker does (sending the head if nothing was written). The app's error is returned as is;
    /// no error response is written for it.
    pub fn serve<F>(&mut self, app: F) -> Result<(), AppError>
    where
        F: FnOnce(&mut Request<'_>, &mut Response<'_>) -> Result<(), AppError>,
    {
        let keep_alive = self.head.keep_alive();
        let never = || false;
        let mut res = Response::new(
            &self.conn,
            &mut self.wbuf,
            self.head.version(),
            self.head.method() == "HEAD",
            keep_alive,
            &never,
            "",
        );
        let mut req = Request {
            head: &self.head,
            peer: &self.peer,
            server: &self.server,
            conn: &self.conn,
            rbuf: &mut self.rbuf,
            body: &mut self.body,
        };
        app(&mut req, &mut res)?;
        res.finish().map(drop)
    }

    /// What the app did and what went out so far.
    pub fn recorded(&self) -> Recorded {
        self.conn
            .sock
            .memory_io()
            .map(|m| m.borrow().recorded())
            .unwrap_or_default()
    }
}
