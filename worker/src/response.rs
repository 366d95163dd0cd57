//! The response being written: head serialization, body framing, `sendfile(2)`.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use ferrocorn_http::{
    reason_phrase, write_empty_response_head, write_response_head, BodyEncoder, ResponseFraming,
    ResponseHeadOut, ResponseSpec, Version,
};
use nix::errno::Errno;

use crate::request::Conn;
use crate::sock::Memory;
use crate::{AppError, Headers};

/// One of `ferrocorn-http`'s head writers.
type HeadWriter =
    fn(&ResponseSpec<'_>, &mut Vec<u8>) -> Result<ResponseHeadOut, ferrocorn_http::ResponseError>;

/// Largest piece of a body copied into the write buffer and written at once; bounds the buffer.
const PIECE: usize = 256 * 1024;

/// Largest `sendfile(2)` call (Linux caps one call just under 2 GiB anyway).
const SENDFILE_MAX: u64 = 1 << 30;

#[derive(Debug)]
struct Started {
    status: u16,
    reason: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The keep-alive wish the head in the write buffer was serialized with.
    keep_alive: bool,
    out: ResponseHeadOut,
}

/// The response being written. The head is sent with the first non-empty body write (or at the end).
pub struct Response<'a> {
    pub(crate) conn: &'a Conn<'a>,
    /// Holds the serialized head until it is sent, then framed body pieces on their way out.
    pub(crate) wbuf: &'a mut Vec<u8>,
    pub(crate) version: Version,
    pub(crate) head_request: bool,
    /// Whether the worker would keep the connection (client allows it, not the last request).
    pub(crate) keep_alive: bool,
    /// Asked at head time: true makes the head say `close` (a stop signal arrived meanwhile, or
    /// new clients are waiting for this worker).
    pub(crate) must_close: &'a dyn Fn() -> bool,
    pub(crate) server_header: &'a str,
    started: Option<Started>,
    /// Frames the body once the head is sent (`ferrocorn-http` decides every framing detail).
    body: Option<BodyEncoder>,
    /// A write failed: the connection is unusable and every later write fails at once.
    broken: bool,
    /// Body bytes sent so far (for the access log).
    body_bytes: u64,
}

/// What a response sent, for [`crate::Completed`].
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub(crate) status: Option<u16>,
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) body_bytes: u64,
}

impl fmt::Debug for Response<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("started", &self.started)
            .field("body", &self.body)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

fn broken_pipe() -> AppError {
    AppError::Io(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "an earlier write to the client failed",
    ))
}

impl<'a> Response<'a> {
    pub(crate) fn new(
        conn: &'a Conn<'a>,
        wbuf: &'a mut Vec<u8>,
        version: Version,
        head_request: bool,
        keep_alive: bool,
        must_close: &'a dyn Fn() -> bool,
        server_header: &'a str,
    ) -> Response<'a> {
        wbuf.clear();
        Response {
            conn,
            wbuf,
            version,
            head_request,
            keep_alive,
            must_close,
            server_header,
            started: None,
            body: None,
            broken: false,
            body_bytes: 0,
        }
    }

    /// Set status and headers. May be called again to replace them until the head has been sent.
    /// Header names/values are bytes (WSGI gives latin-1 strings). Invalid ones are rejected here,
    /// so the app learns about them at the call. Without a `Content-Length` the body is chunked
    /// (HTTP/1.1) or ends with the connection (HTTP/1.0); [`Response::respond`] sets it for you.
    pub fn start(
        &mut self,
        status: u16,
        reason: &str,
        headers: impl Into<Headers>,
    ) -> Result<(), AppError> {
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers.into().into();
        if self.head_sent() {
            return Err(AppError::BadResponse(
                "start() called after the response head was sent".to_string(),
            ));
        }
        self.started = None;
        self.wbuf.clear();
        // Serialized now to reject bad headers at the call; the keep-alive decision is taken
        // again when the head actually leaves (see `commit_head`).
        let keep_alive = self.wants_keep_alive();
        let out = self.serialize(status, reason, &headers, keep_alive)?;
        self.record(|m| {
            m.starts
                .push((status, reason.to_string(), headers.clone().into()))
        });
        self.started = Some(Started {
            status,
            reason: reason.to_string(),
            headers,
            keep_alive,
            out,
        });
        Ok(())
    }

    /// Note an app's call when the connection is in memory (a test records what the app did).
    fn record(&self, note: impl FnOnce(&mut Memory)) {
        if let Some(m) = self.conn.sock.memory_io() {
            note(&mut m.borrow_mut());
        }
    }

    /// A whole response in one call: `status` with its standard reason phrase, `headers`, and
    /// `body` with its `Content-Length` (unless `headers` has one already).
    pub fn respond(
        &mut self,
        status: u16,
        headers: impl Into<Headers>,
        body: &[u8],
    ) -> Result<(), AppError> {
        let mut headers = headers.into();
        if !headers.contains("content-length") {
            headers = headers.content_length(body.len() as u64);
        }
        self.start(status, reason_phrase(status), headers)?;
        self.write(body)
    }

    /// A whole `text/plain; charset=utf-8` response: `res.text(200, "Hello\n")`.
    pub fn text(&mut self, status: u16, body: impl AsRef<str>) -> Result<(), AppError> {
        let headers = Headers::new().content_type("text/plain; charset=utf-8");
        self.respond(status, headers, body.as_ref().as_bytes())
    }

    /// A whole response of `content_type` with these bytes as its body.
    pub fn bytes(
        &mut self,
        status: u16,
        content_type: impl AsRef<[u8]>,
        body: &[u8],
    ) -> Result<(), AppError> {
        self.respond(status, Headers::new().content_type(content_type), body)
    }

    /// Whether the connection may persist as far as this request goes (the app's own
    /// `Connection: close` is honoured when the head is serialized).
    fn wants_keep_alive(&self) -> bool {
        self.keep_alive && !self.conn.awaiting_continue.get() && !self.conn.body_failed.get()
    }

    /// Serialize a head into the (empty) write buffer.
    fn serialize(
        &mut self,
        status: u16,
        reason: &str,
        headers: &[(Vec<u8>, Vec<u8>)],
        keep_alive: bool,
    ) -> Result<ResponseHeadOut, AppError> {
        self.serialize_with(write_response_head, status, reason, headers, keep_alive)
    }

    /// Serialize a head into the (empty) write buffer with `write_head`, one of `ferrocorn-http`'s
    /// head writers.
    fn serialize_with(
        &mut self,
        write_head: HeadWriter,
        status: u16,
        reason: &str,
        headers: &[(Vec<u8>, Vec<u8>)],
        keep_alive: bool,
    ) -> Result<ResponseHeadOut, AppError> {
        let spec = ResponseSpec {
            status,
            reason,
            headers,
            version: self.version,
            head_request: self.head_request,
            keep_alive,
            server: self.server_header,
        };
        write_head(&spec, self.wbuf).map_err(|e| {
            self.wbuf.clear();
            // AppError::BadResponse adds its own "invalid response" prefix: pass the bare reason.
            AppError::BadResponse(e.0.to_string())
        })
    }

    /// Whether a status and headers were set ([`Response::start`]), sent or not.
    pub fn is_started(&self) -> bool {
        self.started.is_some()
    }

    /// Whether the response head has gone out: from then on only the body can be written.
    pub fn head_sent(&self) -> bool {
        self.body.is_some()
    }

    /// The status set by the last successful [`Response::start`].
    pub fn status(&self) -> Option<u16> {
        self.started.as_ref().map(|s| s.status)
    }

    /// The head is (about to be) sent: from here on the framing is fixed. The head bytes stay in
    /// the write buffer so they leave in one write with the first body bytes. `empty` means the
    /// app returned without writing anything.
    fn commit_head(&mut self, empty: bool) -> Result<(), AppError> {
        if self.body.is_some() {
            return Ok(());
        }
        let Some(started) = self.started.take() else {
            return Err(AppError::BadResponse(
                "body written before start() was called".to_string(),
            ));
        };
        let Started {
            status,
            reason,
            headers,
            keep_alive: serialized_with,
            mut out,
        } = started;
        // No body at all: `ferrocorn-http` declares an empty length where the head would promise
        // an open-ended body.
        let empty_head = empty && out.framing.is_open_ended();
        // Decided now, as late as possible: a stop signal or a client queueing up for this worker
        // while the app ran makes this the connection's last response.
        let keep_alive = self.wants_keep_alive() && !(self.must_close)();
        let mut used = serialized_with;
        if empty_head || keep_alive != serialized_with {
            let saved = std::mem::take(self.wbuf);
            let write_head: HeadWriter = if empty_head {
                write_empty_response_head
            } else {
                write_response_head
            };
            match self.serialize_with(write_head, status, &reason, &headers, keep_alive) {
                Ok(new) => {
                    out = new;
                    used = keep_alive;
                }
                // Cannot happen (the same headers passed before); keep the head we had.
                Err(_) => *self.wbuf = saved,
            }
        }
        self.body = Some(BodyEncoder::new(out.framing));
        self.started = Some(Started {
            status,
            reason,
            headers,
            keep_alive: used,
            out,
        });
        self.conn.head_sent.set(true);
        Ok(())
    }

    fn flush(&mut self, more: bool) -> Result<(), AppError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let result = self
            .conn
            .sock
            .write_all(self.wbuf, self.conn.io_timeout, more);
        self.wbuf.clear();
        result.map_err(|e| {
            self.broken = true;
            AppError::Io(e)
        })
    }

    /// Write body bytes (the head goes first, in the same write). Every call is sent before it
    /// returns, as PEP 3333 requires of streamed blocks. Bytes past a declared Content-Length are
    /// dropped, as is any body of a HEAD request or a 204/304 response.
    pub fn write(&mut self, data: &[u8]) -> Result<(), AppError> {
        self.record(|m| m.writes += 1);
        self.write_body(data)
    }

    /// [`Response::write`] without noting an app's call (a copied file range comes through here).
    fn write_body(&mut self, data: &[u8]) -> Result<(), AppError> {
        if self.broken {
            return Err(broken_pipe());
        }
        if self.started.is_none() {
            return Err(AppError::BadResponse(
                "write() called before start()".to_string(),
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.commit_head(false)?;
        let mut rest = data;
        loop {
            let (piece, tail) = rest.split_at(rest.len().min(PIECE));
            let Some(enc) = self.body.as_mut() else {
                return Ok(());
            };
            let queued = enc.encode(piece, self.wbuf);
            // A HEAD response's body is accepted and discarded: nothing of it is sent.
            let sent = if enc.framing() == ResponseFraming::NoBody {
                0
            } else {
                queued
            };
            let full = enc.limit() == Some(0);
            self.flush(false)?;
            self.body_bytes += sent as u64;
            if tail.is_empty() || full {
                return Ok(());
            }
            rest = tail;
        }
    }

    /// Send `len` bytes (or to EOF) of `file` from `offset`, with sendfile(2) for regular files,
    /// otherwise by reading and writing. A file shorter than promised leaves the response short
    /// (the worker then closes the connection rather than let the client misparse it).
    pub fn sendfile(&mut self, file: &File, offset: u64, len: Option<u64>) -> Result<(), AppError> {
        self.record(|m| m.sendfiles.push((offset, len)));
        if self.broken {
            return Err(broken_pipe());
        }
        if self.started.is_none() {
            return Err(AppError::BadResponse(
                "sendfile() called before start()".to_string(),
            ));
        }
        let meta = file.metadata()?;
        let avail = meta.is_file().then(|| meta.len().saturating_sub(offset));
        let count = match (len, avail) {
            (Some(l), Some(a)) => Some(l.min(a)),
            (l, a) => l.or(a),
        };
        if count == Some(0) {
            return Ok(());
        }
        self.commit_head(false)?;
        let Some(enc) = self.body.as_mut() else {
            return Ok(());
        };
        let count = match (count, enc.limit()) {
            (Some(c), Some(cap)) => Some(c.min(cap)),
            (c, cap) => c.or(cap),
        };
        if count == Some(0) {
            // Nothing may (or needs to) go out but the head.
            return self.flush(false);
        }
        // In memory the range is copied (below) like any other file.
        let sendable = meta.is_file() && self.conn.sock.fd().is_some();
        match (sendable, count) {
            (true, Some(count)) => self.sendfile_framed(file, offset, count),
            _ => self.copy_range(file, offset, count),
        }
    }

    /// Send `count` bytes of a regular file with sendfile(2), framed by the body encoder (one
    /// chunk for the whole range when chunked).
    fn sendfile_framed(&mut self, file: &File, offset: u64, count: u64) -> Result<(), AppError> {
        let Some(enc) = self.body.as_mut() else {
            return Ok(());
        };
        let chunked = enc.framing() == ResponseFraming::Chunked;
        let count = enc.begin_raw(count, self.wbuf);
        self.flush(true)?;
        let sent = match self.sendfile_range(file, offset, count) {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::Unsupported && !chunked => {
                // Filesystems without sendfile support: copy instead (nothing was framed).
                return self.copy_range(file, offset, Some(count));
            }
            Err(e) => {
                self.broken = true;
                return Err(AppError::Io(e));
            }
        };
        self.body_bytes += sent;
        let Some(enc) = self.body.as_mut() else {
            return Ok(());
        };
        if !enc.end_raw(count, sent, self.wbuf) {
            // The chunk size promised more than the file gave: the stream is corrupt.
            self.broken = true;
            return Err(AppError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file ended before the length being sent",
            )));
        }
        self.flush(false)
    }

    /// `sendfile(2)` `count` bytes from `offset`; returns how many were sent (fewer at EOF).
    fn sendfile_range(&self, file: &File, offset: u64, count: u64) -> io::Result<u64> {
        let mut off = i64::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
        let sock = &self.conn.sock;
        let Some(fd) = sock.fd() else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        // The file's bytes go straight to the socket: what waits in the output goes first.
        sock.flush_output(self.conn.io_timeout)?;
        let mut sent = 0u64;
        sock.before_send(true);
        while sent < count {
            let n = (count - sent).min(SENDFILE_MAX) as usize;
            match nix::sys::sendfile::sendfile64(fd, file.as_fd(), Some(&mut off), n) {
                Ok(0) => break,
                Ok(n) => sent += n as u64,
                Err(Errno::EAGAIN) => sock.wait_writable(self.conn.io_timeout)?,
                Err(Errno::EINTR) => {}
                Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) if sent == 0 => {
                    return Err(io::ErrorKind::Unsupported.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    }

    /// The fallback: read pieces of the file and write them like app data.
    fn copy_range(&mut self, file: &File, offset: u64, count: Option<u64>) -> Result<(), AppError> {
        let mut buf = vec![0u8; PIECE.min(count.unwrap_or(u64::MAX) as usize).max(1)];
        let mut pos = offset;
        let mut left = count;
        let seekable = file.metadata()?.is_file();
        loop {
            let want = left.map_or(buf.len(), |l| buf.len().min(l as usize));
            if want == 0 {
                return Ok(());
            }
            let n = if seekable {
                file.read_at(&mut buf[..want], pos)?
            } else {
                // Pipes and the like only read from where they are.
                io::Read::read(&mut &*file, &mut buf[..want])?
            };
            if n == 0 {
                return Ok(());
            }
            self.write_body(&buf[..n])?;
            pos += n as u64;
            left = left.map(|l| l - n as u64);
        }
    }

    /// End the response after the app returned. Returns whether the body is complete (all of a
    /// declared length sent, chunked body terminated), i.e. the connection may carry another
    /// request as far as framing goes.
    pub(crate) fn finish(&mut self) -> Result<bool, AppError> {
        if self.started.is_none() {
            return Err(AppError::BadResponse(
                "the application returned without starting a response".to_string(),
            ));
        }
        if self.broken {
            return Ok(false);
        }
        self.commit_head(true)?;
        let complete = self.body.as_mut().is_none_or(|enc| enc.finish(self.wbuf));
        self.flush(false)?;
        Ok(complete)
    }

    /// What was sent once the response is over (its headers move out).
    pub(crate) fn take_sent(&mut self) -> Sent {
        let head_sent = self.head_sent();
        match self.started.as_mut() {
            Some(started) if head_sent => Sent {
                status: Some(started.status),
                headers: std::mem::take(&mut started.headers),
                body_bytes: self.body_bytes,
            },
            _ => Sent::default(),
        }
    }

    /// Whether the head sent lets the connection persist.
    pub(crate) fn persists(&self) -> bool {
        match &self.started {
            Some(s) => s.out.keep_alive && s.out.framing != ResponseFraming::UntilClose,
            None => false,
        }
    }
}
