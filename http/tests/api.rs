//! Behaviour of the public API on hand-written requests and responses.

use ferrocorn_http::{
    error_head_response, error_response, write_empty_response_head, write_response_head,
    BodyDecoder, BodyEncoder, BodyFraming, HeadParser, Limits, Parsed, RequestError, RequestHead,
    ResponseFraming, ResponseSpec, Version,
};

fn parse(raw: &[u8]) -> Result<(RequestHead, usize), RequestError> {
    parse_with(raw, &Limits::default())
}

fn parse_with(raw: &[u8], limits: &Limits) -> Result<(RequestHead, usize), RequestError> {
    match HeadParser::new().parse(raw, limits)? {
        Parsed::Complete(h, n) => Ok((h, n)),
        Parsed::Partial => panic!("partial: {:?}", String::from_utf8_lossy(raw)),
    }
}

fn err(raw: &[u8]) -> RequestError {
    match HeadParser::new().parse(raw, &Limits::default()) {
        Err(e) => e,
        Ok(p) => panic!("accepted {:?}: {p:?}", String::from_utf8_lossy(raw)),
    }
}

fn decode_all(
    framing: BodyFraming,
    input: &[u8],
    limits: &Limits,
) -> Result<(Vec<u8>, usize, bool), RequestError> {
    let mut d = BodyDecoder::new(framing, limits);
    let mut out = Vec::new();
    let used = d.decode(input, &mut out)?;
    Ok((out, used, d.is_done()))
}

#[test]
fn parses_a_simple_get() {
    let raw = b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nX-Thing:  v a l \t\r\n\r\nNEXT";
    let (h, n) = parse(raw).unwrap();
    assert_eq!(n, raw.len() - 4);
    assert_eq!(h.method(), "GET");
    assert_eq!(h.target(), "/a/b?x=1&y=2");
    assert_eq!(h.path(), "/a/b");
    assert_eq!(h.query(), "x=1&y=2");
    assert_eq!(h.version(), Version::Http11);
    let headers: Vec<_> = h.headers().collect();
    assert_eq!(
        headers,
        vec![("Host", &b"example.com"[..]), ("X-Thing", &b"v a l"[..])]
    );
    assert_eq!(h.header("x-thing"), Some(&b"v a l"[..]));
    assert_eq!(h.header("missing"), None);
    assert_eq!(h.framing(), BodyFraming::Empty);
    assert!(h.keep_alive());
    assert!(!h.expects_continue());
}

#[test]
fn incremental_parse_byte_by_byte() {
    let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let limits = Limits::default();
    let mut p = HeadParser::new();
    let mut got = None;
    for end in 1..=raw.len() {
        match p.parse(&raw[..end], &limits).unwrap() {
            Parsed::Partial => {}
            Parsed::Complete(h, n) => {
                got = Some((h, n, end));
                break;
            }
        }
    }
    let (h, n, end) = got.expect("completes");
    assert_eq!(n, raw.len() - 5);
    assert_eq!(end, n, "complete exactly when the blank line arrives");
    assert_eq!(h.framing(), BodyFraming::Length(5));
}

#[test]
fn keep_alive_rules() {
    let ka = |raw: &[u8]| parse(raw).unwrap().0.keep_alive();
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, close\r\n\r\n"
    ));
    assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
}

#[test]
fn expect_continue_and_other_expectations() {
    let (h, _) =
        parse(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap();
    assert!(h.expects_continue());
    let (h, _) =
        parse(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").unwrap();
    assert!(!h.expects_continue(), "ignored in HTTP/1.0");
    assert_eq!(
        err(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"),
        RequestError::ExpectationFailed
    );
}

#[test]
fn smuggling_shapes_are_rejected() {
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET a.com:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET x/y HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(err(raw).status(), 400, "{:?}", String::from_utf8_lossy(raw));
    }
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").status(),
        501
    );
    assert_eq!(
        err(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        RequestError::VersionNotSupported
    );
    assert_eq!(err(b"GET / HTTP/1.12\r\nHost: a\r\n\r\n").status(), 400);
}

#[test]
fn target_forms() {
    let (h, _) = parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!((h.target(), h.path()), ("*", "*"));
    let (h, _) = parse(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n").unwrap();
    assert_eq!(h.target(), "[::1]:443");
    let (h, _) =
        parse(b"GET http://u:p@ex.com:8080/foo?q=1#frag HTTP/1.1\r\nHost: ex.com\r\n\r\n").unwrap();
    assert_eq!((h.path(), h.query()), ("/foo", "q=1"));
    let (h, _) = parse(b"GET https://ex.com HTTP/1.1\r\nHost: ex.com\r\n\r\n").unwrap();
    assert_eq!((h.path(), h.query()), ("/", ""));
}

#[test]
fn limits_map_to_statuses() {
    let limits = Limits {
        request_line: 20,
        fields: 2,
        field_size: 20,
        body: Some(10),
        ..Limits::default()
    };
    let long_line = b"GET /aaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n";
    assert_eq!(
        parse_with(long_line, &limits).unwrap_err(),
        RequestError::UriTooLong
    );
    // Decided before the line ends.
    assert_eq!(
        HeadParser::new()
            .parse(&long_line[..30], &limits)
            .unwrap_err(),
        RequestError::UriTooLong
    );
    let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: b\r\nC: d\r\n\r\n";
    assert_eq!(parse_with(many, &limits).unwrap_err().status(), 431);
    let big = b"GET / HTTP/1.1\r\nHost: aaaaaaaaaaaaaaaaaa\r\n\r\n";
    assert_eq!(parse_with(big, &limits).unwrap_err().status(), 431);
    let body = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
    assert_eq!(
        parse_with(body, &limits).unwrap_err(),
        RequestError::BodyTooLarge
    );
    let ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(
        parse_with(ok, &limits).unwrap().0.framing(),
        BodyFraming::Length(10)
    );
}

#[test]
fn content_length_body() {
    let limits = Limits::default();
    let (out, used, done) = decode_all(BodyFraming::Length(5), b"helloGET /", &limits).unwrap();
    assert_eq!((out.as_slice(), used, done), (&b"hello"[..], 5, true));
    let mut d = BodyDecoder::new(BodyFraming::Length(5), &limits);
    let mut out = Vec::new();
    assert_eq!(d.decode(b"he", &mut out).unwrap(), 2);
    assert_eq!(d.remaining_hint(), Some(3));
    assert!(!d.is_done(), "a short body is never complete");
    let mut d = BodyDecoder::new(BodyFraming::Empty, &limits);
    assert!(d.is_done());
    assert_eq!(d.decode(b"GET", &mut out).unwrap(), 0);
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let limits = Limits::default();
    let input = b"5;name=\"va;l\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
    let mut d = BodyDecoder::new(BodyFraming::Chunked, &limits);
    let mut out = Vec::new();
    let used = d.decode(input, &mut out).unwrap();
    assert_eq!(out, b"hello world");
    assert_eq!(used, input.len() - 4);
    assert!(d.is_done());
    assert_eq!(d.trailers(), &[("X-Sum".to_string(), b"1".to_vec())]);

    // Byte at a time gives the same.
    let mut d = BodyDecoder::new(BodyFraming::Chunked, &limits);
    let mut out2 = Vec::new();
    for b in &input[..used] {
        assert_eq!(d.decode(std::slice::from_ref(b), &mut out2).unwrap(), 1);
    }
    assert!(d.is_done());
    assert_eq!(out2, out);
}

#[test]
fn chunked_errors() {
    let limits = Limits::default();
    for bad in [
        &b"\r\nhello\r\n0\r\n\r\n"[..],
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"10000000000000000\r\n",
        b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n",
        b"5\r\nhello\r\n0\r\nContent-Length: 9\r\n\r\n",
        b"5\r\nhello\r\n0\r\n folded\r\n\r\n",
    ] {
        let r = decode_all(BodyFraming::Chunked, bad, &limits);
        assert!(r.is_err(), "{:?} -> {r:?}", String::from_utf8_lossy(bad));
    }
    // Extensions are bounded per line and per body.
    let long_ext = format!("1;{}\r\nx\r\n", "e".repeat(5000));
    assert!(decode_all(BodyFraming::Chunked, long_ext.as_bytes(), &limits).is_err());
    let padded = format!("1;{}\r\nx\r\n", "e".repeat(3000)).repeat(30);
    let r = decode_all(BodyFraming::Chunked, padded.as_bytes(), &limits);
    assert_eq!(
        r.unwrap_err(),
        RequestError::BadRequest("chunk size lines too long in total (extensions or padding)")
    );
    let zeros = format!("{}1\r\nx\r\n", "0".repeat(3000)).repeat(30);
    let r = decode_all(BodyFraming::Chunked, zeros.as_bytes(), &limits);
    assert_eq!(
        r.unwrap_err(),
        RequestError::BadRequest("chunk size lines too long in total (extensions or padding)")
    );
    let small = Limits {
        body: Some(8),
        ..Limits::default()
    };
    let r = decode_all(
        BodyFraming::Chunked,
        b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
        &small,
    );
    assert_eq!(r.unwrap_err(), RequestError::BodyTooLarge);
    // Missing the final CRLF: not done, so never handed over as complete.
    let (_, _, done) = decode_all(BodyFraming::Chunked, b"0\r\n", &limits).unwrap();
    assert!(!done);
}

fn head(spec: &ResponseSpec<'_>) -> (String, ResponseFraming, bool) {
    let mut out = Vec::new();
    let r = write_response_head(spec, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), r.framing, r.keep_alive)
}

fn spec<'a>(status: u16, headers: &'a [(Vec<u8>, Vec<u8>)]) -> ResponseSpec<'a> {
    ResponseSpec {
        status,
        reason: "OK",
        headers,
        version: Version::Http11,
        head_request: false,
        keep_alive: true,
        server: "ferrocorn",
    }
}

fn h(name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.as_bytes().to_vec())
}

#[test]
fn response_head_framing() {
    let hs = [
        h("Content-Type", "text/plain"),
        h("Connection", "upgrade"),
        h("Transfer-Encoding", "gzip"),
    ];
    let (text, framing, ka) = head(&spec(200, &hs));
    assert_eq!(framing, ResponseFraming::Chunked);
    assert!(ka);
    assert!(text
        .starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: ferrocorn\r\nDate: "));
    assert!(
        text.ends_with("\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"),
        "{text}"
    );
    assert!(!text.contains("upgrade") && !text.contains("gzip"));

    let hs = [h("Content-Length", "5")];
    let (text, framing, _) = head(&spec(200, &hs));
    assert_eq!(framing, ResponseFraming::Length(5));
    assert!(text.contains("Content-Length: 5\r\n") && !text.contains("Transfer-Encoding"));

    let mut s = spec(200, &[]);
    s.version = Version::Http10;
    let (text, framing, ka) = head(&s);
    assert_eq!((framing, ka), (ResponseFraming::UntilClose, false));
    assert!(text.contains("Connection: close\r\n"));

    let mut s = spec(200, &hs);
    s.head_request = true;
    let (text, framing, _) = head(&s);
    assert_eq!(framing, ResponseFraming::NoBody);
    assert!(
        text.contains("Content-Length: 5\r\n"),
        "HEAD keeps the GET's length"
    );
    let (text, framing, _) = head(&spec(204, &hs));
    assert_eq!(framing, ResponseFraming::NoBody);
    assert!(!text.contains("Content-Length"));
    assert_eq!(head(&spec(304, &[])).1, ResponseFraming::NoBody);
}

#[test]
fn an_interim_status_is_not_a_final_response() {
    for status in [100, 101, 103, 199] {
        let mut out = b"keep".to_vec();
        let hs = [h("Upgrade", "websocket")];
        let e = write_response_head(&spec(status, &hs), &mut out).unwrap_err();
        assert_eq!(e.status(), 500, "{status}");
        assert_eq!(out, b"keep");
    }
    assert_eq!(head(&spec(200, &[])).1, ResponseFraming::Chunked);
}

#[test]
fn response_head_rejects_bad_app_headers() {
    for hs in [
        vec![h("Bad Name", "x")],
        vec![h("", "x")],
        vec![h("X", "a\r\nInjected: yes")],
        vec![h("X", "a\0")],
        vec![h("Content-Length", "-1")],
        vec![h("Content-Length", "1"), h("Content-Length", "2")],
    ] {
        let mut out = b"keep".to_vec();
        let e = write_response_head(&spec(200, &hs), &mut out).unwrap_err();
        assert_eq!(e.status(), 500);
        assert_eq!(out, b"keep");
    }
    let mut s = spec(200, &[]);
    s.reason = "OK\r\nX: y";
    assert!(write_response_head(&s, &mut Vec::new()).is_err());
}

#[test]
fn body_encoder_never_exceeds_length() {
    let mut out = Vec::new();
    let mut e = BodyEncoder::new(ResponseFraming::Length(7));
    assert_eq!(e.encode(b"hello", &mut out), 5);
    assert_eq!(e.encode(b" world", &mut out), 2);
    assert_eq!(e.encode(b"more", &mut out), 0);
    assert!(e.finish(&mut out));
    assert_eq!(out, b"hello w");

    let mut out = Vec::new();
    let mut e = BodyEncoder::new(ResponseFraming::Length(7));
    e.encode(b"abc", &mut out);
    assert!(!e.finish(&mut out), "short body reported");

    let mut out = Vec::new();
    let mut e = BodyEncoder::new(ResponseFraming::Chunked);
    e.encode(b"hello", &mut out);
    e.encode(b"", &mut out);
    e.encode(&[b'x'; 26], &mut out);
    assert!(e.finish(&mut out));
    assert!(e.finish(&mut out));
    let mut expected = b"5\r\nhello\r\n1a\r\n".to_vec();
    expected.extend_from_slice(&[b'x'; 26]);
    expected.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(out, expected);

    let mut out = Vec::new();
    let mut e = BodyEncoder::new(ResponseFraming::NoBody);
    assert_eq!(e.encode(b"dropped", &mut out), 7);
    assert!(e.finish(&mut out));
    assert!(out.is_empty());
}

#[test]
fn error_responses_are_complete() {
    let r = String::from_utf8(error_response(431)).unwrap();
    assert!(r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    assert!(r.contains("Connection: close\r\n"));
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    let r = String::from_utf8(RequestError::BadRequest("bare CR in head").response()).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 400 Bad Request\r\n")
            && r.ends_with("bad request: bare CR in head\n")
    );
}

#[test]
fn error_responses_to_head_are_the_head_alone() {
    let full = error_response(500);
    let head = error_head_response(500);
    let text = String::from_utf8(head.clone()).unwrap();
    assert!(text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
    assert!(text.ends_with("\r\n\r\n") && text.matches("\r\n\r\n").count() == 1);
    // The same head a GET gets, Content-Length included: only the body is left out.
    let full_head = &full[..full.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4];
    let strip_date = |h: &[u8]| {
        String::from_utf8_lossy(h)
            .lines()
            .filter(|l| !l.starts_with("Date: "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip_date(&head), strip_date(full_head));
    let e = RequestError::UriTooLong;
    assert!(e.head_response().ends_with(b"\r\n\r\n"));
    assert!(e.response().len() > e.head_response().len());
}

#[test]
fn raw_body_bytes_are_framed_by_the_encoder() {
    // Chunked: one chunk header before, CRLF after; a short send corrupts the stream.
    let mut out = Vec::new();
    let mut e = BodyEncoder::new(ResponseFraming::Chunked);
    assert_eq!(e.begin_raw(300, &mut out), 300);
    assert_eq!(out, b"12c\r\n");
    assert!(e.end_raw(300, 300, &mut out));
    assert!(e.finish(&mut out));
    assert_eq!(out, b"12c\r\n\r\n0\r\n\r\n");
    let mut e = BodyEncoder::new(ResponseFraming::Chunked);
    let n = e.begin_raw(10, &mut Vec::new());
    assert!(!e.end_raw(n, 4, &mut Vec::new()));
    // A declared length caps raw bytes like written ones, and counts them.
    let mut out = Vec::new();
    let mut e = BodyEncoder::new(ResponseFraming::Length(8));
    assert_eq!(e.limit(), Some(8));
    assert_eq!(e.begin_raw(100, &mut out), 8);
    assert!(out.is_empty());
    assert!(e.end_raw(8, 5, &mut out));
    assert_eq!(e.limit(), Some(3));
    assert!(!e.finish(&mut out), "short body reported");
    // No body: nothing may go.
    let mut e = BodyEncoder::new(ResponseFraming::NoBody);
    assert_eq!(e.begin_raw(5, &mut Vec::new()), 0);
    assert_eq!(BodyEncoder::new(ResponseFraming::UntilClose).limit(), None);
}

#[test]
fn a_length_body_can_be_read_in_place() {
    let mut d = BodyDecoder::new(BodyFraming::Length(10), &Limits::default());
    assert_eq!(d.raw_window(4), Some(4));
    d.consume_raw(4);
    assert_eq!(d.raw_window(100), Some(6));
    d.consume_raw(6);
    assert!(d.is_done());
    assert_eq!(d.raw_window(100), Some(0));
    let d = BodyDecoder::new(BodyFraming::Chunked, &Limits::default());
    assert_eq!(d.raw_window(100), None);
    let d = BodyDecoder::new(BodyFraming::Empty, &Limits::default());
    assert_eq!(d.raw_window(100), Some(0));
}

#[test]
fn the_apps_connection_close_is_honoured_and_an_empty_body_gets_a_zero_length() {
    let close = [h("Connection", "Keep-Alive, close")];
    let (text, _, keep_alive) = head(&spec(200, &close));
    assert!(!keep_alive);
    assert!(text.contains("Connection: close\r\n") && !text.contains("Keep-Alive"));

    let mut out = Vec::new();
    let r = write_empty_response_head(&spec(200, &[h("X-A", "1")]), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        (r.framing, r.keep_alive),
        (ResponseFraming::Length(0), true)
    );
    assert!(text.contains("X-A: 1\r\nContent-Length: 0\r\n") && !text.contains("chunked"));
    // A head that already ends its body is left as it is.
    let mut out = Vec::new();
    let r = write_empty_response_head(&spec(204, &[]), &mut out).unwrap();
    assert_eq!(r.framing, ResponseFraming::NoBody);
    assert!(!String::from_utf8(out).unwrap().contains("Content-Length"));
    assert!(
        ResponseFraming::Chunked.is_open_ended() && !ResponseFraming::Length(0).is_open_ended()
    );
}
