//! The worker loop over real sockets: a Rust test app behind `run_with` in a thread, driven with
//! raw HTTP bytes.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{config, Server};
use ferrocorn_worker::{fn_app, App, AppError, Exit, Limits, PeerAddr, WorkerState};

fn h(name: &str, value: impl ToString) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.to_string().into_bytes())
}

/// Routes on the path; `/echo` answers `QUERY:BODY` with a Content-Length.
fn test_app() -> impl App + Send {
    fn_app(|req, res| {
        let path = req.head.path().to_string();
        let query = req.head.query().to_string();
        match path.as_str() {
            "/echo" => {
                let mut body = Vec::new();
                req.read_body_to_end(&mut body)?;
                let mut out = format!("{query}:").into_bytes();
                out.extend_from_slice(&body);
                let port = req.server.port.clone();
                let peer = match req.peer {
                    PeerAddr::Tcp(a) => a.ip().to_string(),
                    PeerAddr::Unix => "unix".to_string(),
                };
                res.start(
                    200,
                    "OK",
                    vec![
                        h("Content-Length", out.len()),
                        h("X-Method", req.head.method()),
                        h("X-Server-Port", port),
                        h("X-Peer", peer),
                    ],
                )?;
                res.write(&out)
            }
            // No length: HTTP/1.1 gets a chunked body, written in several pieces.
            "/stream" => {
                let mut body = Vec::new();
                req.read_body_to_end(&mut body)?;
                res.start(200, "OK", vec![h("Content-Type", "text/plain")])?;
                for piece in body.chunks(3) {
                    res.write(piece)?;
                }
                Ok(())
            }
            "/trailers" => {
                let mut body = Vec::new();
                req.read_body_to_end(&mut body)?;
                let list: Vec<String> = req
                    .trailers()
                    .iter()
                    .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v)))
                    .collect();
                let out = list.join(",");
                res.start(200, "OK", vec![h("Content-Length", out.len())])?;
                res.write(out.as_bytes())
            }
            "/noread" => {
                res.start(200, "OK", vec![h("Content-Length", 2)])?;
                res.write(b"ok")
            }
            "/empty" => res.start(200, "OK", vec![h("X-Empty", "yes")]),
            // Statuses that cannot have a body: whatever the app writes is dropped.
            "/204" | "/304" => {
                let status = path[1..].parse().unwrap();
                res.start(status, "No Body", vec![h("X-Status", status)])?;
                res.write(b"must not be sent")
            }
            "/fail" => Err(AppError::Failed("boom".to_string())),
            "/fail-after" => {
                res.start(200, "OK", vec![])?;
                res.write(b"partial")?;
                Err(AppError::Failed("failed halfway".to_string()))
            }
            "/panic" => panic!("test app panics on purpose"),
            "/no-start" => Ok(()),
            // An interim status is not a final response: refused at start(), so the app fails.
            "/interim" => {
                res.start(101, "Switching Protocols", vec![h("Upgrade", "websocket")])?;
                Ok(())
            }
            // Reads the body, ignores a failure to, and answers anyway.
            "/swallow" => {
                let mut body = Vec::new();
                let _ = req.read_body_to_end(&mut body);
                res.start(200, "OK", vec![h("Content-Length", 2)])?;
                res.write(b"ok")
            }
            "/bad-header" => {
                let err = res.start(200, "OK", vec![h("X-Bad", "a\r\nInjected: yes")]);
                assert!(matches!(err, Err(AppError::BadResponse(_))), "{err:?}");
                Err(err.unwrap_err())
            }
            "/close" => {
                res.start(
                    200,
                    "OK",
                    vec![h("Connection", "close"), h("Content-Length", 2)],
                )?;
                res.write(b"ok")
            }
            // Declares more than it sends: the connection must not be reused.
            "/short" => {
                res.start(200, "OK", vec![h("Content-Length", 10)])?;
                res.write(b"abc")
            }
            // Writes more than it declares: the extra bytes must not reach the wire.
            "/long" => {
                res.start(200, "OK", vec![h("Content-Length", 3)])?;
                res.write(b"abcdef")?;
                res.write(b"ghi")
            }
            "/restart" => {
                res.start(500, "Oops", vec![h("Content-Length", 1)])?;
                res.start(201, "Created", vec![h("Content-Length", 2)])?;
                res.write(b"ok")?;
                let again = res.start(202, "Accepted", vec![]);
                assert!(again.is_err(), "start after the head was sent must fail");
                Ok(())
            }
            "/file" => {
                let header = |n: &str| {
                    req.head
                        .header(n)
                        .map(|v| String::from_utf8(v.to_vec()).unwrap())
                };
                let file = File::open(header("X-File").unwrap())?;
                let offset = header("X-Offset").map_or(0, |v| v.parse().unwrap());
                let len = header("X-Len").map(|v| v.parse().unwrap());
                let mut headers = vec![];
                if let Some(cl) = header("X-Content-Length") {
                    headers.push(h("Content-Length", cl));
                }
                res.start(200, "OK", headers)?;
                res.sendfile(&file, offset, len)
            }
            _ => {
                res.start(404, "Not Found", vec![h("Content-Length", 0)])?;
                Ok(())
            }
        }
    })
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked(path: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .into_bytes();
    for c in chunks {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

#[test]
fn get_and_post_with_content_length_are_echoed() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    let r = c.request(&get("/echo?a=1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a=1:");
    assert_eq!(r.header("X-Method"), Some("GET"));
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert!(r.header("Date").is_some());
    assert!(r.header("Server").unwrap().starts_with("ferrocorn/"));
    assert_eq!(
        r.header("X-Server-Port"),
        Some(server.addr.port().to_string().as_str())
    );
    assert_eq!(r.header("X-Peer"), Some("127.0.0.1"));

    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = c.request(&post("/echo", &body));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Method"), Some("POST"));
    assert_eq!(&r.body[..1], b":");
    assert_eq!(r.body[1..], body[..]);
}

#[test]
fn chunked_request_body_is_decoded_and_chunked_response_streamed() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    let r = c.request(&chunked("/echo", &[b"hello ", b"chunked ", b"world"]));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), ":hello chunked world");

    let r = c.request(&chunked("/stream", &[b"abcdefgh"]));
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, "chunked");
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r.text(), "abcdefgh");

    // Still usable after a chunked request and a chunked response.
    assert_eq!(c.request(&get("/echo?again")).text(), "again:");
}

#[test]
fn chunked_trailers_reach_the_app() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    let r = c.request(
        b"POST /trailers HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\nX-Checksum: 42\r\n\r\n",
    );
    assert_eq!(r.text(), "X-Checksum=42");
    assert_eq!(c.request(&get("/echo?after")).text(), "after:");
}

#[test]
fn chunked_body_sent_byte_by_byte_is_decoded() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    let req = chunked("/echo", &[b"slow", b" bytes"]);
    for b in &req {
        c.send(&[*b]);
    }
    assert_eq!(c.read_response().text(), ":slow bytes");
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    assert_eq!(c.request(&get("/echo?1")).text(), "1:");
    assert_eq!(c.request(&post("/echo?2", b"body")).text(), "2:body");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    let mut all = get("/echo?first");
    all.extend(post("/echo?second", b"xyz"));
    all.extend(chunked("/echo?third", &[b"ch", b"unk"]));
    all.extend(get("/stream"));
    all.extend(get("/echo?last"));
    c.send(&all);
    assert_eq!(c.read_response().text(), "first:");
    assert_eq!(c.read_response().text(), "second:xyz");
    assert_eq!(c.read_response().text(), "third:chunk");
    assert_eq!(c.read_response().text(), "");
    assert_eq!(c.read_response().text(), "last:");
}

#[test]
fn continue_is_sent_only_when_the_app_reads_the_body() {
    let server = Server::start(test_app(), config());

    let mut c = server.connect();
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let (status, headers) = c.read_head().unwrap();
    assert_eq!((status, headers.len()), (100, 0));
    c.send(b"hello");
    assert_eq!(c.read_response().text(), ":hello");

    // An app that answers without reading: the final response comes without 100, says close (the
    // client may or may not send the body now), and the connection is closed.
    let mut c = server.connect();
    c.send(
        b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());
}

#[test]
fn app_error_before_head_gives_500_and_serving_goes_on() {
    let server = Server::start(test_app(), config());
    for path in ["/fail", "/panic", "/no-start", "/bad-header", "/interim"] {
        let mut c = server.connect();
        let r = c.request(&get(path));
        assert_eq!(r.status, 500, "{path}");
        assert_eq!(r.header("Connection"), Some("close"), "{path}");
        assert!(c.at_eof(), "{path}");
        let mut c = server.connect();
        assert_eq!(
            c.request(&get("/echo?next")).text(),
            "next:",
            "after {path}"
        );
    }
}

#[test]
fn an_error_response_to_head_has_no_body() {
    let server = Server::start(test_app(), config());
    for path in ["/fail", "/interim"] {
        let mut c = server.connect();
        c.send(format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_response_for(true).unwrap();
        assert_eq!(r.status, 500, "{path}");
        assert_eq!(r.header("Connection"), Some("close"), "{path}");
        // Nothing after the head: no error text where no body may be.
        assert!(c.at_eof(), "{path}");
    }
    // Refused while its head is read, a HEAD request still gets no body.
    let long = format!("HEAD /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(5000));
    let bad_field = b"HEAD / HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n";
    for (raw, status) in [(long.as_bytes(), 414), (&bad_field[..], 400)] {
        let mut c = server.connect();
        c.send(raw);
        let r = c.read_response_for(true).unwrap();
        assert_eq!(r.status, status);
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(c.at_eof(), "{status}");
    }
}

#[test]
fn app_error_after_head_closes_the_connection() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    c.send(&get("/fail-after"));
    let (status, headers) = c.read_head().unwrap();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "Transfer-Encoding" && v == "chunked"));
    // The chunked body is cut off: no last chunk, just the close.
    let rest = c.read_to_end();
    assert_eq!(rest, b"7\r\npartial\r\n");
    assert_eq!(server.connect().request(&get("/echo?ok")).text(), "ok:");
}

#[test]
fn short_response_closes_and_long_one_is_truncated() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    c.send(&get("/short"));
    let (status, _) = c.read_head().unwrap();
    assert_eq!(status, 200);
    let rest = c.read_to_end();
    assert_eq!(rest, b"abc");

    let mut c = server.connect();
    let r = c.request(&get("/long"));
    assert_eq!(r.text(), "abc");
    // Nothing past the declared length: the next response follows directly.
    assert_eq!(c.request(&get("/echo?next")).text(), "next:");
}

#[test]
fn start_may_be_replaced_until_the_head_is_sent() {
    let server = Server::start(test_app(), config());
    let r = server.connect().request(&get("/restart"));
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "ok");
}

#[test]
fn empty_body_gets_content_length_zero() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    let r = c.request(&get("/empty"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("0"));
    assert_eq!(r.header("X-Empty"), Some("yes"));
    assert_eq!(r.header("Transfer-Encoding"), None);
    assert_eq!(c.request(&get("/echo?next")).text(), "next:");
}

#[test]
fn no_body_statuses_send_no_body() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    for status in [204u16, 304] {
        let r = c.request(&get(&format!("/{status}")));
        assert_eq!((r.status, r.framing), (status, "none"));
        assert_eq!(r.header("Transfer-Encoding"), None);
    }
    // Stray body bytes would make this response unparsable.
    assert_eq!(c.request(&get("/echo?next")).text(), "next:");
}

/// Reads the whole body, reports how that went (length or error kind), answers `ok` if it went well.
fn body_reporting_app() -> (
    impl App + Send,
    mpsc::Receiver<Result<usize, std::io::ErrorKind>>,
) {
    let (tx, rx) = mpsc::channel();
    let app = fn_app(move |req, res| {
        let mut body = Vec::new();
        let result = req.read_body_to_end(&mut body);
        tx.send(result.as_ref().map_err(|e| e.kind()).copied())
            .unwrap();
        result?;
        res.start(200, "OK", vec![h("Content-Length", 2)])?;
        res.write(b"ok")
    });
    (app, rx)
}

#[test]
fn a_stalled_body_times_out_and_the_worker_moves_on() {
    let (app, rx) = body_reporting_app();
    let mut cfg = config();
    cfg.io_timeout = Duration::from_secs(1);
    let server = Server::start(app, cfg);
    let mut c = server.connect();
    // Three of the promised bytes, then nothing (the connection stays open). Too big a body
    // for the I/O thread to read first: the app reads it.
    c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc");
    assert_eq!(rx.recv().unwrap(), Err(std::io::ErrorKind::TimedOut));
    assert!(c.at_eof());
    assert_eq!(
        server.connect().request(&post("/x", b"0123456789")).text(),
        "ok"
    );
    assert_eq!(rx.recv().unwrap(), Ok(10));
}

#[test]
fn head_request_gets_no_body() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    c.send(b"HEAD /echo?x HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response_for(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("2"));
    // If body bytes had leaked, this response would not parse.
    assert_eq!(c.request(&get("/echo?y")).text(), "y:");
}

#[test]
fn app_connection_close_and_http10_close_the_connection() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    let r = c.request(&get("/close"));
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());

    let mut c = server.connect();
    let r = c.request(b"GET /echo?old HTTP/1.0\r\n\r\n");
    assert_eq!(r.text(), "old:");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());

    // HTTP/1.0 without a length: the body runs to the close.
    let mut c = server.connect();
    let r = c.request(b"POST /stream HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd");
    assert_eq!((r.framing, r.text().as_str()), ("close", "abcd"));

    let mut c = server.connect();
    let r = c.request(b"GET /echo?ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert_eq!(c.request(&get("/echo?again")).text(), "again:");
}

#[test]
fn unread_body_is_drained_or_the_connection_closed() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    assert_eq!(
        c.request(&post("/noread", b"small unread body")).text(),
        "ok"
    );
    assert_eq!(
        c.request(&chunked("/noread", &[b"unread", b"chunks"]))
            .text(),
        "ok"
    );
    assert_eq!(c.request(&get("/echo?after")).text(), "after:");

    // Too much to drain: answered, then closed.
    let mut c = server.connect();
    let big = vec![b'x'; 1024 * 1024];
    let writer = {
        let mut s = c.stream.try_clone().unwrap();
        let req = post("/noread", &big);
        std::thread::spawn(move || {
            let _ = s.write_all(&req);
        })
    };
    let r = c.read_response();
    assert_eq!(r.text(), "ok");
    assert!(c.at_eof());
    writer.join().unwrap();
}

#[test]
fn bad_requests_get_an_error_status_and_a_close() {
    let mut cfg = config();
    cfg.limits = Limits {
        body: Some(10),
        ..Limits::default()
    };
    let server = Server::start(test_app(), cfg);

    let long_line = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(5000));
    let cases: [(&[u8], u16); 5] = [
        (long_line.as_bytes(), 414),
        (b"GARBAGE\r\n\r\n", 400),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n",
            413,
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
    ];
    for (raw, status) in cases {
        let mut c = server.connect();
        let r = c.request(raw);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(raw));
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(c.at_eof());
    }
    // A chunked body over the limit is found while the app reads it.
    let mut c = server.connect();
    let r = c.request(&chunked("/echo", &[b"0123456789", b"abc"]));
    assert_eq!(r.status, 413);
    assert!(c.at_eof());
    drop(c);
    assert_eq!(
        server.connect().request(&post("/echo", b"fits")).text(),
        ":fits"
    );
}

#[test]
fn body_cut_short_is_an_error_for_the_app_not_a_short_body() {
    let (tx, rx) = mpsc::channel();
    let app = fn_app(move |req, res| {
        let mut body = Vec::new();
        let result = req.read_body_to_end(&mut body);
        tx.send((result.as_ref().map_err(|e| e.kind()).copied(), body.clone()))
            .unwrap();
        result?;
        res.start(200, "OK", vec![h("Content-Length", 0)])
    });
    let server = Server::start(app, config());

    let mut c = server.connect();
    // Too big a body for the I/O thread to read first: the app reads it.
    c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc");
    c.stream.shutdown(Shutdown::Write).unwrap();
    let (result, body) = rx.recv().unwrap();
    assert_eq!(result, Err(std::io::ErrorKind::UnexpectedEof));
    assert_eq!(body, b"abc");
    // Nobody left to answer: closed without a response.
    assert!(c.at_eof());

    let mut c = server.connect();
    c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    c.stream.shutdown(Shutdown::Write).unwrap();
    let (result, _) = rx.recv().unwrap();
    assert_eq!(result, Err(std::io::ErrorKind::UnexpectedEof));
    assert!(c.at_eof());
}

#[test]
fn header_timeout_cuts_off_a_slow_client() {
    let mut cfg = config();
    cfg.header_timeout = Duration::from_secs(1);
    let server = Server::start(test_app(), cfg);

    // Slowloris: a valid head, one byte every 100 ms, that would take a minute to finish.
    let mut c = server.connect();
    let finished = Arc::new(AtomicBool::new(false));
    let trickler = {
        let mut s = c.stream.try_clone().unwrap();
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let mut head = b"GET /echo HTTP/1.1\r\n".to_vec();
            head.extend(std::iter::repeat_n(b"X-Slow: a\r\n".iter().copied(), 55).flatten());
            head.extend_from_slice(b"\r\n");
            for b in head {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            finished.store(true, Ordering::SeqCst);
        })
    };
    // The server's close is the signal: it must come while the client is still sending.
    let r = c.read_response();
    assert_eq!(r.status, 408);
    assert!(c.at_eof());
    assert!(
        !finished.load(Ordering::SeqCst),
        "the whole slow head was accepted"
    );
    // The worker is free again.
    assert_eq!(server.connect().request(&get("/echo?free")).text(), "free:");
    drop(c);
    trickler.join().unwrap();

    // A connection that never sends a byte is closed without a response.
    let mut c = server.connect();
    assert!(c.at_eof());
}

#[test]
fn idle_keep_alive_connection_is_closed_after_keepalive() {
    let mut cfg = config();
    cfg.keepalive = Duration::from_secs(1);
    let server = Server::start(test_app(), cfg);
    let mut c = server.connect();
    assert_eq!(c.request(&get("/echo?1")).text(), "1:");
    assert!(c.at_eof());
}

#[test]
fn an_idle_keep_alive_connection_stays_open_while_others_are_served() {
    let mut cfg = config();
    cfg.keepalive = Duration::from_secs(300);
    let server = Server::start(test_app(), cfg);
    let mut idle = server.connect();
    assert_eq!(idle.request(&get("/echo?1")).text(), "1:");
    let mut fresh = server.connect();
    assert_eq!(fresh.request(&get("/echo?2")).text(), "2:");
    // Parked, not closed for the newcomer: its next request is served on the same connection.
    let r = idle.request(&get("/echo?3"));
    assert_eq!(
        (r.text().as_str(), r.header("Connection")),
        ("3:", Some("keep-alive"))
    );
    assert_eq!(fresh.request(&get("/echo?4")).text(), "4:");
}

#[test]
fn a_silent_connection_does_not_hold_the_worker() {
    let mut cfg = config();
    // Far longer than the client's read timeout: the silent one must not be waited for.
    cfg.header_timeout = Duration::from_secs(300);
    let server = Server::start(test_app(), cfg);
    // A preconnect: connected, accepted, says nothing for now.
    let mut silent = server.connect();
    let mut waiting = server.connect();
    assert_eq!(waiting.request(&get("/echo?served")).text(), "served:");
    assert_eq!(silent.request(&get("/echo?later")).text(), "later:");
}

#[test]
fn a_busy_keep_alive_connection_keeps_its_connection_while_another_client_waits() {
    let (app, entered, release) = common::gated_app();
    let server = Server::start(app, config());
    let mut busy = server.connect();
    busy.send(&post("/a", b"1"));
    entered.recv().unwrap();
    // Connected while the worker's only app thread is busy with the first client.
    let mut waiting = server.connect();
    waiting.send(&post("/b", b"2"));
    release.send(()).unwrap();
    let r = busy.read_response();
    assert_eq!(r.text(), "finished 1");
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    entered.recv().unwrap();
    release.send(()).unwrap();
    let r = waiting.read_response();
    assert_eq!(r.text(), "finished 2");
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    busy.send(&post("/c", b"3"));
    entered.recv().unwrap();
    release.send(()).unwrap();
    assert_eq!(busy.read_response().text(), "finished 3");
}

#[test]
fn max_requests_makes_run_return() {
    let mut cfg = config();
    cfg.max_requests = 2;
    let server = Server::start(test_app(), cfg);
    let mut c = server.connect();
    let r = c.request(&get("/echo?1"));
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    let r = c.request(&get("/echo?2"));
    assert_eq!(r.text(), "2:");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());
    assert_eq!(server.join().unwrap(), Exit::MaxRequests);
}

#[test]
fn stopping_finishes_the_request_in_hand_then_returns() {
    let (app, entered, release) = common::gated_app();
    let server = Server::start(app, config());
    let mut c = server.connect();
    c.send(&post("/slow", b"payload"));
    entered.recv().unwrap();
    server.control.set(WorkerState::Stopping);
    release.send(()).unwrap();
    let r = c.read_response();
    assert_eq!(r.text(), "finished payload");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());
    assert_eq!(server.join().unwrap(), Exit::Stopped);
}

#[test]
fn stopping_closes_an_idle_keep_alive_connection_at_once() {
    let mut cfg = config();
    // Far longer than the client's read timeout: only the stop can end the wait in time.
    cfg.keepalive = Duration::from_secs(300);
    let server = Server::start(test_app(), cfg);
    let mut c = server.connect();
    assert_eq!(c.request(&get("/echo?1")).text(), "1:");
    server.control.set(WorkerState::Stopping);
    assert!(c.at_eof());
    assert_eq!(server.join().unwrap(), Exit::Stopped);
}

#[test]
fn exit_returns_while_idle() {
    let server = Server::start(test_app(), config());
    assert_eq!(server.connect().request(&get("/echo?1")).text(), "1:");
    server.control.set(WorkerState::Exit);
    assert_eq!(server.join().unwrap(), Exit::Stopped);
}

#[test]
fn heartbeat_is_called_while_idle() {
    let server = Server::start(test_app(), config());
    // Several beats with no traffic at all (each poll lasts at most a second).
    for _ in 0..3 {
        server
            .beats
            .recv_timeout(Duration::from_secs(10))
            .expect("no heartbeat while idle");
    }
}

#[test]
fn heartbeat_goes_on_while_a_slow_client_is_being_written_to() {
    let (done_tx, done) = mpsc::channel();
    let (started_tx, started) = mpsc::channel();
    let app = fn_app(move |_req, res| {
        let mb = vec![b'z'; 1 << 20];
        res.start(200, "OK", vec![h("Content-Length", 64 << 20)])?;
        started_tx.send(()).unwrap();
        for _ in 0..64 {
            res.write(&mb)?;
        }
        done_tx.send(()).unwrap();
        Ok(())
    });
    let server = Server::start(app, config());
    let mut c = server.connect();
    c.send(&get("/big"));
    started.recv().unwrap();
    // The client reads nothing yet: the worker blocks in a write far larger than the socket
    // buffers, and must keep beating there.
    while server.beats.try_recv().is_ok() {}
    server
        .beats
        .recv_timeout(Duration::from_secs(10))
        .expect("no heartbeat during the write");
    assert!(
        done.try_recv().is_err(),
        "the write did not block; the test proves nothing"
    );
    let r = c.read_response();
    assert_eq!(r.body.len(), 64 << 20);
    done.recv().unwrap();
}

fn test_file(name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
    let path = ferrocorn_testkit::unique_temp_path(&format!("worker-{name}"));
    File::create(&path).unwrap().write_all(&data).unwrap();
    (path, data)
}

#[test]
fn sendfile_with_every_framing() {
    let server = Server::start(test_app(), config());
    let (path, data) = test_file("sendfile", 300_000);
    let p = path.display();
    let mut c = server.connect();

    // Declared length: sendfile(2) straight to the socket.
    let r = c.request(
        format!(
            "GET /file HTTP/1.1\r\nHost: t\r\nX-File: {p}\r\nX-Content-Length: {}\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    );
    assert_eq!(
        (r.status, r.framing, r.body.len()),
        (200, "length", data.len()),
        "{}",
        r.text()
    );
    assert!(r.body == data);

    // A range, no length: one chunk.
    let r = c.request(
        format!(
            "GET /file HTTP/1.1\r\nHost: t\r\nX-File: {p}\r\nX-Offset: 1000\r\nX-Len: 5000\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.framing, "chunked");
    assert!(r.body == data[1000..6000]);

    // A length past the end of the file is cut at the end of the file.
    let r = c.request(
        format!("GET /file HTTP/1.1\r\nHost: t\r\nX-File: {p}\r\nX-Offset: 299990\r\nX-Len: 100\r\n\r\n")
            .as_bytes(),
    );
    assert!(r.body == data[299_990..]);

    // A declared length larger than the file: short response, connection closed.
    c.send(
        format!("GET /file HTTP/1.1\r\nHost: t\r\nX-File: {p}\r\nX-Offset: 299000\r\nX-Content-Length: 2000\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(c.read_head().unwrap().0, 200);
    let rest = c.read_to_end();
    assert!(rest == data[299_000..]);

    // HTTP/1.0: until close.
    let mut c = server.connect();
    let r = c.request(format!("GET /file HTTP/1.0\r\nX-File: {p}\r\n\r\n").as_bytes());
    assert_eq!(r.framing, "close");
    assert!(r.body == data);

    // HEAD: the head only.
    let mut c = server.connect();
    c.send(
        format!("HEAD /file HTTP/1.1\r\nHost: t\r\nX-File: {p}\r\nX-Content-Length: 10\r\n\r\n")
            .as_bytes(),
    );
    let r = c.read_response_for(true).unwrap();
    assert_eq!(r.header("Content-Length"), Some("10"));
    assert_eq!(c.request(&get("/echo?z")).text(), "z:");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn sendfile_from_a_pipe_falls_back_to_copying() {
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut w = File::from(w);
    let reader = std::sync::Mutex::new(Some(r));
    let app = fn_app(move |_req, res| {
        let file = File::from(reader.lock().unwrap().take().unwrap());
        res.start(200, "OK", vec![])?;
        res.sendfile(&file, 0, None)
    });
    w.write_all(b"from a pipe").unwrap();
    drop(w);
    let server = Server::start(app, config());
    let r = server.connect().request(&get("/"));
    assert_eq!((r.framing, r.text().as_str()), ("chunked", "from a pipe"));
}

#[test]
fn unix_socket_listener_is_served() {
    let dir = ferrocorn_testkit::unique_temp_path("worker-unix");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.sock");
    let spec = ferrocorn_listener::BindSpec::Unix(path.clone());
    let l = ferrocorn_listener::bind(&spec, &ferrocorn_listener::ListenOptions::default()).unwrap();
    let server = Server::start_on(
        test_app(),
        config(),
        vec![l],
        "127.0.0.1:1".parse().unwrap(),
    );
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(
        b"POST /echo?u HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("X-Peer: unix\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nu:hi"), "{out}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_body_error_the_app_swallows_still_closes_the_connection() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    // A malformed chunk size, then a pipelined request that must never be answered.
    let mut bytes =
        b"POST /swallow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
    bytes.extend(get("/echo?smuggled"));
    c.send(&bytes);
    let r = c.read_response();
    assert_eq!(r.text(), "ok");
    // The head must not promise a connection that the server is about to close.
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());

    // A body cut short by a stall likewise.
    let mut cfg = config();
    cfg.io_timeout = Duration::from_secs(1);
    let server = Server::start(test_app(), cfg);
    let mut c = server.connect();
    c.send(b"POST /swallow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    let r = c.read_response();
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());
}

/// Send `head` at once, then `body_len` body bytes one at a time with `gap` between them, until
/// the server stops taking them. The flag is set only if every byte went out.
fn trickle_body(
    c: &common::Client,
    head: &[u8],
    body_len: usize,
    gap: Duration,
) -> (std::thread::JoinHandle<()>, Arc<AtomicBool>) {
    let mut s = c.stream.try_clone().unwrap();
    s.write_all(head).unwrap();
    let finished = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&finished);
    let handle = std::thread::spawn(move || {
        for _ in 0..body_len {
            std::thread::sleep(gap);
            if s.write_all(b"x").is_err() {
                return;
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    (handle, finished)
}

#[test]
fn a_body_trickled_in_is_cut_off_even_though_each_read_is_in_time() {
    let (app, rx) = body_reporting_app();
    let mut cfg = config();
    cfg.io_timeout = Duration::from_secs(1);
    let server = Server::start(app, cfg);
    let c = server.connect();
    // A byte every 50 ms never lets one read wait its second, but 200 of them take ten. (A
    // body too big for the I/O thread to read first: the app reads it.)
    let (trickler, finished) = trickle_body(
        &c,
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n",
        200,
        Duration::from_millis(50),
    );
    assert_eq!(rx.recv().unwrap(), Err(std::io::ErrorKind::TimedOut));
    assert!(
        !finished.load(Ordering::SeqCst),
        "the whole trickled body was read"
    );
    // The worker is free again.
    assert_eq!(
        server.connect().request(&post("/y", b"0123456789")).text(),
        "ok"
    );
    assert_eq!(rx.recv().unwrap(), Ok(10));
    drop(c);
    trickler.join().unwrap();
}

#[test]
fn an_unread_body_trickled_in_is_not_drained_for_long() {
    let mut cfg = config();
    cfg.io_timeout = Duration::from_secs(1);
    let server = Server::start(test_app(), cfg);
    let mut c = server.connect();
    // Small enough to drain, but sent so slowly that draining it would hold the worker 10 s.
    // (Chunked: a small Content-Length body is read whole before the app is called.)
    let (trickler, finished) = trickle_body(
        &c,
        b"POST /noread HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nc8\r\n",
        200,
        Duration::from_millis(50),
    );
    assert_eq!(c.read_response().text(), "ok");
    assert!(c.at_eof());
    assert!(
        !finished.load(Ordering::SeqCst),
        "the connection was kept until the whole body was drained"
    );
    assert_eq!(server.connect().request(&get("/echo?free")).text(), "free:");
    drop(c);
    trickler.join().unwrap();
}

#[test]
fn stopping_serves_an_accepted_connection_whose_request_is_still_to_come() {
    let server = Server::start(test_app(), config());
    let mut c = server.connect();
    assert!(common::wait_all_accepted(
        server.addr,
        Duration::from_secs(10)
    ));
    assert!(server
        .control
        .set_and_wait_noticed(WorkerState::Stopping, Duration::from_secs(10)));
    // Stopping takes no new connection: this one is never served.
    let mut late = server.connect();
    let r = c.request(&get("/echo?late"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "late:");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());
    assert_eq!(server.join().unwrap(), Exit::Stopped);
    // Closed unaccepted with the listener: sending may already fail, and nothing comes back.
    let _ = late.stream.write_all(&get("/echo?never"));
    assert!(late.at_eof(), "a connection made after the stop was served");
}

#[test]
fn stopping_answers_a_keep_alive_request_sent_as_the_stop_comes() {
    let mut cfg = config();
    cfg.keepalive = Duration::from_secs(300);
    let server = Server::start(test_app(), cfg);
    let mut c = server.connect();
    let r = c.request(&get("/echo?1"));
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    // The request and the stop cross: the request was sent before the client could know.
    c.send(&get("/echo?2"));
    server.control.set(WorkerState::Stopping);
    let r = c.read_response();
    assert_eq!(r.text(), "2:");
    // Which comes first is a race: a head written before the worker saw the stop still says
    // keep-alive. Either way the request is answered and then the connection ends.
    assert!(
        matches!(r.header("Connection"), Some("close" | "keep-alive")),
        "{:?}",
        r.header("Connection")
    );
    assert!(c.at_eof());
    assert_eq!(server.join().unwrap(), Exit::Stopped);
}

#[test]
fn a_stop_after_a_keep_alive_head_left_still_answers_the_request_behind_it() {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    // The head (saying keep-alive) and half the body leave before the app waits.
    let app = fn_app(move |req, res| {
        let slow = req.head.path() == "/slow";
        res.start(200, "OK", vec![h("Content-Length", 4)])?;
        res.write(b"ha")?;
        if slow {
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }
        res.write(b"lf")
    });
    let mut cfg = config();
    cfg.keepalive = Duration::from_secs(300);
    let server = Server::start(app, cfg);
    let mut c = server.connect();
    c.send(&get("/slow"));
    entered.recv().unwrap();
    // Pipelined behind the request in hand, before the stop.
    c.send(&get("/next"));
    server.control.set(WorkerState::Stopping);
    release.send(()).unwrap();
    let r = c.read_response();
    assert_eq!(r.text(), "half");
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    let r = c.read_response();
    assert_eq!(r.text(), "half");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.at_eof());
    assert_eq!(server.join().unwrap(), Exit::Stopped);
}

#[test]
fn a_silent_connection_is_closed_at_the_graceful_timeout() {
    let mut cfg = config();
    cfg.header_timeout = Duration::from_secs(300);
    cfg.graceful_timeout = Duration::from_secs(2);
    let server = Server::start(test_app(), cfg);
    let mut c = server.connect();
    assert!(common::wait_all_accepted(
        server.addr,
        Duration::from_secs(10)
    ));
    server.control.set(WorkerState::Stopping);
    // Well within the client's read timeout, far before the header timeout.
    assert!(c.at_eof());
    assert_eq!(server.join().unwrap(), Exit::Stopped);
}
