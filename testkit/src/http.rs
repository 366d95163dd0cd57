//! The one HTTP/1.1 response parser of the tests: over bytes already read ([`parse_response`],
//! [`parse_all_responses`]) and over a live connection ([`Client`]), which reads exactly as much
//! as each response needs so the next one stays buffered.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test client waits for bytes before failing: only a guard against a hung test.
const READ_GUARD: Duration = Duration::from_secs(30);

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The status line's version, e.g. `HTTP/1.1`.
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: String,
    /// Header fields in the order sent, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// How the body was framed: "length", "chunked", "close" or "none".
    pub framing: &'static str,
}

impl Resp {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parse a response head off the front of `bytes`: the response without its body, and the
/// head's length. `None` while incomplete.
fn parse_head(bytes: &[u8]) -> Option<(Resp, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..end - 4]).expect("a UTF-8 response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?.to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let reason = parts.next().unwrap_or("").to_string();
    let headers = lines
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("header line {l:?}"));
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    let resp = Resp {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
        framing: "none",
    };
    Some((resp, end))
}

/// How the body after `head` is delimited (RFC 9112 section 6.3).
fn framing_of(head: &Resp, head_request: bool) -> &'static str {
    let status = head.status;
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        "none"
    } else if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        "chunked"
    } else if head.header("content-length").is_some() {
        "length"
    } else {
        "close"
    }
}

/// The body framed as `framing` at the front of `rest` and the bytes it used; `None` while
/// incomplete. A "close" body is all of `rest`: the caller has read to the end.
fn parse_body(head: &Resp, framing: &str, rest: &[u8]) -> Option<(Vec<u8>, usize)> {
    match framing {
        "none" => Some((Vec::new(), 0)),
        "chunked" => parse_chunked(rest),
        "length" => {
            let len: usize = head.header("content-length")?.parse().ok()?;
            (rest.len() >= len).then(|| (rest[..len].to_vec(), len))
        }
        _ => Some((rest.to_vec(), rest.len())),
    }
}

/// A chunked body (trailers skipped) and the bytes it used, once the last chunk is in.
fn parse_chunked(rest: &[u8]) -> Option<(Vec<u8>, usize)> {
    let line_end = |from: usize| {
        rest[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| i + from)
    };
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let end = line_end(pos)?;
        let size_line = std::str::from_utf8(&rest[pos..end]).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16)
            .unwrap_or_else(|_| panic!("chunk size line {size_line:?}"));
        pos = end + 2;
        if size == 0 {
            // Trailer fields up to the blank line.
            loop {
                let end = line_end(pos)?;
                let blank = end == pos;
                pos = end + 2;
                if blank {
                    return Some((body, pos));
                }
            }
        }
        if rest.len() < pos + size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[pos..pos + size]);
        pos += size + 2;
    }
}

/// Parse one response from the front of `bytes`; returns it and the bytes it used, `None` while
/// incomplete. Handles Content-Length, chunked, and read-until-close bodies (which take the rest
/// of `bytes`). `head_request`: no body expected.
pub fn parse_response(bytes: &[u8], head_request: bool) -> Option<(Resp, usize)> {
    let (mut resp, head_len) = parse_head(bytes)?;
    resp.framing = framing_of(&resp, head_request);
    let (body, used) = parse_body(&resp, resp.framing, &bytes[head_len..])?;
    resp.body = body;
    Some((resp, head_len + used))
}

/// Parse every response in `bytes` (pipelining / keep-alive), in order.
pub fn parse_all_responses(mut bytes: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while let Some((resp, used)) = parse_response(bytes, false) {
        out.push(resp);
        bytes = &bytes[used..];
        if bytes.is_empty() {
            break;
        }
    }
    out
}

/// Connect to `addr` with a read timeout guarding against a hung test.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_GUARD)).unwrap();
    s
}

/// Connect to `addr` as a client that absorbs little of what it does not read: a small receive
/// buffer and a small segment size. The segment size is what keeps the server's send buffer
/// small, which Linux otherwise grows on loopback (64 KiB segments) to megabytes; so unread,
/// this takes in about 100 KB before the server's writes block.
pub fn connect_unabsorbing(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("a TCP socket");
    // Before the handshake: both are announced in it.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_tcp_mss(1000).unwrap();
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(READ_GUARD)).unwrap();
    stream
}

/// Whether the server's close (or reset) has reached `stream`: EOF is readable, with no bytes
/// before it. Bytes nobody asked for count as closed too (the connection is unusable).
pub fn peer_closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Everything the server sends on `conn` until it closes (or resets) it.
pub fn read_until_closed(conn: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    bytes
}

/// Send raw bytes, half-close, read everything until the server closes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Send one request (should carry `Connection: close`) and parse the single response.
pub fn request(addr: SocketAddr, request: &[u8]) -> Resp {
    let bytes = raw_exchange(addr, request);
    let (resp, _) = parse_response(&bytes, false)
        .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(&bytes)));
    resp
}

/// `GET path` with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// `POST path` with `Connection: close` and a Content-Length body.
pub fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Resp {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    request(addr, &req)
}

/// A raw client on a live connection that reads exactly what the server sends, one response at
/// a time, keeping what follows for the next.
#[derive(Debug)]
pub struct Client {
    /// The connection (for shutdowns, peeks and raw reads/writes).
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connect to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::on(connect(addr))
    }

    /// Read responses off a connection made elsewhere.
    pub fn on(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Send raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Read one response head (interim 1xx included), without its body.
    pub fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        loop {
            if let Some((head, used)) = parse_head(&self.buf) {
                self.buf.drain(..used);
                return Ok((head.status, head.headers));
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Read exactly `n` bytes (of a body being checked as it streams).
    pub fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Read one complete final response; `head_request` means no body follows whatever it says.
    pub fn read_response_for(&mut self, head_request: bool) -> io::Result<Resp> {
        loop {
            let at_eof = self.fill_unless_complete(head_request)?;
            if let Some((resp, used)) = parse_response(&self.buf, head_request) {
                if resp.framing != "close" || at_eof {
                    assert!(resp.status >= 200, "unexpected interim response {resp:?}");
                    self.buf.drain(..used);
                    return Ok(resp);
                }
            } else if at_eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed mid-response: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Read more unless the buffer already holds a response complete without EOF; true at EOF.
    fn fill_unless_complete(&mut self, head_request: bool) -> io::Result<bool> {
        match parse_response(&self.buf, head_request) {
            Some((resp, _)) if resp.framing != "close" => Ok(false),
            _ => Ok(self.fill()? == 0),
        }
    }

    /// [`Client::read_response_for`] a request that was not HEAD, failing the test on errors.
    pub fn read_response(&mut self) -> Resp {
        self.read_response_for(false).unwrap()
    }

    /// True once the server has closed: EOF (or a reset) with no bytes left unread.
    pub fn at_eof(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match self.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }

    /// Everything until the server closes, including bytes already buffered.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().unwrap() > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// One request, one response.
    pub fn request(&mut self, raw: &[u8]) -> Resp {
        self.send(raw);
        self.read_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_framing_is_parsed_and_what_follows_is_left() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nde\r\n1\r\nf\r\n0\r\nT: 1\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.0 200 OK\r\n\r\nuntil close";
        let all = parse_all_responses(bytes);
        let seen: Vec<(&str, u16, String)> = all
            .iter()
            .map(|r| (r.framing, r.status, r.text()))
            .collect();
        assert_eq!(
            seen,
            [
                ("length", 200, "abc".to_string()),
                ("chunked", 200, "def".to_string()),
                ("none", 204, String::new()),
                ("close", 200, "until close".to_string()),
            ]
        );
        assert_eq!(all[2].reason, "No Content");
        assert_eq!(all[3].version, "HTTP/1.0");
    }

    #[test]
    fn an_incomplete_response_is_none_and_head_requests_have_no_body() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert!(
                parse_response(&full[..cut], false).is_none(),
                "cut at {cut}"
            );
        }
        let (resp, used) = parse_response(&full[..full.len() - 5], true).unwrap();
        assert_eq!((resp.framing, used), ("none", full.len() - 5));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n";
        assert!(
            parse_response(chunked, false).is_none(),
            "no blank line yet"
        );
    }

    #[test]
    fn the_client_reads_one_response_at_a_time_from_a_trickle() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let bytes =
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
HTTP/1.1 200 OK\r\n\r\nthe rest";
            for piece in bytes.chunks(7) {
                conn.write_all(piece).unwrap();
                conn.flush().unwrap();
            }
        });
        let mut client = Client::connect(addr);
        assert_eq!(client.read_head().unwrap().0, 100);
        let first = client.read_response();
        assert_eq!((first.framing, first.text().as_str()), ("length", "ok"));
        let second = client.read_response();
        assert_eq!(
            (second.framing, second.text().as_str()),
            ("close", "the rest")
        );
        assert!(client.at_eof());
        server.join().unwrap();
    }
}
