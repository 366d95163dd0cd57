//! HTTP/1.1 strictness end to end: raw bytes over real sockets to the real `ferrocorn` binary
//! serving a real WSGI app. Smuggling shapes, limits (413/414/431/505), gunicorn's request vectors,
//! pipelining order, response framing, and the header and keep-alive timeouts.
//!
//! The app is a small echo app written to a temporary directory by [`EchoServer::start`]: it
//! answers with the request's method, path, query and body as it saw them, so a test can tell
//! exactly what reached the application (and that a rejected request never did).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ferrocorn_http::{BodyDecoder, HeadParser, Limits, Parsed};
use ferrocorn_testkit::*;

const ECHO_APP: &str = r#"
import sys

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/lie":
        # Declares 5 bytes, yields 10: the server must send 5.
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"01234", b"56789"]
    if path == "/nolength":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"part one, ", b"part two"]
    if path == "/hop":
        start_response("200 OK", [
            ("Connection", "close"), ("Keep-Alive", "timeout=99"), ("Upgrade", "h2c"),
            ("Transfer-Encoding", "gzip"), ("Proxy-Authenticate", "Basic"), ("Trailer", "X"),
            ("Content-Length", "2"),
        ])
        return [b"ok"]
    if path == "/badheader":
        start_response("200 OK", [("X-Bad", "a\r\nInjected: yes"), ("Content-Length", "1")])
        return [b"x"]
    if path == "/interim":
        # Not a final response: the server must refuse it.
        start_response("101 Switching Protocols", [("Upgrade", "websocket")])
        return []
    if path == "/swallow":
        # Ignores a body it cannot read and answers anyway.
        try:
            environ["wsgi.input"].read()
        except Exception:
            pass
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    if path == "/nocontent":
        start_response("204 No Content", [("Content-Length", "4")])
        return [b"oops"]
    body = environ["wsgi.input"].read()
    text = "\n".join([
        "method=" + environ["REQUEST_METHOD"],
        "path=" + environ["PATH_INFO"].encode("latin-1").hex(),
        "query=" + environ["QUERY_STRING"].encode("latin-1").hex(),
        "protocol=" + environ["SERVER_PROTOCOL"],
        "body=" + body.hex(),
    ]).encode("latin-1") + b"\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(text)))])
    return [text]
"#;

/// The ferrocorn master serving [`ECHO_APP`], and the temporary directory holding it.
struct EchoServer {
    server: Server,
    dir: PathBuf,
}

impl EchoServer {
    fn start(args: &[&str]) -> EchoServer {
        let dir = unique_temp_path("http-e2e");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("echo_app.py"), ECHO_APP).unwrap();
        let mut all = vec!["--chdir", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        all.push("echo_app:app");
        let mut server = Server::start(&all);
        server.wait_for_workers(1);
        EchoServer { server, dir }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the echo app reported.
#[derive(Debug, PartialEq, Eq)]
struct Echo {
    method: String,
    path: Vec<u8>,
    query: Vec<u8>,
    protocol: String,
    body: Vec<u8>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn echo(resp: &Resp) -> Echo {
    assert_eq!(resp.status, 200, "{resp:?}");
    let text = resp.text();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
            .to_string()
    };
    Echo {
        method: field("method"),
        path: unhex(&field("path")),
        query: unhex(&field("query")),
        protocol: field("protocol"),
        body: unhex(&field("body")),
    }
}

/// Send `request`, half-close, and parse every response until the server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<Resp> {
    parse_all_responses(&raw_exchange(addr, request))
}

/// Exactly one response, and the server closed the connection after it.
fn only_response(addr: SocketAddr, request: &[u8]) -> Resp {
    let raw = raw_exchange(addr, request);
    let all = parse_all_responses(&raw);
    assert_eq!(
        all.len(),
        1,
        "responses to {:?}: {:?}",
        String::from_utf8_lossy(request),
        String::from_utf8_lossy(&raw)
    );
    all.into_iter().next().unwrap()
}

/// The request is refused with `status`, the connection is closed, and nothing after it runs.
fn assert_refused(addr: SocketAddr, request: &[u8], status: u16) {
    // A follow-up request in the same bytes must never be answered.
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
    let resp = only_response(addr, &bytes);
    assert_eq!(
        resp.status,
        status,
        "{:?} -> {resp:?}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
}

#[test]
fn smuggling_shapes_are_refused_and_nothing_behind_them_runs() {
    let s = EchoServer::start(&[]);
    let addr = s.addr();
    let cases: &[(&[u8], u16)] = &[
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd", 400),
        // One past u64::MAX: an overflow, not a wrap to 0 that would make "abcd" a request.
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\nabcd", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length:  0x4\r\n\r\nabcd", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET x/y HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n", 417),
    ];
    for (request, status) in cases {
        assert_refused(addr, request, *status);
    }
}

#[test]
fn bad_chunked_bodies_are_refused() {
    let s = EchoServer::start(&[]);
    let addr = s.addr();
    for body in [
        &b"+5\r\nhello\r\n0\r\n\r\n"[..],
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"fffffffffffffffff\r\n",
        b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
        b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut request =
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        assert_refused(addr, &request, 400);
    }
    // A good chunked body reaches the app whole, trailers kept out of the way.
    let resp = only_response(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5;x=\"y\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n",
    );
    assert_eq!(echo(&resp).body, b"hello world");
}

#[test]
fn a_body_cut_short_never_reaches_the_app_as_complete() {
    let s = EchoServer::start(&[]);
    let raw = raw_exchange(
        s.addr(),
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nshort",
    );
    let responses = parse_all_responses(&raw);
    assert!(
        responses.iter().all(|r| r.status != 200),
        "a short body was answered as complete: {:?}",
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn limits_answer_413_414_431_and_505() {
    let s = EchoServer::start(&[
        "--limit-request-line",
        "100",
        "--limit-request-fields",
        "5",
        "--limit-request-field_size",
        "200",
        "--limit-request-body",
        "16",
    ]);
    let addr = s.addr();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(120));
    assert_refused(addr, long_target.as_bytes(), 414);
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-F: v\r\n".repeat(5)
    );
    assert_refused(addr, many.as_bytes(), 431);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(300)
    );
    assert_refused(addr, big.as_bytes(), 431);
    assert_refused(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n01234567890123456",
        413,
    );
    let chunked = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nX\r\n0\r\n\r\n";
    assert_refused(addr, chunked, 413);
    assert_refused(addr, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
    assert_refused(addr, b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);

    // Right at the limits is fine.
    let body = b"0123456789abcdef";
    let resp = only_response(
        addr,
        &[&b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 16\r\n\r\n"[..], body].concat(),
    );
    assert_eq!(echo(&resp).body, body);
}

#[test]
fn the_default_limits_are_gunicorns() {
    let s = EchoServer::start(&[]);
    let addr = s.addr();
    let at_limit = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "a".repeat(4094 - 14)
    );
    assert_eq!(at_limit.find("\r\n").unwrap(), 4094);
    assert_eq!(only_response(addr, at_limit.as_bytes()).status, 200);
    let over = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(4094 - 13));
    assert_refused(addr, over.as_bytes(), 414);
    let fields = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-F: v\r\n".repeat(100)
    );
    assert_refused(addr, fields.as_bytes(), 431);
    let field = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(8190)
    );
    assert_refused(addr, field.as_bytes(), 431);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = EchoServer::start(&[]);
    let request = b"GET /first?n=1 HTTP/1.1\r\nHost: a\r\n\r\n\
POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /third HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
HEAD /fourth HTTP/1.1\r\nHost: a\r\n\r\n\
GET /fifth HTTP/1.0\r\n\r\n\
GET /never HTTP/1.1\r\nHost: a\r\n\r\n";
    let raw = raw_exchange(s.addr(), request);
    let mut rest = &raw[..];
    let mut seen = Vec::new();
    for head_request in [false, false, false, true, false] {
        let (resp, used) = parse_response(rest, head_request).unwrap_or_else(|| {
            panic!(
                "missing response after {seen:?}: {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
        rest = &rest[used..];
        if head_request {
            assert_eq!(resp.status, 200);
            assert!(resp.body.is_empty());
            seen.push("HEAD".to_string());
        } else {
            let e = echo(&resp);
            seen.push(format!(
                "{} {} {}",
                e.method,
                String::from_utf8_lossy(&e.path),
                String::from_utf8_lossy(&e.body)
            ));
        }
    }
    assert_eq!(
        seen,
        [
            "GET /first ",
            "POST /second hello",
            "POST /third abc",
            "HEAD",
            "GET /fifth "
        ]
    );
    assert!(
        rest.is_empty(),
        "answered past the HTTP/1.0 request: {:?}",
        String::from_utf8_lossy(rest)
    );
}

#[test]
fn responses_are_framed_by_the_server_not_the_app() {
    let s = EchoServer::start(&[]);
    let addr = s.addr();

    // HTTP/1.1 without a length: chunked.
    let r = only_response(
        addr,
        b"GET /nolength HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"part one, part two");
    // HTTP/1.0 without a length: until close.
    let raw = raw_exchange(addr, b"GET /nolength HTTP/1.0\r\n\r\n");
    let r = parse_response(&raw, false).unwrap().0;
    assert_eq!(
        (r.header("transfer-encoding"), r.header("connection")),
        (None, Some("close"))
    );
    assert_eq!(r.body, b"part one, part two");

    // Never more than the declared length: the next pipelined response parses cleanly.
    let all = exchange(addr, b"GET /lie HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(all[0].body, b"01234");
    if let Some(next) = all.get(1) {
        assert_eq!(echo(next).path, b"/after");
    }

    // The app's hop-by-hop fields are the server's business.
    let r = only_response(
        addr,
        b"GET /hop HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.body, b"ok");
    for name in [
        "keep-alive",
        "upgrade",
        "transfer-encoding",
        "proxy-authenticate",
        "trailer",
    ] {
        assert_eq!(r.header(name), None, "{name} leaked: {r:?}");
    }
    assert_eq!(
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .count(),
        1
    );

    // No body for HEAD and 204.
    let raw = raw_exchange(
        addr,
        b"HEAD /nolength HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let (r, used) = parse_response(&raw, true).unwrap();
    assert_eq!(
        (r.status, used),
        (200, raw.len()),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    let raw = raw_exchange(
        addr,
        b"GET /nocontent HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let (r, used) = parse_response(&raw, false).unwrap();
    assert_eq!(
        (r.status, used, r.header("content-length")),
        (204, raw.len(), None)
    );

    // A header the app must not send becomes a 500, and the server keeps serving.
    let r = only_response(
        addr,
        b"GET /badheader HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 500);
    assert!(r.header("injected").is_none());
    assert_eq!(echo(&get(addr, "/still-up")).path, b"/still-up");
}

#[test]
fn expect_100_continue_gets_an_interim_response() {
    let s = EchoServer::start(&[]);
    let mut c = connect(s.addr());
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").unwrap();
    let mut interim = [0u8; 25];
    c.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"hello").unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(
        echo(&parse_response(&rest, false).unwrap().0).body,
        b"hello"
    );
}

#[test]
fn expect_100_continue_is_not_answered_when_the_app_does_not_read_the_body() {
    let s = EchoServer::start(&[]);
    let mut c = connect(s.addr());
    // The body is never sent: the client waits for 100 Continue, which must not come.
    c.write_all(
        b"POST /lie HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    // The server answers and closes by itself (the read times out otherwise).
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let all = parse_all_responses(&raw);
    assert_eq!(all.len(), 1, "{:?}", String::from_utf8_lossy(&raw));
    assert_eq!(
        (all[0].status, all[0].body.as_slice()),
        (200, &b"01234"[..])
    );
    // Whether the body follows is unknowable now, so the connection cannot be reused.
    assert_eq!(all[0].header("connection"), Some("close"));
}

#[test]
fn an_interim_status_from_the_app_is_refused_with_500() {
    let mut s = EchoServer::start(&[]);
    assert_refused(s.addr(), b"GET /interim HTTP/1.1\r\nHost: a\r\n\r\n", 500);
    // Logged once as the app's fault, the reason stated once.
    let line = s
        .server
        .wait_for_log("Error handling request /interim", BOOT_TIMEOUT);
    assert_eq!(
        line.matches("invalid response from application").count(),
        1,
        "{line}"
    );
    assert_eq!(echo(&get(s.addr(), "/still-up")).path, b"/still-up");
}

#[test]
fn a_body_error_the_app_ignores_still_ends_the_connection() {
    let s = EchoServer::start(&[]);
    let raw = raw_exchange(
        s.addr(),
        b"POST /swallow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\
GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let all = parse_all_responses(&raw);
    assert_eq!(all.len(), 1, "{:?}", String::from_utf8_lossy(&raw));
    assert_eq!(all[0].body, b"ok");
    assert_eq!(all[0].header("connection"), Some("close"));
}

/// A client speaking something other than HTTP (here a TLS handshake sent to the plain port) is
/// answered 400 as soon as its first bytes cannot start a request line, not when the header
/// timeout cuts it: the handshake has no line end to wait for.
#[test]
fn a_tls_handshake_is_refused_at_once_not_at_the_header_timeout() {
    let s = EchoServer::start(&["--header-timeout", "120"]);
    let mut c = Client::connect(s.addr());
    // A ClientHello's record header and the start of its handshake header.
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    let resp = c.read_response();
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    assert!(c.at_eof(), "the connection stays open after the 400");
    assert_eq!(get(s.addr(), "/").status, 200);
}

#[test]
fn a_client_trickling_its_head_is_disconnected_by_header_timeout() {
    let s = EchoServer::start(&["--header-timeout", "2"]);
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: {}\r\n\r\n",
        "s".repeat(40)
    );
    let mut c = connect(s.addr());
    let mut reader = c.try_clone().unwrap();
    let started = Instant::now();
    let closed = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        (Instant::now(), got)
    });
    let mut sent = 0;
    for b in head.bytes() {
        if c.write_all(&[b]).is_err() || closed.is_finished() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let (at, got) = closed.join().unwrap();
    assert!(
        sent < head.len(),
        "the whole {}-byte head was accepted one byte a second",
        head.len()
    );
    // Whatever the server said (408 or nothing), it was not an answer to the request.
    assert!(
        !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{got:?}"
    );
    eprintln!("disconnected after {:?} and {sent} bytes", at - started);
    // The worker is free again.
    assert_eq!(get(s.addr(), "/").status, 200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_keep_alive_seconds() {
    let s = EchoServer::start(&["--keep-alive", "1"]);
    let mut c = connect(s.addr());
    c.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The response, then EOF once the connection has idled past --keep-alive.
    loop {
        let n = c.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (r, used) = parse_response(&buf, false).unwrap();
    assert_eq!(echo(&r).path, b"/one");
    assert_eq!(used, buf.len());
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let _ = c.shutdown(Shutdown::Both);
}

/// A gunicorn vector: its bytes and what its `.py` expects.
struct Vector {
    name: String,
    data: Vec<u8>,
    /// gunicorn settings the `.py` makes (`cfg.set(key, value)`).
    cfg: Vec<(String, String)>,
    requests: Vec<(String, String, String, Vec<u8>)>,
}

fn load_vectors() -> Vec<Vector> {
    let dir = std::env::var_os("FERROCORN_GUNICORN_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/vectors/gunicorn"));
    assert!(
        dir.join("valid").is_dir(),
        "gunicorn vectors not found at {}",
        dir.display()
    );
    let script = repo_root().join("http/tests/vectors/dump.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&dir)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = |s: &str| if s == "-" { Vec::new() } else { unhex(s) };
    let mut all = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "VECTOR" => all.push(Vector {
                name: format!("{}/{}", f[1], f[2]),
                data: Vec::new(),
                cfg: Vec::new(),
                requests: Vec::new(),
            }),
            "DATA" => all.last_mut().unwrap().data = h(f[1]),
            "CFG" => all
                .last_mut()
                .unwrap()
                .cfg
                .push((f[1].to_string(), String::from_utf8(h(f[2])).unwrap())),
            "REQUEST" => all.last_mut().unwrap().requests.push(Default::default()),
            "METHOD" => {
                all.last_mut().unwrap().requests.last_mut().unwrap().0 =
                    String::from_utf8(h(f[1])).unwrap()
            }
            "URI" => {
                let r = all.last_mut().unwrap().requests.last_mut().unwrap();
                r.1 = String::from_utf8(h(f[2])).unwrap();
                r.2 = String::from_utf8(h(f[3])).unwrap();
            }
            "BODY" => all.last_mut().unwrap().requests.last_mut().unwrap().3 = h(f[1]),
            _ => {}
        }
    }
    all
}

/// What our parser makes of a vector, request by request, like a connection would.
fn parser_outcome(data: &[u8], limits: &Limits) -> (usize, Option<u16>) {
    let mut rest = data;
    let mut ok = 0;
    loop {
        while rest.starts_with(b"\r\n") {
            rest = &rest[2..];
        }
        if rest.is_empty() {
            return (ok, None);
        }
        let (head, n) = match HeadParser::new().parse(rest, limits) {
            Ok(Parsed::Complete(h, n)) => (h, n),
            Ok(Parsed::Partial) => return (ok, Some(0)),
            Err(e) => return (ok, Some(e.status())),
        };
        rest = &rest[n..];
        let mut d = BodyDecoder::new(head.framing(), limits);
        match d.decode(rest, &mut Vec::new()) {
            Ok(used) if d.is_done() => rest = &rest[used..],
            Ok(_) => return (ok, Some(0)),
            Err(e) => return (ok, Some(e.status())),
        }
        ok += 1;
        if !head.keep_alive() {
            return (ok, None);
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if let (b'%', Some(Ok(v))) = (b[i], hex.map(|h| u8::from_str_radix(h, 16))) {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Send one vector to the server and check it is answered as our parser judges it.
fn check_through_server(addr: SocketAddr, v: &Vector, limits: &Limits) {
    let (parsed, refusal) = parser_outcome(&v.data, limits);
    let responses = exchange(addr, &v.data);
    assert!(
        responses.len() >= parsed,
        "{}: {} responses for {parsed} requests",
        v.name,
        responses.len()
    );
    // Every request the parser accepts reaches the app exactly as gunicorn's .py describes.
    if v.name.starts_with("valid/") {
        for (resp, (method, path, query, body)) in responses.iter().zip(&v.requests).take(parsed) {
            let e = echo(resp);
            assert_eq!(e.method, *method, "{}", v.name);
            if method != "CONNECT" && !path.is_empty() && path != "*" {
                assert_eq!(e.path, percent_decode(path), "{}", v.name);
                assert_eq!(e.query, query.as_bytes(), "{}", v.name);
            }
            assert_eq!(e.body, *body, "{}", v.name);
        }
    }
    // Where it refuses, the server answers with the same status (or, for a request cut short by
    // EOF, with no success) and answers nothing after it.
    match refusal {
        Some(0) => assert!(
            responses[parsed..].iter().all(|r| r.status >= 400),
            "{}: {responses:?}",
            v.name
        ),
        Some(status) => {
            assert_eq!(responses.len(), parsed + 1, "{}: {responses:?}", v.name);
            assert_eq!(responses[parsed].status, status, "{}", v.name);
        }
        None => assert_eq!(responses.len(), parsed, "{}", v.name),
    }
}

#[test]
fn gunicorn_vectors_through_the_real_server() {
    let s = EchoServer::start(&[]);
    let addr = s.addr();
    let mut checked = 0;
    for v in load_vectors().iter().filter(|v| v.cfg.is_empty()) {
        check_through_server(addr, v, &Limits::default());
        checked += 1;
    }
    assert!(checked > 80, "only {checked} vectors checked");
    eprintln!("{checked} gunicorn vectors through the server");
}

/// The vectors that set gunicorn's limit options, through a server started with the same flags.
#[test]
fn gunicorn_limit_vectors_through_the_real_server_with_their_flags() {
    let mut checked = 0;
    for v in load_vectors() {
        if v.cfg.is_empty() || !v.cfg.iter().all(|(k, _)| k.starts_with("limit_request_")) {
            continue;
        }
        let mut limits = Limits::default();
        let mut flags = Vec::new();
        for (key, value) in &v.cfg {
            let n: usize = value.parse().unwrap();
            match key.as_str() {
                "limit_request_line" => limits.request_line = n,
                "limit_request_fields" => limits.fields = n,
                "limit_request_field_size" => limits.field_size = n,
                other => panic!("{}: {other}", v.name),
            }
            flags.push(format!(
                "--{}",
                key.replace('_', "-").replace("field-size", "field_size")
            ));
            flags.push(value.clone());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let s = EchoServer::start(&flags);
        check_through_server(s.addr(), &v, &limits);
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} limit vectors");
    eprintln!("{checked} limit vectors through servers started with their flags");
}
