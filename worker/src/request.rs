//! The request as the app sees it, and on-demand reading of its body.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use ferrocorn_http::{BodyDecoder, Limits, RequestHead};
use ferrocorn_listener::PeerAddr;

use crate::sock::{ReadBuf, Sock, READ_CHUNK};
use crate::ServerAddr;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The slowest a client may send a request body, on average over the time the worker spends
/// waiting for it (on top of one I/O timeout of grace). The per-read timeout alone lets a client
/// hold a worker for the I/O timeout times the body's length by sending a byte just before each
/// read would time out; with this floor, a body that trickles in is cut off after about one I/O
/// timeout, while a slow but real upload (anything above this rate) is unaffected. The time the
/// app itself spends between reads is not counted.
const MIN_BODY_RATE: u64 = 1024;

/// Most bytes a chunked body's framing (size lines, extensions, trailers) may need buffered at
/// once before the decoder makes progress; the decoder enforces its own limits well below this.
const MAX_BODY_BUFFER: usize = 4 * READ_CHUNK;

/// What one connection's request and response share.
#[derive(Debug)]
pub(crate) struct Conn<'b> {
    pub(crate) sock: Sock<'b>,
    pub(crate) io_timeout: Duration,
    /// The final response head is on the wire: no `100 Continue` may follow it.
    pub(crate) head_sent: Cell<bool>,
    /// The client sent `Expect: 100-continue` and has had no `100 Continue`: until it does, we cannot
    /// know whether the body will come, so a response sent now must close the connection.
    pub(crate) awaiting_continue: Cell<bool>,
    /// Reading this request's body failed (malformed, too large, cut short, too slow): the
    /// connection is closed after the response, so the response must say so.
    pub(crate) body_failed: Cell<bool>,
}

/// The body's framing, decoded by `ferrocorn-http`, and the decoded bytes not yet handed out.
#[derive(Debug)]
struct Framing {
    decoder: BodyDecoder,
    /// Decoded bytes of a chunked body (a Content-Length body is read straight into the app's
    /// buffer instead) and how far the app has taken them.
    decoded: Vec<u8>,
    pos: usize,
}

impl Framing {
    /// Hand out decoded bytes the app has not taken yet; `None` when there are none.
    fn take_decoded(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.pos >= self.decoded.len() {
            return None;
        }
        let n = buf.len().min(self.decoded.len() - self.pos);
        buf[..n].copy_from_slice(&self.decoded[self.pos..self.pos + n]);
        self.pos += n;
        Some(n)
    }
}

/// How long the worker has waited for body bytes, against what their number allows.
#[derive(Debug, Default)]
struct Pace {
    waited: Duration,
    received: u64,
}

impl Pace {
    /// The deadline for the next wait: one I/O timeout, or less once the waits so far have used
    /// up what the bytes received allow at [`MIN_BODY_RATE`].
    fn deadline(&self, io_timeout: Duration) -> io::Result<Instant> {
        let earned = Duration::from_secs_f64(self.received as f64 / MIN_BODY_RATE as f64);
        let left = io_timeout
            .saturating_add(earned)
            .saturating_sub(self.waited);
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the request body arrives slower than {MIN_BODY_RATE} bytes per second"),
            ));
        }
        Ok(Instant::now() + left.min(io_timeout))
    }

    /// Account for one read that began at `start` and returned `n` bytes.
    fn record(&mut self, start: Instant, n: usize) {
        self.waited += start.elapsed();
        self.received += n as u64;
    }
}

/// Progress through one request body; owned by the connection loop so it can drain what the app
/// left unread.
#[derive(Debug)]
pub(crate) struct BodyState {
    framing: Framing,
    pace: Pace,
    expects_continue: bool,
    continue_sent: bool,
    /// The client sent a malformed or too large body; the response status to use.
    pub(crate) http_error: Option<ferrocorn_http::RequestError>,
    /// Reading failed (EOF, timeout, reset): the connection cannot be reused.
    pub(crate) io_failed: bool,
}

impl BodyState {
    pub(crate) fn new(head: &RequestHead, limits: &Limits) -> BodyState {
        let framing = Framing {
            decoder: BodyDecoder::new(head.framing(), limits),
            decoded: Vec::new(),
            pos: 0,
        };
        BodyState {
            framing,
            pace: Pace::default(),
            expects_continue: head.expects_continue(),
            continue_sent: false,
            http_error: None,
            io_failed: false,
        }
    }

    /// All body bytes have been received (not necessarily handed to the app).
    pub(crate) fn is_done(&self) -> bool {
        self.framing.decoder.is_done()
    }

    fn failed(&self) -> Option<io::Error> {
        if let Some(e) = &self.http_error {
            return Some(io::Error::new(io::ErrorKind::InvalidData, e.clone()));
        }
        if self.io_failed {
            return Some(io::Error::other("the request body could not be read"));
        }
        None
    }

    /// Read body bytes into `buf`, sending `100 Continue` first when the client waits for it.
    fn read(&mut self, conn: &Conn<'_>, rbuf: &mut ReadBuf, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if buf.is_empty() || (self.is_done() && self.buffered_decoded() == 0) {
            return Ok(0);
        }
        if self.expects_continue && !self.continue_sent && !conn.head_sent.get() {
            self.continue_sent = true;
            conn.awaiting_continue.set(false);
            if let Err(e) = conn.sock.write_all(CONTINUE, conn.io_timeout, false) {
                self.io_failed = true;
                return Err(e);
            }
        }
        let result = self.read_inner(conn, rbuf, buf);
        if let Err(e) = &result {
            if e.kind() == io::ErrorKind::InvalidData {
                // http_error was set by read_inner.
            } else {
                self.io_failed = true;
            }
            conn.body_failed.set(true);
        }
        result
    }

    fn buffered_decoded(&self) -> usize {
        self.framing.decoded.len() - self.framing.pos
    }

    fn read_inner(
        &mut self,
        conn: &Conn<'_>,
        rbuf: &mut ReadBuf,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        // A chunked body may be decoded (and its decoder done) before the app took it all.
        if let Some(n) = self.framing.take_decoded(buf) {
            return Ok(n);
        }
        if self.framing.decoder.is_done() {
            return Ok(0);
        }
        if let Some(want) = self.framing.decoder.raw_window(buf.len()) {
            return self.read_raw(conn, rbuf, &mut buf[..want]);
        }
        self.read_chunked(conn, rbuf, buf)
    }

    /// Read body bytes that need no decoding (a Content-Length body): what is buffered first,
    /// then from the socket.
    fn read_raw(
        &mut self,
        conn: &Conn<'_>,
        rbuf: &mut ReadBuf,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let n = if !rbuf.is_empty() {
            let n = buf.len().min(rbuf.len());
            buf[..n].copy_from_slice(&rbuf.data()[..n]);
            rbuf.consume(n);
            n
        } else {
            // Straight into the app's buffer: large uploads are copied once. Once a request is
            // under way each wait gets the I/O timeout, within the rate floor.
            let start = Instant::now();
            let n = conn
                .sock
                .read_before(buf, self.pace.deadline(conn.io_timeout)?)?;
            self.pace.record(start, n);
            if n == 0 {
                return Err(cut_short(&self.framing.decoder));
            }
            n
        };
        self.framing.decoder.consume_raw(n);
        Ok(n)
    }

    /// Read a chunked body: decode what is buffered, reading more until some body bytes (or its
    /// end) come out.
    fn read_chunked(
        &mut self,
        conn: &Conn<'_>,
        rbuf: &mut ReadBuf,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            if let Some(n) = self.framing.take_decoded(buf) {
                return Ok(n);
            }
            if self.framing.decoder.is_done() {
                return Ok(0);
            }
            let Framing {
                decoder,
                decoded,
                pos,
            } = &mut self.framing;
            decoded.clear();
            *pos = 0;
            if !rbuf.is_empty() {
                let used = match decoder.decode(rbuf.data(), decoded) {
                    Ok(used) => used,
                    Err(e) => return Err(self.framing_error(e)),
                };
                rbuf.consume(used);
                if used > 0 || !decoded.is_empty() || decoder.is_done() {
                    continue;
                }
            }
            self.fill_for_chunks(conn, rbuf)?;
        }
    }

    /// Read more of a chunked body into `rbuf`, where the decoder finds its framing.
    fn fill_for_chunks(&mut self, conn: &Conn<'_>, rbuf: &mut ReadBuf) -> io::Result<()> {
        // Each wait gets the I/O timeout, within the rate floor.
        let start = Instant::now();
        let filled = rbuf.fill_before(
            &conn.sock,
            self.pace.deadline(conn.io_timeout)?,
            MAX_BODY_BUFFER,
        );
        if let Ok(n) = filled {
            self.pace.record(start, n);
        }
        match filled {
            Ok(0) => Err(cut_short(&self.framing.decoder)),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => Err(self.framing_error(
                ferrocorn_http::RequestError::BadRequest("chunk framing too long"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Keep a framing error for the error response, and give the app an I/O error saying it.
    fn framing_error(&mut self, e: ferrocorn_http::RequestError) -> io::Error {
        let io_err = io::Error::new(io::ErrorKind::InvalidData, e.clone());
        self.http_error = Some(e);
        io_err
    }

    /// After the response: consume what the app left unread so the connection can carry the next
    /// request. Reads at most `budget` raw bytes; false when the connection must be closed instead.
    pub(crate) fn drain(&mut self, conn: &Conn<'_>, rbuf: &mut ReadBuf, budget: u64) -> bool {
        if self.failed().is_some() {
            return false;
        }
        if self.is_done() {
            return true;
        }
        // The client is waiting for 100 Continue that will never come; it may or may not send the
        // body now, so the stream position is unknowable.
        if self.expects_continue && !self.continue_sent {
            return false;
        }
        if self
            .framing
            .decoder
            .remaining_hint()
            .is_some_and(|remaining| remaining > budget)
        {
            return false;
        }
        let mut scratch = vec![0u8; READ_CHUNK];
        let mut read = 0u64;
        while !self.is_done() {
            // Only the body framing is parsed: decoded data is thrown away.
            match self.read_inner(conn, rbuf, &mut scratch) {
                Ok(0) => break,
                Ok(n) => {
                    read += n as u64;
                    if read > budget {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        self.framing.decoded.clear();
        self.framing.pos = 0;
        self.is_done()
    }

    /// Whether the client may still be sending body bytes we will not read (so closing should
    /// linger rather than reset the connection).
    pub(crate) fn unread_may_follow(&self) -> bool {
        !self.is_done() || self.failed().is_some()
    }
}

fn cut_short(decoder: &BodyDecoder) -> io::Error {
    let remaining = decoder.remaining_hint().unwrap_or(0);
    let msg = if remaining > 0 {
        format!("client closed the connection with {remaining} body bytes still to come")
    } else {
        "client closed the connection in the middle of a chunked body".to_string()
    };
    io::Error::new(io::ErrorKind::UnexpectedEof, msg)
}

/// One request as the app sees it. The body is read on demand (sending `100 Continue` first if the
/// client asked for it) and never past its end.
pub struct Request<'a> {
    /// The parsed request head: method, target, version, header fields.
    pub head: &'a RequestHead,
    /// The client's address.
    pub peer: &'a PeerAddr,
    /// The listener the request arrived on.
    pub server: &'a ServerAddr,
    pub(crate) conn: &'a Conn<'a>,
    pub(crate) rbuf: &'a mut ReadBuf,
    pub(crate) body: &'a mut BodyState,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("head", &self.head)
            .field("peer", &self.peer)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Request<'_> {
    /// Read body bytes; `Ok(0)` at the end of the body. A body cut short by the client is an error
    /// (`UnexpectedEof`), a malformed or too large chunked body is `InvalidData` (the worker then
    /// answers 400/413 if the app has not responded yet). Each wait is bounded by the I/O timeout.
    pub fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(self.conn, self.rbuf, buf)
    }

    /// Read the whole remaining body into `out`, for apps that want it at once.
    pub fn read_body_to_end(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        let start = out.len();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.read_body(&mut chunk)?;
            if n == 0 {
                return Ok(out.len() - start);
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }

    /// Trailer fields of a chunked body, available once the body has been read to its end.
    pub fn trailers(&self) -> &[(String, Vec<u8>)] {
        self.body.framing.decoder.trailers()
    }
}

impl io::Read for Request<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_body(buf)
    }
}
