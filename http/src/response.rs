//! Response serialization: the head (with the framing decided here, not by the app) and a body
//! encoder that can never send more than the head promised.

use std::io::Write as _;

use crate::chars::{is_field_vchar, is_tchar};
use crate::date::with_http_date;
use crate::error::{RequestError, ResponseError};
use crate::head::parse_content_length;
use crate::types::Version;

/// How the response body will be delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body may be sent (HEAD, 204, 304).
    NoBody,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 only).
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    UntilClose,
}

impl ResponseFraming {
    /// The head alone does not say where the body ends (chunked, or at the close): for a body
    /// known to be empty, [`write_empty_response_head`] says `Content-Length: 0` instead.
    pub fn is_open_ended(self) -> bool {
        matches!(self, ResponseFraming::Chunked | ResponseFraming::UntilClose)
    }
}

/// What the app asked to send, checked and ready to serialize.
#[derive(Debug, Clone, Copy)]
pub struct ResponseSpec<'a> {
    /// The status code.
    pub status: u16,
    /// The reason phrase after the status code.
    pub reason: &'a str,
    /// The app's header fields; connection-level ones (`Connection`, `Transfer-Encoding`...) are
    /// dropped, the server writes its own.
    pub headers: &'a [(Vec<u8>, Vec<u8>)],
    /// The request's version and method (HEAD → no body).
    pub version: Version,
    /// The request was HEAD: the head describes a body that is not sent.
    pub head_request: bool,
    /// Whether the server wants to keep the connection (client allows it and the worker is not stopping).
    pub keep_alive: bool,
    /// `Server` header value (`--server-header`); empty sends none. An app's own `Server` wins.
    pub server: &'a str,
}

/// The serialized head plus the framing it promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeadOut {
    /// How the body that follows this head must be framed ([`BodyEncoder::new`]).
    pub framing: ResponseFraming,
    /// False when the head says `Connection: close` (then the caller must close after the body).
    pub keep_alive: bool,
}

/// Connection-level fields: the server alone decides them, so the app's are dropped.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: &[&[u8]] = &[
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

/// The app's own `Connection: close` (dropped from the head as hop-by-hop) still means close.
fn asks_close(headers: &[(Vec<u8>, Vec<u8>)]) -> bool {
    headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case(b"connection")
            && value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// [`write_response_head`] for a response whose body is known to be empty (the app returned
/// without writing): where the head would promise a chunked or close-delimited body it declares
/// `Content-Length: 0` instead, which is clearer and keeps the connection reusable.
pub fn write_empty_response_head(
    spec: &ResponseSpec<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponseHeadOut, ResponseError> {
    let start = out.len();
    let head = write_response_head(spec, out)?;
    if !head.framing.is_open_ended() {
        return Ok(head);
    }
    out.truncate(start);
    let mut headers = spec.headers.to_vec();
    headers.push((b"Content-Length".to_vec(), b"0".to_vec()));
    let spec = ResponseSpec {
        headers: &headers,
        ..*spec
    };
    write_response_head(&spec, out)
}

/// Append a response head to `out`: status line, the app's headers minus hop-by-hop ones, `Date`,
/// `Server`, `Connection` (`close` when the server does not keep the connection or the app's own
/// `Connection` field asks to close it), and `Transfer-Encoding: chunked` when needed. Rejects invalid names/values
/// with a [`ResponseError`] (leaving `out` as it was).
pub fn write_response_head(
    spec: &ResponseSpec<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponseHeadOut, ResponseError> {
    check_status_line(spec)?;
    let facts = check_app_headers(spec.headers)?;
    let status = spec.status;
    let framing = response_framing(spec, facts.length);
    let keep_alive =
        spec.keep_alive && framing != ResponseFraming::UntilClose && !asks_close(spec.headers);

    let start = out.len();
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", spec.reason);
    write_app_headers(spec.headers, status, out);
    if !facts.has_server && !spec.server.is_empty() {
        if !spec.server.bytes().all(is_field_vchar) {
            out.truncate(start);
            return Err(ResponseError("control character in Server"));
        }
        out.extend_from_slice(b"Server: ");
        out.extend_from_slice(spec.server.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !facts.has_date {
        with_http_date(|d| {
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(d.as_bytes());
            out.extend_from_slice(b"\r\n");
        });
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n"
    } else {
        b"Connection: close\r\n"
    });
    if framing == ResponseFraming::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ResponseHeadOut {
        framing,
        keep_alive,
    })
}

/// Refuse a status line the client would misread: not three digits, an interim (1xx) status, or a
/// control character in the reason phrase.
fn check_status_line(spec: &ResponseSpec<'_>) -> Result<(), ResponseError> {
    if !(100..=999).contains(&spec.status) {
        return Err(ResponseError("status code is not three digits"));
    }
    // An app answers with its final response; a 1xx would leave the client waiting for another
    // response, which the next request's answer would then be taken for.
    if spec.status < 200 {
        return Err(ResponseError(
            "1xx status as a final response (interim responses are the server's)",
        ));
    }
    if !spec.reason.bytes().all(is_field_vchar) {
        return Err(ResponseError("control character in reason phrase"));
    }
    Ok(())
}

/// What the app's own header fields decide about the head the server writes.
struct AppHeaderFacts {
    /// The declared `Content-Length` (all copies agree).
    length: Option<u64>,
    has_date: bool,
    has_server: bool,
}

/// Validate the app's header fields (names, values, `Content-Length`) and note the ones the
/// server would otherwise add.
fn check_app_headers(headers: &[(Vec<u8>, Vec<u8>)]) -> Result<AppHeaderFacts, ResponseError> {
    let mut facts = AppHeaderFacts {
        length: None,
        has_date: false,
        has_server: false,
    };
    for (name, value) in headers {
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ResponseError("invalid header name"));
        }
        if !value.iter().all(|&b| is_field_vchar(b)) {
            return Err(ResponseError("control character in header value"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n =
                parse_content_length(value).map_err(|_| ResponseError("invalid Content-Length"))?;
            if facts.length.is_some_and(|l| l != n) {
                return Err(ResponseError("conflicting Content-Length headers"));
            }
            facts.length = Some(n);
        }
        facts.has_date |= name.eq_ignore_ascii_case(b"date");
        facts.has_server |= name.eq_ignore_ascii_case(b"server");
    }
    Ok(facts)
}

/// How the body of this response is delimited on the wire.
fn response_framing(spec: &ResponseSpec<'_>, length: Option<u64>) -> ResponseFraming {
    if spec.head_request || spec.status == 204 || spec.status == 304 {
        ResponseFraming::NoBody
    } else if let Some(n) = length {
        ResponseFraming::Length(n)
    } else if spec.version == Version::Http11 {
        ResponseFraming::Chunked
    } else {
        ResponseFraming::UntilClose
    }
}

/// Copy the app's header fields into the head, minus hop-by-hop ones (the server frames the
/// connection) and, where the status forbids it, `Content-Length`.
fn write_app_headers(headers: &[(Vec<u8>, Vec<u8>)], status: u16, out: &mut Vec<u8>) {
    // RFC 9110 §8.6: no Content-Length in a 204 response.
    let drop_length = status == 204;
    for (name, value) in headers {
        if is_hop_by_hop(name) || (drop_length && name.eq_ignore_ascii_case(b"content-length")) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Frames body bytes for a [`ResponseFraming`], never letting more than a declared length out.
#[derive(Debug)]
pub struct BodyEncoder {
    framing: ResponseFraming,
    /// Bytes still allowed under a declared length.
    remaining: u64,
    finished: bool,
}

impl BodyEncoder {
    /// An encoder for a body promised with `framing`.
    pub fn new(framing: ResponseFraming) -> Self {
        let remaining = match framing {
            ResponseFraming::Length(n) => n,
            _ => 0,
        };
        BodyEncoder {
            framing,
            remaining,
            finished: false,
        }
    }

    /// Append the framed form of `data` to `out`; returns how many bytes of `data` were accepted
    /// (less than `data.len()` when a Content-Length would be exceeded). With
    /// [`ResponseFraming::NoBody`] everything is accepted and nothing written (a HEAD response's
    /// body is discarded by design).
    pub fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) -> usize {
        if self.finished {
            return 0;
        }
        match self.framing {
            ResponseFraming::NoBody => data.len(),
            ResponseFraming::UntilClose => {
                out.extend_from_slice(data);
                data.len()
            }
            ResponseFraming::Length(_) => {
                let n = usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
                out.extend_from_slice(&data[..n]);
                self.remaining -= n as u64;
                n
            }
            ResponseFraming::Chunked => {
                // An empty chunk would end the body.
                if !data.is_empty() {
                    let _ = write!(out, "{:x}\r\n", data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                data.len()
            }
        }
    }

    /// Append the end of the body (the last chunk for chunked). Returns false if a declared length
    /// was not reached (the connection must then be closed).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        if !self.finished && self.framing == ResponseFraming::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        self.finished = true;
        self.remaining == 0
    }

    /// The framing this encoder writes.
    pub fn framing(&self) -> ResponseFraming {
        self.framing
    }

    /// How many more body bytes may go out: `Some(0)` once a declared length is reached, for a
    /// body that must be empty, and after [`BodyEncoder::finish`]; `None` when unbounded.
    pub fn limit(&self) -> Option<u64> {
        match self.framing {
            _ if self.finished => Some(0),
            ResponseFraming::NoBody => Some(0),
            ResponseFraming::Length(_) => Some(self.remaining),
            ResponseFraming::Chunked | ResponseFraming::UntilClose => None,
        }
    }

    /// Frame `len` body bytes that the caller sends itself right after `out` (with `sendfile(2)`,
    /// say): appends the chunk header when chunked and returns how many of them may go (fewer
    /// when a declared length would be exceeded, 0 when no body may be sent). Call
    /// [`BodyEncoder::end_raw`] once they are sent.
    pub fn begin_raw(&mut self, len: u64, out: &mut Vec<u8>) -> u64 {
        let len = self.limit().map_or(len, |l| l.min(len));
        if len > 0 && self.framing == ResponseFraming::Chunked {
            let _ = write!(out, "{len:x}\r\n");
        }
        len
    }

    /// After [`BodyEncoder::begin_raw`] promised `promised` bytes of which `sent` went out: account
    /// for them and append what ends the chunk. Returns false when the stream is now corrupt (a
    /// chunk came out shorter than its header said); a short declared length is reported by
    /// [`BodyEncoder::finish`] instead.
    pub fn end_raw(&mut self, promised: u64, sent: u64, out: &mut Vec<u8>) -> bool {
        match self.framing {
            ResponseFraming::Length(_) => self.remaining -= sent.min(self.remaining),
            ResponseFraming::Chunked if promised > 0 => {
                if sent < promised {
                    return false;
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        true
    }
}

/// The standard reason phrase for `status` (empty when unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A complete error response (`Connection: close`, small text body) for `status`.
pub fn error_response(status: u16) -> Vec<u8> {
    error_response_with(status, reason_phrase(status))
}

/// The response to a HEAD request for `status`: [`error_response`]'s head without its body (a
/// response to HEAD never has one, errors included).
pub fn error_head_response(status: u16) -> Vec<u8> {
    error_head_response_with(status, reason_phrase(status))
}

/// Like [`error_response`] with `detail` as the body text (e.g. an error's message; control
/// characters such as line breaks are replaced by spaces).
pub fn error_response_with(status: u16, detail: &str) -> Vec<u8> {
    serialize_error(status, detail).0
}

/// [`error_response_with`] for a HEAD request: the same head, no body.
pub fn error_head_response_with(status: u16, detail: &str) -> Vec<u8> {
    let (mut out, head_len) = serialize_error(status, detail);
    out.truncate(head_len);
    out
}

/// How many body bytes follow the head of a response this crate serialized (an error response),
/// for logs that count what was sent (gunicorn's `%(B)s`).
pub fn serialized_body_len(response: &[u8]) -> u64 {
    response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| (response.len() - i - 4) as u64)
}

/// The whole error response and the length of its head.
fn serialize_error(status: u16, detail: &str) -> (Vec<u8>, usize) {
    let body: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .chain(std::iter::once('\n'))
        .collect();
    let mut out = Vec::with_capacity(160 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    with_http_date(|d| {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(d.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    });
    let head_len = out.len();
    out.extend_from_slice(body.as_bytes());
    (out, head_len)
}

impl RequestError {
    /// The complete error response for this error: its status and its message as the body.
    pub fn response(&self) -> Vec<u8> {
        error_response_with(self.status(), &self.to_string())
    }

    /// [`RequestError::response`] for a HEAD request: the same head, no body.
    pub fn head_response(&self) -> Vec<u8> {
        error_head_response_with(self.status(), &self.to_string())
    }
}
