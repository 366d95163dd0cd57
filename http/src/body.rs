//! Request bodies: Content-Length and a strict, bounded chunked decoder (RFC 9112 §7.1).
//!
//! The decoder consumes every byte it is given until the body ends (partial size and trailer
//! lines are kept inside, bounded), so a caller never has to re-feed bytes; it stops exactly at
//! the end of the body, leaving a pipelined next request untouched.

use crate::chars::{is_field_vchar, is_tchar, trim_ows};
use crate::error::RequestError;
use crate::types::{BodyFraming, Limits};

/// Longest chunk-size line (size plus extensions) we buffer.
const MAX_CHUNK_LINE: usize = 4096;

/// Size-line bytes beyond the first 16 (extensions, leading zeros) allowed over a whole body.
/// Every chunk but the last carries data, so with this the framing overhead stays proportional
/// to the body (and its limit) instead of being padded without end.
const MAX_SIZE_LINE_PADDING: usize = 64 * 1024;

/// Fields that must not be sent in a trailer (RFC 9110 §6.5.1): framing, routing, request
/// modifiers, authentication, cookies and connection options. Trailers are never merged into the
/// head anyway; refusing these makes probing for a hop that does merge them fail loudly. Content
/// metadata (Content-Type, ...) is let through as gunicorn does: in a trailer it changes nothing.
const FORBIDDEN_TRAILERS: &[&str] = &[
    "authorization",
    "cache-control",
    "connection",
    "content-length",
    "cookie",
    "expect",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length {
        remaining: u64,
    },
    /// Reading a chunk-size line (into `line`).
    Size,
    Data {
        remaining: u64,
    },
    /// After chunk data: expecting CR then LF.
    DataCr,
    DataLf,
    /// Reading trailer lines (into `line`) until the empty one.
    Trailer,
    Done,
}

/// Decodes a request body given its framing. Pure: bytes in, body bytes out.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
    /// The body limit (413 once the decoded size would pass it).
    max: Option<u64>,
    decoded: u64,
    /// Size-line bytes beyond 16 per line seen so far.
    padding: usize,
    /// The unterminated size or trailer line so far.
    line: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    trailer_line_max: usize,
    trailer_fields_max: usize,
}

impl BodyDecoder {
    /// A decoder for a body of this `framing`, held to the body and trailer limits in `limits`.
    pub fn new(framing: BodyFraming, limits: &Limits) -> Self {
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) => State::Length { remaining: n },
            BodyFraming::Chunked => State::Size,
        };
        BodyDecoder {
            state,
            max: limits.body,
            decoded: 0,
            padding: 0,
            line: Vec::new(),
            trailers: Vec::new(),
            trailer_line_max: limits.field_size(),
            trailer_fields_max: limits.fields(),
        }
    }

    /// Decode from `input`, appending body bytes to `out`; returns how many input bytes were used.
    /// Call again with more input until [`BodyDecoder::is_done`]. All of `input` is used unless
    /// the body ends inside it.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, RequestError> {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            pos += match self.state {
                State::Done => break,
                State::Length { remaining } => self.take_length(remaining, rest, out)?,
                State::Data { remaining } => self.take_chunk_data(remaining, rest, out),
                State::DataCr | State::DataLf => self.take_data_crlf(rest[0])?,
                State::Size | State::Trailer => self.take_line(rest)?,
            };
        }
        Ok(pos)
    }

    /// Content-Length body bytes: as many of `rest` as the body still has. Returns bytes used.
    fn take_length(
        &mut self,
        remaining: u64,
        rest: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, RequestError> {
        self.check_limit(remaining)?;
        let n = take(remaining, rest.len());
        out.extend_from_slice(&rest[..n]);
        self.decoded += n as u64;
        let remaining = remaining - n as u64;
        self.state = if remaining == 0 {
            State::Done
        } else {
            State::Length { remaining }
        };
        Ok(n)
    }

    /// A chunk's data: as many of `rest` as the chunk still has. Returns bytes used.
    fn take_chunk_data(&mut self, remaining: u64, rest: &[u8], out: &mut Vec<u8>) -> usize {
        let n = take(remaining, rest.len());
        out.extend_from_slice(&rest[..n]);
        let remaining = remaining - n as u64;
        self.state = if remaining == 0 {
            State::DataCr
        } else {
            State::Data { remaining }
        };
        n
    }

    /// One byte of the CRLF that must follow a chunk's data. Returns bytes used (one).
    fn take_data_crlf(&mut self, byte: u8) -> Result<usize, RequestError> {
        let want = if self.state == State::DataCr {
            b'\r'
        } else {
            b'\n'
        };
        if byte != want {
            return Err(RequestError::BadRequest("chunk data not followed by CRLF"));
        }
        self.state = if want == b'\r' {
            State::DataLf
        } else {
            State::Size
        };
        Ok(1)
    }

    /// A chunk-size or trailer line, collected in `self.line` until its LF arrives, then acted
    /// on. Returns bytes used.
    fn take_line(&mut self, rest: &[u8]) -> Result<usize, RequestError> {
        let max = if self.state == State::Size {
            MAX_CHUNK_LINE
        } else {
            self.trailer_line_max
        };
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if self.line.len() + rest.len() > max {
                return Err(self.line_too_long());
            }
            self.line.extend_from_slice(rest);
            return Ok(rest.len());
        };
        if self.line.len() + lf + 1 > max {
            return Err(self.line_too_long());
        }
        self.line.extend_from_slice(&rest[..lf]);
        let line = std::mem::take(&mut self.line);
        let Some(line) = line.strip_suffix(b"\r") else {
            return Err(RequestError::BadRequest(
                "line ending in chunked body is not CRLF",
            ));
        };
        if line.contains(&b'\r') {
            return Err(RequestError::BadRequest("bare CR in chunked body"));
        }
        if self.state == State::Size {
            self.size_line(line)?;
        } else {
            self.trailer_line(line)?;
        }
        Ok(lf + 1)
    }

    /// Whether the whole body (and for chunked, its trailers) has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// For a Content-Length body, whose bytes arrive as they are: how many of the next `max`
    /// input bytes belong to the body, so a caller can read them straight into its own buffer
    /// (then it reports them with [`BodyDecoder::consume_raw`]). `None` for a chunked body, whose
    /// bytes must go through [`BodyDecoder::decode`].
    pub fn raw_window(&self, max: usize) -> Option<usize> {
        match self.state {
            State::Length { remaining } => Some(take(remaining, max)),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Account for `n` body bytes taken within [`BodyDecoder::raw_window`].
    pub fn consume_raw(&mut self, n: usize) {
        if let State::Length { remaining } = self.state {
            debug_assert!(n as u64 <= remaining);
            let remaining = remaining - (n as u64).min(remaining);
            self.decoded += n as u64;
            self.state = if remaining == 0 {
                State::Done
            } else {
                State::Length { remaining }
            };
        }
    }

    /// Body bytes still expected when the framing is a length (for EOF errors and draining).
    pub fn remaining_hint(&self) -> Option<u64> {
        match self.state {
            State::Length { remaining } => Some(remaining),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Trailer fields of a chunked body (kept apart from the head's headers).
    pub fn trailers(&self) -> &[(String, Vec<u8>)] {
        &self.trailers
    }

    fn check_limit(&self, more: u64) -> Result<(), RequestError> {
        match self.max {
            Some(max) if self.decoded.saturating_add(more) > max => Err(RequestError::BodyTooLarge),
            _ => Ok(()),
        }
    }

    fn line_too_long(&self) -> RequestError {
        if self.state == State::Size {
            RequestError::BadRequest("chunk size line too long")
        } else {
            RequestError::HeadersTooLarge("trailer field too long")
        }
    }

    fn size_line(&mut self, line: &[u8]) -> Result<(), RequestError> {
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err(RequestError::BadRequest("invalid chunk size"));
        }
        let mut size: u64 = 0;
        for &d in &line[..digits] {
            let v = (d as char).to_digit(16).unwrap_or(0);
            size = size
                .checked_mul(16)
                .and_then(|s| s.checked_add(u64::from(v)))
                .ok_or(RequestError::BadRequest("chunk size overflows"))?;
        }
        self.padding += line.len().saturating_sub(16);
        if self.padding > MAX_SIZE_LINE_PADDING {
            return Err(RequestError::BadRequest(
                "chunk size lines too long in total (extensions or padding)",
            ));
        }
        check_extensions(&line[digits..])?;
        if size == 0 {
            self.state = State::Trailer;
        } else {
            self.check_limit(size)?;
            self.decoded += size;
            self.state = State::Data { remaining: size };
        }
        Ok(())
    }

    fn trailer_line(&mut self, line: &[u8]) -> Result<(), RequestError> {
        if line.is_empty() {
            self.state = State::Done;
            return Ok(());
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(RequestError::BadRequest("trailer line without colon"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(RequestError::BadRequest("invalid trailer field name"));
        }
        let value = trim_ows(&line[colon + 1..]);
        if !value.iter().all(|&b| is_field_vchar(b)) {
            return Err(RequestError::BadRequest(
                "control character in trailer value",
            ));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if FORBIDDEN_TRAILERS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f))
        {
            return Err(RequestError::BadRequest("field not allowed in a trailer"));
        }
        if self.trailers.len() >= self.trailer_fields_max {
            return Err(RequestError::HeadersTooLarge("too many trailer fields"));
        }
        self.trailers.push((name, value.to_vec()));
        Ok(())
    }
}

fn take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`. Extensions carry nothing we
/// use; they are checked so that no two parsers can disagree about where the size line ends.
fn check_extensions(mut s: &[u8]) -> Result<(), RequestError> {
    let bad = Err(RequestError::BadRequest("invalid chunk extension"));
    let skip_ws = |s: &mut &[u8]| {
        while let [b' ' | b'\t', rest @ ..] = *s {
            *s = rest;
        }
    };
    let token = |s: &mut &[u8]| {
        let n = s.iter().take_while(|&&b| is_tchar(b)).count();
        let t = &s[..n];
        *s = &s[n..];
        t.len()
    };
    // Whitespace after the size only makes sense before an extension.
    if s.first().is_some_and(|b| *b == b' ' || *b == b'\t') && !s.contains(&b';') {
        return Err(RequestError::BadRequest("invalid chunk size"));
    }
    while !s.is_empty() {
        skip_ws(&mut s);
        let [b';', rest @ ..] = s else { return bad };
        s = rest;
        skip_ws(&mut s);
        if token(&mut s) == 0 {
            return bad;
        }
        skip_ws(&mut s);
        if let [b'=', rest @ ..] = s {
            s = rest;
            skip_ws(&mut s);
            if let [b'"', rest @ ..] = s {
                s = rest;
                loop {
                    match s {
                        [b'"', rest @ ..] => {
                            s = rest;
                            break;
                        }
                        [b'\\', q, rest @ ..] if is_field_vchar(*q) => s = rest,
                        [c, rest @ ..] if is_field_vchar(*c) && *c != b'\\' => s = rest,
                        _ => return bad,
                    }
                }
            } else if token(&mut s) == 0 {
                return bad;
            }
        }
    }
    Ok(())
}
