//! Property tests: generated requests round-trip through the parser however the bytes are split,
//! and no input, however hostile, makes the head parser or the chunked decoder panic.

use ferrocorn_http::{
    write_response_head, BodyDecoder, BodyEncoder, BodyFraming, HeadParser, Limits, Parsed,
    RequestHead, ResponseFraming, ResponseSpec, Version,
};
use proptest::prelude::*;

/// A request as generated, before serialization.
#[derive(Debug, Clone)]
struct Spec {
    method: String,
    path: String,
    query: Option<String>,
    version: Version,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Chunk sizes for a chunked body (`None`: Content-Length).
    chunks: Option<Vec<usize>>,
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^`|~-]{1,12}"
}

fn spec() -> impl Strategy<Value = Spec> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "M-SEARCH"]);
    let path = "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,10}){1,4}";
    let query = proptest::option::of("[A-Za-z0-9=&/?%+-]{0,20}");
    let version = prop::sample::select(vec![Version::Http10, Version::Http11]);
    // Names that would change framing or meaning are left to dedicated tests.
    let header = (token(), "[ -~]{0,30}").prop_filter("no framing headers", |(n, _)| {
        let n = n.to_ascii_lowercase();
        ![
            "content-length",
            "transfer-encoding",
            "host",
            "expect",
            "content-type",
            "connection",
        ]
        .contains(&n.as_str())
            && !n.contains('_')
    });
    let headers = prop::collection::vec(header, 0..8);
    let body = prop::collection::vec(any::<u8>(), 0..300);
    let chunked = any::<bool>();
    let cuts = prop::collection::vec(1usize..64, 0..10);
    (method, path, query, version, headers, body, chunked, cuts).prop_map(
        |(method, path, query, version, headers, body, chunked, cuts)| {
            let chunks = (chunked && version == Version::Http11).then(|| {
                let mut sizes = Vec::new();
                let mut left = body.len();
                for c in cuts.into_iter().chain(std::iter::repeat(64)) {
                    if left == 0 {
                        break;
                    }
                    let n = c.min(left);
                    sizes.push(n);
                    left -= n;
                }
                sizes
            });
            let headers = headers
                .into_iter()
                .map(|(n, v)| (n, v.trim_matches(|c| c == ' ' || c == '\t').to_string()))
                .collect();
            Spec {
                method: method.to_string(),
                path,
                query,
                version,
                headers,
                body,
                chunks,
            }
        },
    )
}

fn serialize(s: &Spec) -> Vec<u8> {
    let mut out = format!("{} {}", s.method, s.path).into_bytes();
    if let Some(q) = &s.query {
        out.extend_from_slice(format!("?{q}").as_bytes());
    }
    out.extend_from_slice(format!(" {}\r\n", s.version.as_str()).as_bytes());
    if s.version == Version::Http11 {
        out.extend_from_slice(b"Host: example.com\r\n");
    }
    for (n, v) in &s.headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    match &s.chunks {
        Some(sizes) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut at = 0;
            for &n in sizes {
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&s.body[at..at + n]);
                out.extend_from_slice(b"\r\n");
                at += n;
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        None => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", s.body.len()).as_bytes());
            out.extend_from_slice(&s.body);
        }
    }
    out
}

/// Parse one request (head and body) from `data` fed in pieces ending at `cuts`.
fn parse_split(data: &[u8], cuts: &[usize]) -> (RequestHead, Vec<u8>, usize) {
    let limits = Limits::default();
    let mut parser = HeadParser::new();
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    ends.push(data.len());
    ends.sort_unstable();
    let mut head = None;
    let mut decoder = None;
    let mut body = Vec::new();
    let mut pos = 0; // consumed bytes
    for end in ends {
        loop {
            if let Some(d) = decoder.as_mut() {
                let d: &mut BodyDecoder = d;
                pos += d.decode(&data[pos..end], &mut body).unwrap();
                if d.is_done() {
                    return (head.unwrap(), body, pos);
                }
                break;
            }
            match parser.parse(&data[..end], &limits).unwrap() {
                Parsed::Partial => break,
                Parsed::Complete(h, n) => {
                    decoder = Some(BodyDecoder::new(h.framing(), &limits));
                    head = Some(h);
                    pos = n;
                }
            }
        }
    }
    panic!("request not complete");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(s in spec()) {
        let data = serialize(&s);
        let (head, body, used) = parse_split(&data, &[]);
        prop_assert_eq!(used, data.len());
        prop_assert_eq!(head.method(), s.method.as_str());
        prop_assert_eq!(head.path(), s.path.as_str());
        prop_assert_eq!(head.query(), s.query.as_deref().unwrap_or(""));
        prop_assert_eq!(head.version(), s.version);
        let got: Vec<(String, Vec<u8>)> =
            head.headers().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        let mut want: Vec<(String, Vec<u8>)> = Vec::new();
        if s.version == Version::Http11 {
            want.push(("Host".into(), b"example.com".to_vec()));
        }
        want.extend(s.headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())));
        match &s.chunks {
            Some(_) => {
                want.push(("Transfer-Encoding".into(), b"chunked".to_vec()));
                prop_assert_eq!(head.framing(), BodyFraming::Chunked);
            }
            None => {
                want.push(("Content-Length".into(), s.body.len().to_string().into_bytes()));
                let framing = if s.body.is_empty() {
                    BodyFraming::Empty
                } else {
                    BodyFraming::Length(s.body.len() as u64)
                };
                prop_assert_eq!(head.framing(), framing);
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(body, s.body);
    }

    #[test]
    fn any_split_gives_the_same_parse(s in spec(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let data = serialize(&s);
        let whole = parse_split(&data, &[]);
        let split = parse_split(&data, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn head_parser_never_panics(data in prop::collection::vec(any::<u8>(), 0..600), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        feed_head(&data, &cuts);
    }

    #[test]
    fn head_parser_never_panics_on_near_misses(
        s in spec(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        // A valid request with a few bytes changed reaches the deeper checks.
        let mut data = serialize(&s);
        for (at, b) in edits {
            let at = at % data.len();
            data[at] = b;
        }
        feed_head(&data, &cuts);
    }

    #[test]
    fn split_and_whole_agree_on_near_misses(
        s in spec(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        cut in any::<usize>(),
    ) {
        // Valid or not, a head fed in two pieces is judged exactly as when fed at once.
        let mut data = serialize(&s);
        for (at, b) in edits {
            let at = at % data.len();
            data[at] = b;
        }
        let limits = Limits::default();
        let cut = cut % (data.len() + 1);
        let mut p = HeadParser::new();
        let first = p.parse(&data[..cut], &limits);
        let whole = HeadParser::new().parse(&data, &limits);
        match first {
            Ok(Parsed::Partial) => prop_assert_eq!(p.parse(&data, &limits), whole),
            // Refused early: the whole input is refused for the same reason.
            Err(e) => prop_assert_eq!(whole, Err(e)),
            Ok(complete) => prop_assert_eq!(Ok(complete), whole),
        }
    }

    #[test]
    fn chunked_decoder_never_panics(data in prop::collection::vec(any::<u8>(), 0..600), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let limits = Limits { body: Some(1000), ..Limits::default() };
        let mut d = BodyDecoder::new(BodyFraming::Chunked, &limits);
        let mut out = Vec::new();
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        ends.push(data.len());
        ends.sort_unstable();
        let mut pos = 0;
        for end in ends {
            match d.decode(&data[pos..end], &mut out) {
                Ok(used) => {
                    prop_assert!(used <= end - pos);
                    prop_assert!(used == end - pos || d.is_done(), "stops early only at the end");
                    pos += used;
                    prop_assert!(out.len() <= 1000);
                }
                Err(_) => break,
            }
            if d.is_done() {
                break;
            }
        }
    }

    #[test]
    fn response_head_is_well_formed_or_refused(
        status in 0u16..1100,
        headers in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..12), prop::collection::vec(any::<u8>(), 0..20)), 0..6),
        http11 in any::<bool>(),
        head_request in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let spec = ResponseSpec {
            status,
            reason: "Reason",
            headers: &headers,
            version: if http11 { Version::Http11 } else { Version::Http10 },
            head_request,
            keep_alive: true,
            server: "ferrocorn",
        };
        let mut out = Vec::new();
        if let Ok(r) = write_response_head(&spec, &mut out) {
            let mut parsed = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut parsed);
            let n = match resp.parse(&out) {
                Ok(httparse::Status::Complete(n)) => n,
                other => return Err(TestCaseError::fail(format!("{other:?}: {:?}", String::from_utf8_lossy(&out)))),
            };
            prop_assert_eq!(n, out.len());
            prop_assert_eq!(resp.code, Some(status));
            let mut enc = BodyEncoder::new(r.framing);
            let mut wire = Vec::new();
            enc.encode(&body, &mut wire);
            let complete = enc.finish(&mut wire);
            match r.framing {
                ResponseFraming::NoBody => prop_assert!(wire.is_empty()),
                ResponseFraming::Length(n) => {
                    prop_assert!(wire.len() as u64 <= n);
                    prop_assert_eq!(complete, wire.len() as u64 == n);
                }
                ResponseFraming::Chunked => {
                    let mut out = Vec::new();
                    let mut d = BodyDecoder::new(BodyFraming::Chunked, &Limits::default());
                    prop_assert_eq!(d.decode(&wire, &mut out).unwrap(), wire.len());
                    prop_assert!(d.is_done());
                    prop_assert_eq!(out, body);
                }
                ResponseFraming::UntilClose => prop_assert_eq!(wire, body),
            }
        }
    }
}

fn feed_head(data: &[u8], cuts: &[usize]) {
    let limits = Limits {
        request_line: 200,
        fields: 10,
        field_size: 100,
        body: Some(100),
        ..Limits::default()
    };
    let mut p = HeadParser::new();
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    ends.push(data.len());
    ends.sort_unstable();
    for end in ends {
        match p.parse(&data[..end], &limits) {
            Ok(Parsed::Partial) => {}
            Ok(Parsed::Complete(h, n)) => {
                assert!(n <= end);
                // Accessors on whatever was accepted must work.
                let _ = (
                    h.method(),
                    h.target(),
                    h.path(),
                    h.query(),
                    h.headers().count(),
                    h.framing(),
                );
                return;
            }
            Err(e) => {
                assert!([400, 413, 414, 417, 431, 501, 505].contains(&e.status()));
                return;
            }
        }
    }
}
