//! Small shared value types: limits, versions, framing, parse results.

use crate::head::HeaderMapPolicy;

/// Gunicorn's request limits, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `--limit-request-line`, over it → 414. As in gunicorn, 0 or anything above 8190 means 8190:
    /// a request line is never unbounded.
    pub request_line: usize,
    /// `--limit-request-fields`, over it → 431. 0 or above 32768 means 32768 (gunicorn's cap).
    pub fields: usize,
    /// `--limit-request-field_size` (a field line including its CRLF), over it → 431. 0 means the
    /// default 8190, as gunicorn does: a field is never unbounded.
    pub field_size: usize,
    /// `--limit-request-body` in bytes, `None` = unlimited; over it → 413.
    pub body: Option<u64>,
    /// `--header-map`: what becomes of header fields with `_` in their name.
    pub header_map: HeaderMapPolicy,
}

/// Gunicorn's hard maximum for the request line.
pub(crate) const MAX_REQUEST_LINE: usize = 8190;
/// Gunicorn's hard maximum for the number of header fields.
pub(crate) const MAX_HEADERS: usize = 32768;
/// Gunicorn's default (and the meaning of 0) for a header field line.
pub(crate) const DEFAULT_FIELD_SIZE: usize = 8190;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_line: 4094,
            fields: 100,
            field_size: 8190,
            body: None,
            header_map: HeaderMapPolicy::Drop,
        }
    }
}

impl Limits {
    /// The most bytes a head can take under these limits (tolerated empty lines, request line,
    /// every field line, the blank line): a reader never needs to buffer more than this before
    /// the parser has either completed the head or refused it.
    pub fn max_head_len(&self) -> usize {
        let leading = 2 * crate::head::MAX_LEADING_EMPTY_LINES;
        let fields = self.fields().saturating_mul(self.field_size());
        leading + self.request_line() + 2 + fields + 2
    }

    pub(crate) fn request_line(&self) -> usize {
        if self.request_line == 0 || self.request_line > MAX_REQUEST_LINE {
            MAX_REQUEST_LINE
        } else {
            self.request_line
        }
    }
    pub(crate) fn fields(&self) -> usize {
        if self.fields == 0 || self.fields > MAX_HEADERS {
            MAX_HEADERS
        } else {
            self.fields
        }
    }
    pub(crate) fn field_size(&self) -> usize {
        if self.field_size == 0 {
            DEFAULT_FIELD_SIZE
        } else {
            self.field_size
        }
    }
}

/// HTTP versions the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

impl Version {
    /// The version as it appears on the wire, e.g. `HTTP/1.1`.
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
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The result of feeding bytes to a parser: `Partial` means "need more bytes", not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The value and how many bytes of the input it used.
    Complete(T, usize),
    /// More bytes are needed before anything can be said.
    Partial,
}
