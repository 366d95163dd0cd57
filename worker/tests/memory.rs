//! The real `Request` and `Response` on an in-memory connection (`MemoryConn`): what an app unit
//! test sees, framing included.

use std::io::Write as _;

use ferrocorn_worker::{AppError, Headers, MemoryConn};

#[test]
fn text_sets_type_length_and_the_standard_reason() {
    let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    conn.serve(|_, res| res.text(404, "nope\n")).unwrap();
    let r = conn.recorded();
    let wire = String::from_utf8(r.wire.clone()).unwrap();
    assert!(wire.starts_with("HTTP/1.1 404 Not Found\r\n"), "{wire}");
    assert_eq!(r.header("content-length").as_deref(), Some(&b"5"[..]));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some(&b"text/plain; charset=utf-8"[..])
    );
    assert!(wire.ends_with("\r\n\r\nnope\n"), "{wire}");
    assert_eq!((r.starts.len(), r.writes), (1, 1));
}

#[test]
fn respond_keeps_an_explicit_length_and_the_headers_in_order() {
    let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let headers = Headers::new()
        .add("Set-Cookie", "a=1")
        .add("Set-Cookie", "b=2")
        .content_length(3);
    conn.serve(|_, res| res.respond(200, headers, b"abcdef"))
        .unwrap();
    let r = conn.recorded();
    let wire = String::from_utf8(r.wire.clone()).unwrap();
    assert!(wire.contains("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 3\r\n"));
    assert_eq!(wire.matches("Content-Length").count(), 1, "{wire}");
    assert_eq!(r.body(), b"abc", "never more than the declared length");
}

#[test]
fn a_streamed_body_is_chunked_and_decoded_back() {
    let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    conn.serve(|_, res| {
        res.start(200, "OK", Headers::new())?;
        res.write(b"one ")?;
        res.write(b"two")
    })
    .unwrap();
    let r = conn.recorded();
    assert_eq!(
        r.header("transfer-encoding").as_deref(),
        Some(&b"chunked"[..])
    );
    assert!(r.wire.ends_with(b"4\r\none \r\n3\r\ntwo\r\n0\r\n\r\n"));
    assert_eq!(r.body(), b"one two");
    assert_eq!(r.writes, 2);
}

#[test]
fn the_request_body_comes_from_memory_in_either_framing() {
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
    ] {
        let mut conn = MemoryConn::new(raw).unwrap();
        conn.serve(|req, res| {
            let mut body = Vec::new();
            req.read_body_to_end(&mut body)?;
            res.bytes(200, "application/octet-stream", &body)
        })
        .unwrap();
        assert_eq!(conn.recorded().body(), b"hello");
    }
    // A body cut short is an error of the read, not a hang.
    let mut conn =
        MemoryConn::new(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhel").unwrap();
    let err = conn
        .serve(|req, _| {
            let mut body = Vec::new();
            req.read_body_to_end(&mut body)?;
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(&err, AppError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
        "{err:?}"
    );
}

#[test]
fn a_head_request_gets_no_body_and_an_empty_response_a_zero_length() {
    let mut conn = MemoryConn::new(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    conn.serve(|_, res| res.text(200, "hidden")).unwrap();
    let r = conn.recorded();
    assert_eq!(r.header("content-length").as_deref(), Some(&b"6"[..]));
    assert!(r.wire.ends_with(b"\r\n\r\n"));
    let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    conn.serve(|_, res| res.start(204, "No Content", vec![]))
        .unwrap();
    assert_eq!(conn.recorded().status(), Some(204));
}

#[test]
fn sendfile_is_copied_in_memory_and_recorded() {
    let path = ferrocorn_testkit::unique_temp_path("memory.txt");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"0123456789")
        .unwrap();
    let file = std::fs::File::open(&path).unwrap();
    for headers in [Headers::new().content_length(4), Headers::new()] {
        let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        conn.serve(|_, res| {
            res.start(200, "OK", headers.clone())?;
            res.sendfile(&file, 3, Some(4))
        })
        .unwrap();
        let r = conn.recorded();
        assert_eq!(r.body(), b"3456");
        assert_eq!((r.sendfiles.clone(), r.writes), (vec![(3, Some(4))], 0));
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_client_that_goes_away_fails_the_write() {
    let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap()
        .fail_writes_after(1);
    let err = conn
        .serve(|_, res| {
            res.start(200, "OK", vec![])?;
            res.write(b"first")?;
            res.write(b"second")
        })
        .unwrap_err();
    assert!(matches!(err, AppError::Io(_)), "{err:?}");
    assert_eq!(conn.recorded().body(), b"first");
}

#[test]
fn an_invalid_head_is_refused_at_start() {
    let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let err = conn
        .serve(|_, res| res.start(200, "OK", Headers::new().add("X-Bad", "a\r\nInjected: yes")))
        .unwrap_err();
    assert!(matches!(err, AppError::BadResponse(_)), "{err:?}");
    assert!(conn.recorded().wire.is_empty());
}

#[test]
fn small_reads_take_the_body_piece_by_piece() {
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nab\ncd\nef"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab\n\r\n5\r\ncd\nef\r\n0\r\n\r\n",
    ] {
        let mut conn = MemoryConn::new(raw).unwrap();
        conn.serve(|req, res| {
            let mut pieces = Vec::new();
            loop {
                let mut buf = [0u8; 3];
                let n = req.read_body(&mut buf)?;
                pieces.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if n == 0 {
                    break;
                }
            }
            res.text(200, pieces.join("#"))
        })
        .unwrap();
        let body = String::from_utf8(conn.recorded().body()).unwrap();
        assert!(body.starts_with("ab\n#") && body.replace('#', "") == "ab\ncd\nef", "{body}");
    }
}
