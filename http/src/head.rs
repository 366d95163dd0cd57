//! Request heads: an incremental line scanner that enforces CRLF and the size limits as bytes
//! arrive, then one httparse pass over the complete field block and the semantic checks
//! (framing, Host, Expect, request-target form) that keep a request unambiguous.

use std::fmt;
use std::ops::Range;

use crate::chars::{is_field_vchar, is_tchar, trim_ows};
use crate::error::RequestError;
use crate::types::{BodyFraming, Limits, Parsed, Version};
use crate::uri::{check_host_header, parse_target};

/// Empty lines tolerated before a request line (RFC 9112 §2.2 says "at least one"; a client
/// that sends more is broken or probing).
pub(crate) const MAX_LEADING_EMPTY_LINES: usize = 4;

/// Gunicorn's `--header-map` setting: what to do with header fields whose name contains `_`.
/// Under CGI/WSGI naming `Content_Length` and `Content-Length` would collide, which is a
/// smuggling vector. Set through [`Limits::header_map`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeaderMapPolicy {
    /// Leave such fields out of [`RequestHead::headers`] (gunicorn's default, like nginx).
    #[default]
    Drop,
    /// Reject the request with 400.
    Refuse,
    /// Keep them (the app must cope with the ambiguity).
    Dangerous,
}

#[derive(Clone, PartialEq, Eq)]
struct Field {
    name: Range<u32>,
    value: Range<u32>,
}

/// A parsed, validated request head. Owns a copy of its bytes; accessors borrow from it.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The head's bytes (from the request line to the blank line).
    buf: Box<[u8]>,
    method: Range<u32>,
    target: Range<u32>,
    path: Range<u32>,
    query: Range<u32>,
    version: Version,
    fields: Vec<Field>,
    framing: BodyFraming,
    keep_alive: bool,
    expects_continue: bool,
}

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHead")
            .field("method", &self.method())
            .field("target", &self.target())
            .field("version", &self.version)
            .field("fields", &self.fields.len())
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl RequestHead {
    fn bytes(&self, r: &Range<u32>) -> &[u8] {
        &self.buf[r.start as usize..r.end as usize]
    }

    /// A part that was proven UTF-8 while parsing (this runs for every field name on every
    /// `headers()` walk, so it does not validate again).
    fn text(&self, r: &Range<u32>) -> &str {
        let bytes = self.bytes(r);
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: `text` is only called with the method, target, path, query and field-name
        // ranges. The method and names are token characters (ASCII); the target was checked with
        // `str::from_utf8` and path/query split it at ASCII bytes, so each is valid UTF-8 too.
        // `buf` is immutable after parsing.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The method, as sent (case-sensitive).
    pub fn method(&self) -> &str {
        self.text(&self.method)
    }
    /// The request-target exactly as sent.
    pub fn target(&self) -> &str {
        self.text(&self.target)
    }
    /// The path part of the target (still percent-encoded; absolute-form reduced to its path,
    /// `/` when it has none; `*` for asterisk-form; empty for authority-form).
    pub fn path(&self) -> &str {
        let path = self.text(&self.path);
        if !path.is_empty() {
            path
        } else if self.target() == "*" {
            "*"
        } else if self.is_absolute_form() {
            "/"
        } else {
            path
        }
    }
    /// The query string without `?` (empty if none).
    pub fn query(&self) -> &str {
        self.text(&self.query)
    }
    /// The request line's HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }
    /// Header fields in order, names as sent, values without surrounding whitespace.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields
            .iter()
            .map(|f| (self.text(&f.name), self.bytes(&f.value)))
    }
    /// The first header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    /// How the request body is delimited.
    pub fn framing(&self) -> BodyFraming {
        self.framing
    }
    /// Whether the client allows the connection to persist (version default + `Connection`).
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }
    /// `Expect: 100-continue` was sent (other expectations are rejected with 417 while parsing).
    pub fn expects_continue(&self) -> bool {
        self.expects_continue
    }

    fn is_absolute_form(&self) -> bool {
        self.target().contains("://")
    }
}

/// Incremental head parser: remembers how far it has scanned so each call only looks at new bytes.
#[derive(Debug, Default)]
pub struct HeadParser {
    /// Bytes of the buffer already checked.
    scanned: usize,
    /// Start of the line being scanned.
    line_start: usize,
    /// Start of the request line (after tolerated leading empty lines).
    start: usize,
    leading_empty: usize,
    /// End of the request line's CRLF, once it has been seen.
    fields_start: Option<usize>,
    /// The request line, checked as soon as it is complete (offsets from `start`).
    request_line: Option<RequestLine>,
    /// Field lines seen so far.
    field_lines: usize,
    /// The request line, once seen, asked for HEAD.
    head_method: bool,
}

impl HeadParser {
    /// A parser at the start of a new head.
    pub fn new() -> Self {
        HeadParser::default()
    }

    /// Parse a head from the start of `buf` (which grows between calls; reset with [`HeadParser::new`]
    /// for the next request). `Complete(head, n)`: the head used `buf[..n]`.
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Parsed<RequestHead>, RequestError> {
        loop {
            // One pass finds line ends and proves there is no bare CR or LF before them.
            let Some(i) = memchr::memchr2(b'\r', b'\n', &buf[self.scanned..]) else {
                return self.wait_for_more(buf, buf.len(), limits);
            };
            let cr = self.scanned + i;
            match buf.get(cr + 1) {
                _ if buf[cr] == b'\n' => {
                    return Err(RequestError::BadRequest("line ending is not CRLF"))
                }
                Some(b'\n') => {}
                Some(_) => return Err(RequestError::BadRequest("bare CR in head")),
                // The LF may be in the next read; look at this CR again then.
                None => return self.wait_for_more(buf, cr, limits),
            }
            let next = cr + 2;
            self.scanned = next;
            if let Some(head) = self.take_line(buf, cr, limits)? {
                return Ok(Parsed::Complete(head, next));
            }
            self.line_start = next;
        }
    }

    /// The head is not all here: remember how far `buf` was scanned (up to `scanned`), and
    /// refuse a line already past its limit rather than wait for its end.
    fn wait_for_more(
        &mut self,
        buf: &[u8],
        scanned: usize,
        limits: &Limits,
    ) -> Result<Parsed<RequestHead>, RequestError> {
        self.scanned = scanned;
        self.note_head_method(buf);
        self.check_partial_line(limits)?;
        self.check_partial_method(buf)?;
        Ok(Parsed::Partial)
    }

    /// Act on one complete line of the head, `buf[self.line_start..cr]`: the request line, a
    /// field line, or the empty line that ends the head (then the head, parsed).
    fn take_line(
        &mut self,
        buf: &[u8],
        cr: usize,
        limits: &Limits,
    ) -> Result<Option<RequestHead>, RequestError> {
        let line = &buf[self.line_start..cr];
        let next = cr + 2;
        match self.fields_start {
            None if line.is_empty() => {
                self.leading_empty += 1;
                if self.leading_empty > MAX_LEADING_EMPTY_LINES {
                    return Err(RequestError::BadRequest(
                        "too many empty lines before request",
                    ));
                }
                self.start = next;
            }
            None => {
                self.note_head_method(buf);
                if line.len() > limits.request_line() {
                    return Err(RequestError::UriTooLong);
                }
                // Checked now, so a bogus request line is refused without waiting for more.
                self.request_line = Some(parse_request_line(line)?);
                self.fields_start = Some(next);
            }
            Some(_) if line.is_empty() => return self.finish(buf, next, limits).map(Some),
            Some(_) => {
                // Gunicorn counts a field line with its CRLF.
                if line.len() + 2 > limits.field_size() {
                    return Err(RequestError::HeadersTooLarge("header field too long"));
                }
                self.field_lines += 1;
                if self.field_lines > limits.fields() {
                    return Err(RequestError::HeadersTooLarge("too many header fields"));
                }
            }
        }
        Ok(None)
    }

    /// Whether the request line, as far as it has been read, asks for HEAD: a response to it, an
    /// error response included, must not have a body. Meaningful after an error too.
    pub fn is_head_request(&self) -> bool {
        self.head_method
    }

    /// While the request line is being read, remember whether it asks for HEAD (so that even a
    /// line refused before it ends, as too long, is answered without a body).
    fn note_head_method(&mut self, buf: &[u8]) {
        if self.fields_start.is_none() {
            self.head_method = buf[self.line_start..].starts_with(b"HEAD ");
        }
    }

    /// Fail as soon as an unterminated line is certain to break a limit, so a client cannot make
    /// us buffer more than the limits allow.
    fn check_partial_line(&self, limits: &Limits) -> Result<(), RequestError> {
        // The scan stopped at the end or at a final CR: the line so far has no CR or LF, and
        // it is the shortest this line can still be.
        let content = self.scanned - self.line_start;
        match self.fields_start {
            None if content > limits.request_line() => Err(RequestError::UriTooLong),
            Some(_) if content + 2 > limits.field_size() => {
                Err(RequestError::HeadersTooLarge("header field too long"))
            }
            _ => Ok(()),
        }
    }

    /// Refuse a request line whose method, as far as it has been read, is already invalid: a
    /// client speaking something else (a TLS handshake, binary junk) is answered at once rather
    /// than when the header timeout cuts it.
    fn check_partial_method(&self, buf: &[u8]) -> Result<(), RequestError> {
        if self.fields_start.is_some() {
            return Ok(());
        }
        let line = &buf[self.line_start..self.scanned];
        let method = line.split(|&b| b == b' ').next().unwrap_or_default();
        match method.iter().all(|&b| is_method_byte(b)) {
            true => Ok(()),
            false => Err(RequestError::BadRequest("invalid method")),
        }
    }

    fn finish(&self, buf: &[u8], end: usize, limits: &Limits) -> Result<RequestHead, RequestError> {
        let fields_start = self.fields_start.unwrap_or(end);
        let head = &buf[self.start..end];
        let base = self.start;

        let rl = self
            .request_line
            .clone()
            .ok_or(RequestError::BadRequest("no request line"))?;

        // The field block, including the final CRLF that httparse expects.
        let raw = parse_field_block(&buf[fields_start..end], self.field_lines)?;
        let (fields, sem) = read_fields(&raw, buf, base, limits)?;

        let version = rl.version;
        let framing = sem.framing(version, limits)?;
        if version == Version::Http11 && sem.hosts == 0 {
            return Err(RequestError::BadRequest("HTTP/1.1 request without Host"));
        }
        let keep_alive = match version {
            Version::Http11 => !sem.close,
            Version::Http10 => sem.keep_alive && !sem.close,
        };
        let line_at = self.start;
        let shift = |r: Range<usize>| relative(line_at + r.start..line_at + r.end, base);
        Ok(RequestHead {
            buf: head.into(),
            method: shift(rl.method),
            target: shift(rl.target),
            path: shift(rl.path),
            query: shift(rl.query),
            version,
            fields,
            framing,
            keep_alive,
            // RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
            expects_continue: sem.expect_continue && version == Version::Http11,
        })
    }
}

/// A range of `buf` as offsets into the head, which starts at `base`.
fn relative(r: Range<usize>, base: usize) -> Range<u32> {
    (r.start - base) as u32..(r.end - base) as u32
}

/// Split the field block (`count` lines and the final CRLF) into fields with httparse.
fn parse_field_block(
    block: &[u8],
    count: usize,
) -> Result<Vec<httparse::Header<'_>>, RequestError> {
    let mut raw = vec![httparse::EMPTY_HEADER; count];
    match httparse::parse_headers(block, &mut raw) {
        Ok(httparse::Status::Complete((n, _))) if n == block.len() => Ok(raw),
        Ok(_) => Err(RequestError::BadRequest("malformed header block")),
        Err(httparse::Error::HeaderName) => Err(RequestError::BadRequest(
            "invalid header name (or obsolete line folding)",
        )),
        Err(httparse::Error::HeaderValue) => Err(RequestError::BadRequest("invalid header value")),
        Err(_) => Err(RequestError::BadRequest("malformed header line")),
    }
}

/// Walk the parsed fields: apply the header-map policy to names with `_`, note what each field
/// means, and record where each name and value sits in the head that starts at `base` in `buf`.
fn read_fields(
    raw: &[httparse::Header<'_>],
    buf: &[u8],
    base: usize,
    limits: &Limits,
) -> Result<(Vec<Field>, Semantics), RequestError> {
    let mut fields = Vec::with_capacity(raw.len());
    let mut sem = Semantics::default();
    for h in raw.iter().take_while(|h| !h.name.is_empty()) {
        let name = h.name.as_bytes();
        let value = trim_ows(h.value);
        // httparse admits exactly RFC 9110's tchar in names and VCHAR / SP / HTAB / obs-text
        // in values (and we removed every bare CR and LF before it ran).
        debug_assert!(name.iter().all(|&b| is_tchar(b)), "{name:?}");
        debug_assert!(value.iter().all(|&b| is_field_vchar(b)), "{value:?}");
        if name.contains(&b'_') {
            match limits.header_map {
                HeaderMapPolicy::Drop => continue,
                HeaderMapPolicy::Refuse => {
                    return Err(RequestError::BadRequest("underscore in header name"))
                }
                HeaderMapPolicy::Dangerous => {}
            }
        }
        sem.field(h.name, value)?;
        let name_at = h.name.as_ptr() as usize - buf.as_ptr() as usize;
        let value_at = value.as_ptr() as usize - buf.as_ptr() as usize;
        fields.push(Field {
            name: relative(name_at..name_at + name.len(), base),
            value: relative(value_at..value_at + value.len(), base),
        });
    }
    Ok((fields, sem))
}

#[derive(Debug, Clone)]
struct RequestLine {
    method: Range<usize>,
    target: Range<usize>,
    path: Range<usize>,
    query: Range<usize>,
    version: Version,
}

fn parse_request_line(line: &[u8]) -> Result<RequestLine, RequestError> {
    let sp1 = line.iter().position(|&b| b == b' ');
    let method_end = sp1.unwrap_or(line.len());
    let method = &line[..method_end];
    if method.is_empty() || !method.iter().all(|&b| is_method_byte(b)) {
        return Err(RequestError::BadRequest("invalid method"));
    }
    let Some(sp1) = sp1 else {
        return Err(RequestError::BadRequest("malformed request line"));
    };
    let rest = &line[sp1 + 1..];
    let Some(sp2) = rest.iter().position(|&b| b == b' ') else {
        return Err(RequestError::BadRequest("malformed request line"));
    };
    let target = sp1 + 1..sp1 + 1 + sp2;
    let version = &rest[sp2 + 1..];
    if target.is_empty() {
        return Err(RequestError::BadRequest("malformed request line"));
    }
    if !line[target.clone()].iter().all(|&b| b > b' ' && b != 0x7f) {
        return Err(RequestError::BadRequest(
            "invalid character in request-target",
        ));
    }
    let version = parse_version(version)?;
    let text = std::str::from_utf8(&line[target.clone()])
        .map_err(|_| RequestError::BadRequest("request-target is not valid UTF-8"))?;
    let parts = parse_target(text, method)?;
    let at = target.start;
    Ok(RequestLine {
        method: 0..method_end,
        path: at + parts.path.start..at + parts.path.end,
        query: at + parts.query.start..at + parts.query.end,
        target,
        version,
    })
}

/// A byte a method may hold. Methods are case-sensitive and every registered one is upper case;
/// gunicorn refuses lower case and `#` so that e.g. `get` cannot reach an app that only checks
/// `GET`.
fn is_method_byte(b: u8) -> bool {
    is_tchar(b) && !b.is_ascii_lowercase() && b != b'#'
}

/// `HTTP/x.y` with single digits; a well-formed version other than 1.0/1.1 is 505.
fn parse_version(v: &[u8]) -> Result<Version, RequestError> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(RequestError::VersionNotSupported)
        }
        _ => Err(RequestError::BadRequest("malformed HTTP version")),
    }
}

/// The fields that decide how the message is framed and handled, collected while walking them.
#[derive(Default)]
struct Semantics {
    content_length: Option<u64>,
    /// Transfer codings in order, over all Transfer-Encoding fields.
    transfer_codings: Vec<String>,
    has_te: bool,
    hosts: usize,
    content_types: usize,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Semantics {
    fn field(&mut self, name: &str, value: &[u8]) -> Result<(), RequestError> {
        if name.eq_ignore_ascii_case("content-length") {
            if self.content_length.is_some() {
                return Err(RequestError::BadRequest("more than one Content-Length"));
            }
            self.content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.has_te = true;
            for coding in value.split(|&b| b == b',') {
                let coding = trim_ows(coding);
                if coding.is_empty() {
                    return Err(RequestError::BadRequest(
                        "empty element in Transfer-Encoding",
                    ));
                }
                self.transfer_codings
                    .push(String::from_utf8_lossy(coding).to_ascii_lowercase());
            }
        } else if name.eq_ignore_ascii_case("host") {
            self.hosts += 1;
            if self.hosts > 1 {
                return Err(RequestError::BadRequest("more than one Host"));
            }
            check_host_header(value)?;
        } else if name.eq_ignore_ascii_case("content-type") {
            // Two types make the body's meaning depend on which one a hop reads.
            self.content_types += 1;
            if self.content_types > 1 {
                return Err(RequestError::BadRequest("more than one Content-Type"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                self.expect_continue = true;
            } else {
                return Err(RequestError::ExpectationFailed);
            }
        }
        Ok(())
    }

    fn framing(&self, version: Version, limits: &Limits) -> Result<BodyFraming, RequestError> {
        if self.has_te {
            if version == Version::Http10 {
                return Err(RequestError::BadRequest(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if self.content_length.is_some() {
                return Err(RequestError::BadRequest(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            let (last, rest) = self
                .transfer_codings
                .split_last()
                .expect("non-empty: checked per field");
            if last != "chunked" || rest.iter().any(|c| c == "chunked") {
                return Err(RequestError::BadRequest(
                    "chunked is not the final transfer coding exactly once",
                ));
            }
            if !rest.is_empty() {
                return Err(RequestError::NotImplemented(
                    "transfer coding other than chunked",
                ));
            }
            return Ok(BodyFraming::Chunked);
        }
        match self.content_length {
            None | Some(0) => Ok(BodyFraming::Empty),
            Some(n) if limits.body.is_some_and(|max| n > max) => Err(RequestError::BodyTooLarge),
            Some(n) => Ok(BodyFraming::Length(n)),
        }
    }
}

/// `1*DIGIT` only: no sign, no spaces, no list form, no overflow.
pub(crate) fn parse_content_length(value: &[u8]) -> Result<u64, RequestError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::BadRequest("invalid Content-Length"));
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(RequestError::BadRequest("Content-Length overflows"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each call looks only at bytes it has not seen: after every partial call the scan position
    /// is at the end of the buffer (or on a final CR whose LF has not arrived).
    #[test]
    fn scanning_resumes_where_it_stopped() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789\r\n\r\n";
        let limits = Limits::default();
        let mut p = HeadParser::new();
        let mut last = 0;
        for end in 1..raw.len() {
            assert_eq!(p.parse(&raw[..end], &limits).unwrap(), Parsed::Partial);
            let expect = if raw[end - 1] == b'\r' { end - 1 } else { end };
            assert_eq!(p.scanned, expect, "at {end}");
            assert!(p.scanned >= last);
            last = p.scanned;
        }
        assert!(matches!(p.parse(raw, &limits).unwrap(), Parsed::Complete(_, n) if n == raw.len()));
    }

    fn parse_all(
        raw: &[u8],
        limits: &Limits,
        map: HeaderMapPolicy,
    ) -> Result<RequestHead, RequestError> {
        let limits = Limits {
            header_map: map,
            ..limits.clone()
        };
        match HeadParser::new().parse(raw, &limits)? {
            Parsed::Complete(h, _) => Ok(h),
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn limits_are_exact() {
        let limits = Limits {
            request_line: 20,
            fields: 2,
            field_size: 10,
            body: None,
            ..Limits::default()
        };
        // "GET /123456 HTTP/1.0" is 20 bytes.
        assert!(parse_all(
            b"GET /123456 HTTP/1.0\r\n\r\n",
            &limits,
            HeaderMapPolicy::Drop
        )
        .is_ok());
        let e = parse_all(
            b"GET /1234567 HTTP/1.0\r\n\r\n",
            &limits,
            HeaderMapPolicy::Drop,
        );
        assert_eq!(e.unwrap_err(), RequestError::UriTooLong);
        // "A: 123456" + CRLF is 11 bytes, one over.
        let ok = b"GET / HTTP/1.0\r\nA: 12345\r\nB: 1\r\n\r\n";
        assert!(parse_all(ok, &limits, HeaderMapPolicy::Drop).is_ok());
        let e = parse_all(
            b"GET / HTTP/1.0\r\nA: 123456\r\n\r\n",
            &limits,
            HeaderMapPolicy::Drop,
        );
        assert_eq!(e.unwrap_err().status(), 431);
        let e = parse_all(
            b"GET / HTTP/1.0\r\nA: 1\r\nB: 1\r\nC: 1\r\n\r\n",
            &limits,
            HeaderMapPolicy::Drop,
        );
        assert_eq!(e.unwrap_err().status(), 431);
        // 0 means gunicorn's maxima, never unbounded.
        let zero = Limits {
            request_line: 0,
            fields: 0,
            field_size: 0,
            body: None,
            ..Limits::default()
        };
        let long = format!("GET /{} HTTP/1.0\r\n\r\n", "a".repeat(9000));
        assert_eq!(
            parse_all(long.as_bytes(), &zero, HeaderMapPolicy::Drop).unwrap_err(),
            RequestError::UriTooLong
        );
    }

    #[test]
    fn max_head_len_bounds_what_the_parser_accepts() {
        let zero = Limits {
            request_line: 0,
            fields: 0,
            field_size: 0,
            body: None,
            ..Limits::default()
        };
        assert_eq!(zero.max_head_len(), 8 + 8190 + 2 + 32768 * 8190 + 2);
        let l = Limits {
            request_line: 30,
            fields: 2,
            field_size: 12,
            body: None,
            ..Limits::default()
        };
        assert_eq!(l.max_head_len(), 8 + 30 + 2 + 2 * 12 + 2);
        // The largest head these limits accept is exactly that long.
        let head = format!(
            "\r\n\r\n\r\n\r\nGET /{} HTTP/1.0\r\nA: 1234567\r\nB: 1234567\r\n\r\n",
            "a".repeat(30 - 14)
        );
        assert_eq!(head.len(), l.max_head_len());
        assert!(parse_all(head.as_bytes(), &l, HeaderMapPolicy::Drop).is_ok());
    }

    #[test]
    fn leading_empty_lines_are_tolerated_but_bounded() {
        let limits = Limits::default();
        let (h, n) = match HeadParser::new().parse(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n", &limits) {
            Ok(Parsed::Complete(h, n)) => (h, n),
            other => panic!("{other:?}"),
        };
        assert_eq!((h.method(), n), ("GET", 22));
        let many = b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        assert!(HeadParser::new().parse(many, &limits).is_err());
    }

    #[test]
    fn header_map_policies() {
        let raw = b"GET / HTTP/1.0\r\nContent_Length: 5\r\nX-A: 1\r\n\r\n";
        let l = Limits::default();
        let names = |h: RequestHead| h.headers().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(parse_all(raw, &l, HeaderMapPolicy::Drop).unwrap()),
            ["X-A"]
        );
        assert_eq!(
            names(parse_all(raw, &l, HeaderMapPolicy::Dangerous).unwrap()),
            ["Content_Length", "X-A"]
        );
        assert_eq!(
            parse_all(raw, &l, HeaderMapPolicy::Refuse)
                .unwrap_err()
                .status(),
            400
        );
        // Dangerous keeps the name, but it never counts as Content-Length.
        let h = parse_all(raw, &l, HeaderMapPolicy::Dangerous).unwrap();
        assert_eq!(h.framing(), BodyFraming::Empty);
    }

    #[test]
    fn a_refused_head_request_is_known_as_one() {
        let limits = Limits::default();
        for (raw, head) in [
            (&b"HEAD / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n"[..], true),
            (b"HEAD / HTTP/1.1\r\n\r\n", true),
            (b"HEAD / HTTP/3.0\r\n", true),
            (
                format!("HEAD /{} HTTP/1.1", "a".repeat(5000)).as_bytes(),
                true,
            ),
            (
                format!("HEAD /{} HTTP/1.1\r\n", "a".repeat(5000)).as_bytes(),
                true,
            ),
            (b"GET / HTTP/1.1\r\n\r\n", false),
            (b"HEADER / HTTP/1.1\r\n\r\n", false),
        ] {
            let mut p = HeadParser::new();
            assert!(p.parse(raw, &limits).is_err());
            assert_eq!(
                p.is_head_request(),
                head,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn a_bad_request_line_is_refused_before_the_head_ends() {
        let limits = Limits::default();
        for raw in [
            &b"GET / FTP/1.1\r\n"[..],
            b"GE T / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(
                HeadParser::new().parse(raw, &limits).unwrap_err().status(),
                400
            );
        }
    }

    #[test]
    fn a_method_that_cannot_be_one_is_refused_before_its_line_ends() {
        let limits = Limits::default();
        // A TLS ClientHello's first bytes, lower case, a NUL: no line end is needed to refuse.
        for raw in [&b"\x16\x03\x01\x02\x00"[..], b"get", b"GET\0", b"\r\nPO#"] {
            let e = HeadParser::new().parse(raw, &limits).unwrap_err();
            assert_eq!(e, RequestError::BadRequest("invalid method"), "{raw:?}");
        }
        // A valid method, whole or cut short, and an odd target still wait for the line.
        for raw in [&b"GE"[..], b"M-SEARCH", b"GET /\x01", b"\r\n", b"POST /a b"] {
            let parsed = HeadParser::new().parse(raw, &limits);
            assert_eq!(parsed.unwrap(), Parsed::Partial, "{raw:?}");
        }
    }
}
