//! Strict, bounded HTTP/1.1 for the server side: request heads (via httparse), request bodies
//! (Content-Length and chunked), and response serialization.
//!
//! No I/O and no policy about sockets: callers feed bytes in and get parsed values or bytes out.
//! `Partial` is not an error; every error maps to the HTTP status the server should answer with.
//!
//! INTERFACE STUB — the http helper owns this crate and replaces the `todo!()`s. The public names and
//! signatures below are what `ferrocorn-worker` and `ferrocorn-wsgi` compile against; keep them
//! (adding is fine).

use std::fmt;

/// Gunicorn's request limits, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `--limit-request-line` (0 = unlimited), over it → 414.
    pub request_line: usize,
    /// `--limit-request-fields`, over it → 431.
    pub fields: usize,
    /// `--limit-request-field_size` (0 = unlimited), over it → 431.
    pub field_size: usize,
    /// `--limit-request-body` in bytes, `None` = unlimited; over it → 413.
    pub body: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { request_line: 4094, fields: 100, field_size: 8190, body: None }
    }
}

/// HTTP versions the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no Content-Length, no Transfer-Encoding, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
}

/// The result of feeding bytes to a parser: `Partial` means "need more bytes", not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The value and how many bytes of the input it used.
    Complete(T, usize),
    Partial,
}

/// Why a request was rejected; [`Error::status`] is the response to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request line too long")]
    UriTooLong,
    #[error("request header fields too large: {0}")]
    HeadersTooLarge(&'static str),
    #[error("request body too large")]
    BodyTooLarge,
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("expectation failed")]
    ExpectationFailed,
}

impl Error {
    /// 400, 414, 431, 413, 505, 501 or 417.
    pub fn status(&self) -> u16 {
        todo!()
    }
}

/// A parsed, validated request head. Owns a copy of its bytes; accessors borrow from it.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    _todo: (),
}

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHead").finish_non_exhaustive()
    }
}

impl RequestHead {
    pub fn method(&self) -> &str {
        todo!()
    }
    /// The request-target exactly as sent.
    pub fn target(&self) -> &str {
        todo!()
    }
    /// The path part of the target (still percent-encoded; absolute-form reduced to its path).
    pub fn path(&self) -> &str {
        todo!()
    }
    /// The query string without `?` (empty if none).
    pub fn query(&self) -> &str {
        todo!()
    }
    pub fn version(&self) -> Version {
        todo!()
    }
    /// Header fields in order, names as sent, values without surrounding whitespace.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        std::iter::empty()
    }
    /// The first header with this name (ASCII case-insensitive).
    pub fn header(&self, _name: &str) -> Option<&[u8]> {
        todo!()
    }
    pub fn framing(&self) -> BodyFraming {
        todo!()
    }
    /// Whether the client allows the connection to persist (version default + `Connection`).
    pub fn keep_alive(&self) -> bool {
        todo!()
    }
    /// `Expect: 100-continue` was sent (other expectations are rejected with 417 while parsing).
    pub fn expects_continue(&self) -> bool {
        todo!()
    }
}

/// Incremental head parser: remembers how far it has scanned so each call only looks at new bytes.
#[derive(Debug, Default)]
pub struct HeadParser {
    _todo: (),
}

impl HeadParser {
    pub fn new() -> Self {
        HeadParser::default()
    }
    /// Parse a head from the start of `buf` (which grows between calls; reset with [`HeadParser::new`]
    /// for the next request). `Complete(head, n)`: the head used `buf[..n]`.
    pub fn parse(&mut self, _buf: &[u8], _limits: &Limits) -> Result<Parsed<RequestHead>, Error> {
        todo!()
    }
}

/// Decodes a request body given its framing. Pure: bytes in, body bytes out.
#[derive(Debug)]
pub struct BodyDecoder {
    _todo: (),
}

impl BodyDecoder {
    pub fn new(_framing: BodyFraming, _limits: &Limits) -> Self {
        todo!()
    }
    /// Decode from `input`, appending body bytes to `out`; returns how many input bytes were used.
    /// Call again with more input until [`BodyDecoder::is_done`].
    pub fn decode(&mut self, _input: &[u8], _out: &mut Vec<u8>) -> Result<usize, Error> {
        todo!()
    }
    pub fn is_done(&self) -> bool {
        todo!()
    }
    /// Body bytes still expected when the framing is a length (for EOF errors and draining).
    pub fn remaining_hint(&self) -> Option<u64> {
        todo!()
    }
    /// Trailer fields of a chunked body (kept apart from the head's headers).
    pub fn trailers(&self) -> &[(String, Vec<u8>)] {
        &[]
    }
}

/// How the response body will be delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body may be sent (HEAD, 1xx, 204, 304).
    NoBody,
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    UntilClose,
}

/// What the app asked to send, checked and ready to serialize.
#[derive(Debug, Clone, Copy)]
pub struct ResponseSpec<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub headers: &'a [(Vec<u8>, Vec<u8>)],
    /// The request's version and method (HEAD → no body).
    pub version: Version,
    pub head_request: bool,
    /// Whether the server wants to keep the connection (client allows it and the worker is not stopping).
    pub keep_alive: bool,
}

/// The serialized head plus the framing it promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeadOut {
    pub framing: ResponseFraming,
    /// False when the head says `Connection: close` (then the caller must close after the body).
    pub keep_alive: bool,
}

/// Append a response head to `out`: status line, the app's headers minus hop-by-hop ones, `Date`,
/// `Server`, `Connection`, and `Transfer-Encoding: chunked` when needed. Rejects invalid names/values.
pub fn write_response_head(
    _spec: &ResponseSpec<'_>,
    _out: &mut Vec<u8>,
) -> Result<ResponseHeadOut, Error> {
    todo!()
}

/// Frames body bytes for a [`ResponseFraming`], never letting more than a declared length out.
#[derive(Debug)]
pub struct BodyEncoder {
    _todo: (),
}

impl BodyEncoder {
    pub fn new(_framing: ResponseFraming) -> Self {
        todo!()
    }
    /// Append the framed form of `data` to `out`; returns how many bytes of `data` were accepted
    /// (less than `data.len()` when a Content-Length would be exceeded).
    pub fn encode(&mut self, _data: &[u8], _out: &mut Vec<u8>) -> usize {
        todo!()
    }
    /// Append the end of the body (the last chunk for chunked). Returns false if a declared length
    /// was not reached (the connection must then be closed).
    pub fn finish(&mut self, _out: &mut Vec<u8>) -> bool {
        todo!()
    }
}

/// A complete error response (`Connection: close`, small text body) for `status`.
pub fn error_response(_status: u16) -> Vec<u8> {
    todo!()
}

/// The `Date` header value for now, recomputed at most once a second.
pub fn http_date() -> String {
    todo!()
}
