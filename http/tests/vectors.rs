//! Every request vector of gunicorn's test suite, run through our parser.
//!
//! The vectors live outside the repository, at `../shared/vectors/gunicorn` relative to the repo
//! root (override with `FERROCORN_GUNICORN_VECTORS`); a missing directory fails the test. The
//! `.py` expectation files are loaded by python3 running `tests/vectors/dump.py`, which prints
//! them as hex lines.
//!
//! Each vector is fed whole, one byte at a time, line by line and in seeded random pieces; all
//! feedings must agree. A `valid/` vector must give exactly the expected requests (method, target,
//! path, query, version, headers with names upper-cased, body, trailers); an `invalid/` one must
//! fail with the error its gunicorn exception maps to (see [`matches_exception`]).
//!
//! Where ferrocorn is deliberately stricter than gunicorn, or a vector sets a gunicorn option we do
//! not have, the vector is listed in [`DEVIATIONS`] with the outcome we give instead and why; that
//! outcome is asserted like any other, and an entry that no longer applies fails the test. One
//! rule is applied generically: RFC 9112 §3.2 requires 400 for an HTTP/1.1 request without Host,
//! and many of gunicorn's vectors omit it. For those the test asserts that 400, then inserts
//! `Host: ferrocorn.test` after the request line and asserts the full expected parse (with that
//! field first).

use std::path::PathBuf;
use std::process::Command;

use ferrocorn_http::{
    BodyDecoder, HeadParser, HeaderMapPolicy, Limits, Parsed, RequestError, Version,
};

const INJECTED_HOST: &[u8] = b"ferrocorn.test";

/// What we do instead of what gunicorn's `.py` says, and why.
struct Deviation {
    name: &'static str,
    outcome: Expected,
    why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// Rejected with this status.
    Status(u16),
    /// Rejected with exactly this error.
    Exactly(RequestError),
    /// Not complete at EOF.
    Incomplete,
}

const MISSING_HOST: RequestError = RequestError::BadRequest("HTTP/1.1 request without Host");

const DEVIATIONS: &[Deviation] = &[
    Deviation {
        name: "valid/025_line",
        outcome: Expected::Status(501),
        why: "gzip before chunked: we decode no transfer coding but chunked (RFC 9112 §6.1: 501)",
    },
    Deviation {
        name: "valid/029",
        outcome: Expected::Status(501),
        why: "identity, chunked: `identity` is no longer a transfer coding (RFC 9112 removed it); 501",
    },
    Deviation {
        name: "valid/030",
        outcome: Expected::Status(501),
        why: "identity, chunked: as valid/029",
    },
    Deviation {
        name: "valid/rfc9112_smuggle_gzip_chunked_01",
        outcome: Expected::Status(501),
        why: "gzip, chunked: we decode no transfer coding but chunked; 501",
    },
    Deviation {
        name: "valid/rfc9112_smuggle_te_identity_chunked_01",
        outcome: Expected::Status(501),
        why: "identity, chunked: as valid/029",
    },
    Deviation {
        name: "valid/025",
        outcome: Expected::Status(501),
        why: "Transfer-Encoding gzip then chunked (two fields): as valid/025_line",
    },
    Deviation {
        name: "valid/009",
        outcome: Expected::Exactly(RequestError::BadRequest("both Content-Length and Transfer-Encoding")),
        why: "Transfer-Encoding (identity) with Content-Length: the CL.TE smuggling shape is refused \
              (RFC 9112 §6.3 lets a server reject it; we always do)",
    },
    Deviation {
        name: "valid/099",
        outcome: Expected::Incomplete,
        why: "the file's body is 8599 bytes but it declares Content-Length: 17914; gunicorn hands \
              the short body over, we never treat a body cut short by EOF as complete",
    },
    Deviation {
        name: "valid/028",
        outcome: Expected::Status(400),
        why: "sets strip_header_spaces (not supported): whitespace before a colon MUST be rejected \
              (RFC 9112 §5.1), it is a classic smuggling vector",
    },
    Deviation {
        name: "valid/031compat",
        outcome: Expected::Status(400),
        why: "sets permit_unconventional_http_method + casefold_http_method (not supported): lower \
              case methods are refused",
    },
    Deviation {
        name: "valid/031compat2",
        outcome: Expected::Status(400),
        why: "sets permit_unconventional_http_method (not supported): lower case methods are refused",
    },
    Deviation {
        name: "valid/compat_obs_fold",
        outcome: Expected::Status(400),
        why: "sets permit_obsolete_folding (not supported): obs-fold is refused (RFC 9112 §5.2 allows it)",
    },
    Deviation {
        name: "valid/compat_obs_fold_huge",
        outcome: Expected::Status(400),
        why: "sets permit_obsolete_folding (not supported): obs-fold is refused",
    },
    Deviation {
        name: "invalid/013",
        outcome: Expected::Status(400),
        why: "sets permit_obsolete_folding (not supported): refused for the fold (400) before the \
              folded size could be 431",
    },
    Deviation {
        name: "invalid/019",
        outcome: Expected::Exactly(MISSING_HOST),
        why: "sets forwarded_allow_ips: conflicting X-Forwarded-Proto/-Ssl is a WSGI environ \
              (url_scheme) concern, not the parser's; the parser rejects this vector only because \
              it lacks Host",
    },
    Deviation {
        name: "valid/pp_01",
        outcome: Expected::Status(400),
        why: "sets proxy_protocol (not supported by ferrocorn): a PROXY v1 line is not a request line",
    },
    Deviation {
        name: "valid/pp_02",
        outcome: Expected::Status(400),
        why: "sets proxy_protocol (not supported by ferrocorn): as valid/pp_01",
    },
    Deviation {
        name: "valid/pp_04",
        outcome: Expected::Status(400),
        why: "sets proxy_protocol (not supported by ferrocorn): a PROXY v2 binary header is refused",
    },
    Deviation {
        name: "valid/pp_05",
        outcome: Expected::Status(400),
        why: "sets proxy_protocol (not supported by ferrocorn): as valid/pp_04",
    },
];

/// Options a vector may set that this test applies; any other option must come with a
/// [`DEVIATIONS`] entry or be listed in [`MOOT_OPTIONS`].
const APPLIED_OPTIONS: &[&str] = &[
    "limit_request_line",
    "limit_request_fields",
    "limit_request_field_size",
    "header_map",
];

/// Vectors whose unsupported option does not change their outcome, and why.
const MOOT_OPTIONS: &[(&str, &str)] = &[
    (
        "valid/pp_03",
        "proxy_protocol is on but the request has no PROXY line: a plain request",
    ),
    (
        "invalid/pp_01",
        "proxy_protocol: a malformed PROXY line is refused as a request line (400)",
    ),
    ("invalid/pp_02", "proxy_protocol: as invalid/pp_01"),
    ("invalid/pp_03", "proxy_protocol: as invalid/pp_01"),
];

#[derive(Debug, Default)]
struct Vector {
    valid: bool,
    name: String,
    data: Vec<u8>,
    cfg: Vec<(String, String)>,
    error: Option<String>,
    requests: Vec<Req>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Req {
    method: String,
    target: String,
    path: String,
    query: String,
    version: Option<Version>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fail {
    Rejected(RequestError),
    /// EOF inside a request (gunicorn's NoMoreData / ChunkMissingTerminator).
    Incomplete,
}

fn vectors_dir() -> PathBuf {
    std::env::var_os("FERROCORN_GUNICORN_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/gunicorn")
        })
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn unhex_str(s: &str) -> String {
    String::from_utf8(unhex(s)).expect("utf-8")
}

fn load() -> Vec<Vector> {
    let dir = vectors_dir();
    assert!(
        dir.join("valid").is_dir(),
        "gunicorn vectors not found at {}",
        dir.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/dump.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "dump.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut vectors = Vec::new();
    let mut v = Vector::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "VECTOR" => {
                v = Vector {
                    valid: f[1] == "valid",
                    name: format!("{}/{}", f[1], f[2]),
                    ..Vector::default()
                }
            }
            "DATA" => v.data = unhex(f[1]),
            "CFG" => v.cfg.push((f[1].to_string(), unhex_str(f[2]))),
            "ERROR" => v.error = Some(f[1].to_string()),
            "REQUEST" => v.requests.push(Req::default()),
            "METHOD" => v.requests.last_mut().unwrap().method = unhex_str(f[1]),
            "URI" => {
                let r = v.requests.last_mut().unwrap();
                r.target = unhex_str(f[1]);
                r.path = unhex_str(f[2]);
                r.query = unhex_str(f[3]);
            }
            "VERSION" => {
                v.requests.last_mut().unwrap().version = Some(match (f[1], f[2]) {
                    ("1", "0") => Version::Http10,
                    ("1", "1") => Version::Http11,
                    other => panic!("{}: version {other:?}", v.name),
                })
            }
            "HEADER" => v
                .requests
                .last_mut()
                .unwrap()
                .headers
                .push((unhex_str(f[1]), unhex(f[2]))),
            "BODY" => v.requests.last_mut().unwrap().body = unhex(f[1]),
            "TRAILER" => v
                .requests
                .last_mut()
                .unwrap()
                .trailers
                .push((unhex_str(f[1]), unhex(f[2]))),
            "END" => vectors.push(std::mem::take(&mut v)),
            other => panic!("unexpected dump line {other:?}"),
        }
    }
    vectors
}

/// Limits and header policy from a vector's gunicorn config (only the options we apply).
fn config(v: &Vector) -> Limits {
    let mut limits = Limits::default();
    for (key, value) in &v.cfg {
        match key.as_str() {
            "limit_request_line" => limits.request_line = value.parse().unwrap(),
            "limit_request_fields" => limits.fields = value.parse().unwrap(),
            "limit_request_field_size" => limits.field_size = value.parse().unwrap(),
            "header_map" => {
                limits.header_map = match value.as_str() {
                    "drop" => HeaderMapPolicy::Drop,
                    "refuse" => HeaderMapPolicy::Refuse,
                    "dangerous" => HeaderMapPolicy::Dangerous,
                    other => panic!("{}: header_map {other}", v.name),
                }
            }
            _ => {}
        }
    }
    limits
}

/// Where to cut the input: each plan is a list of piece lengths covering it.
fn plans(len: usize, data: &[u8]) -> Vec<Vec<usize>> {
    let mut plans = vec![vec![len], vec![1; len]];
    // Line by line, like gunicorn's send_lines.
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, _) in data.iter().enumerate().filter(|(_, &b)| b == b'\n') {
        lines.push(i + 1 - start);
        start = i + 1;
    }
    if start < len {
        lines.push(len - start);
    }
    plans.push(lines);
    // Seeded random pieces (xorshift), so failures reproduce.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ len as u64;
    for _ in 0..4 {
        let mut plan = Vec::new();
        let mut left = len;
        let max = (len / 7).max(1);
        while left > 0 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed as usize % max + 1).min(left);
            plan.push(n);
            left -= n;
        }
        plans.push(plan);
    }
    plans
}

/// Feed `data` in the pieces of `plan`, parsing requests back to back like a connection does.
/// Returns the requests parsed, how the stream ended, and where the failing request started.
fn run(data: &[u8], plan: &[usize], limits: &Limits) -> (Vec<Req>, Result<(), Fail>, usize) {
    let mut got = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut consumed = 0; // bytes of `data` drained from `buf`
    let mut request_start = 0;
    let mut parser = HeadParser::new();
    let mut current: Option<(Req, BodyDecoder, bool)> = None;
    let mut fed = 0;
    for &n in plan {
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            if let Some((req, decoder, _)) = current.as_mut() {
                match decoder.decode(&buf, &mut req.body) {
                    Ok(used) => {
                        buf.drain(..used);
                        consumed += used;
                    }
                    Err(e) => return (got, Err(Fail::Rejected(e)), request_start),
                }
                if !decoder.is_done() {
                    break;
                }
                let (mut req, decoder, keep_alive) = current.take().unwrap();
                req.trailers = decoder
                    .trailers()
                    .iter()
                    .map(|(n, v)| (n.to_ascii_uppercase(), v.clone()))
                    .collect();
                got.push(req);
                if !keep_alive {
                    // The connection ends here; whatever follows is never parsed.
                    return (got, Ok(()), consumed);
                }
                request_start = consumed;
                parser = HeadParser::new();
                continue;
            }
            match parser.parse(&buf, limits) {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Complete(head, used)) => {
                    buf.drain(..used);
                    consumed += used;
                    let req = Req {
                        method: head.method().to_string(),
                        target: head.target().to_string(),
                        path: head.path().to_string(),
                        query: head.query().to_string(),
                        version: Some(head.version()),
                        headers: head
                            .headers()
                            .map(|(n, v)| (n.to_ascii_uppercase(), v.to_vec()))
                            .collect(),
                        body: Vec::new(),
                        trailers: Vec::new(),
                    };
                    current = Some((
                        req,
                        BodyDecoder::new(head.framing(), limits),
                        head.keep_alive(),
                    ));
                }
                Err(e) => return (got, Err(Fail::Rejected(e)), request_start),
            }
        }
    }
    // Empty lines between requests are tolerated (RFC 9112 §2.2), also at the end.
    let idle = buf.chunks(2).all(|c| c == b"\r\n");
    let end = if current.is_some() || !idle {
        Err(Fail::Incomplete)
    } else {
        Ok(())
    };
    (got, end, request_start)
}

/// Run every plan and insist they agree.
fn run_all(name: &str, data: &[u8], limits: &Limits) -> (Vec<Req>, Result<(), Fail>, usize) {
    let mut first = None;
    for plan in plans(data.len(), data) {
        let r = run(data, &plan, limits);
        match &first {
            None => first = Some(r),
            Some(f) => assert_eq!(
                f, &r,
                "{name}: feeding in pieces {plan:?} changed the result"
            ),
        }
    }
    first.unwrap()
}

/// Does our failure correspond to gunicorn's exception class?
fn matches_exception(class: &str, fail: &Fail) -> bool {
    use RequestError::*;
    matches!(
        (class, fail),
        ("NoMoreData" | "ChunkMissingTerminator", Fail::Incomplete)
            | ("LimitRequestLine", Fail::Rejected(UriTooLong))
            | ("LimitRequestHeaders", Fail::Rejected(HeadersTooLarge(_)))
            | (
                "InvalidHTTPVersion",
                Fail::Rejected(BadRequest(_) | VersionNotSupported)
            )
            | (
                "UnsupportedTransferCoding",
                Fail::Rejected(NotImplemented(_))
            )
            | (
                "InvalidRequestLine"
                    | "InvalidRequestMethod"
                    | "InvalidHeader"
                    | "InvalidHeaderName"
                    | "InvalidChunkSize"
                    | "InvalidChunkExtension"
                    | "ObsoleteFolding"
                    | "InvalidProxyLine"
                    | "InvalidSchemeHeaders",
                Fail::Rejected(BadRequest(_)),
            )
    )
}

fn check_deviation(name: &str, d: &Deviation, result: &Result<(), Fail>) {
    let ok = match (&d.outcome, result) {
        (Expected::Status(s), Err(Fail::Rejected(e))) => e.status() == *s,
        (Expected::Exactly(want), Err(Fail::Rejected(e))) => e == want,
        (Expected::Incomplete, Err(Fail::Incomplete)) => true,
        _ => false,
    };
    assert!(
        ok,
        "{name}: documented as {:?} ({}), got {result:?}",
        d.outcome, d.why
    );
}

/// Insert `Host: ferrocorn.test` after the request line of the request starting at `at`.
fn inject_host(data: &[u8], at: usize) -> Vec<u8> {
    let eol = at
        + data[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("request line")
        + 2;
    let mut out = data[..eol].to_vec();
    out.extend_from_slice(b"Host: ");
    out.extend_from_slice(INJECTED_HOST);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&data[eol..]);
    out
}

fn check_valid(v: &Vector, limits: &Limits) -> usize {
    let mut data = v.data.clone();
    let mut injected = Vec::new();
    loop {
        let (got, end, at) = run_all(&v.name, &data, limits);
        if end == Err(Fail::Rejected(MISSING_HOST)) {
            assert!(
                got.len() < v.requests.len(),
                "{}: request {} is not expected",
                v.name,
                got.len()
            );
            assert_eq!(
                v.requests[got.len()].version,
                Some(Version::Http11),
                "{}",
                v.name
            );
            assert!(
                !v.requests[got.len()]
                    .headers
                    .iter()
                    .any(|(n, _)| n == "HOST"),
                "{}: Host was sent but not seen",
                v.name
            );
            injected.push(got.len());
            data = inject_host(&data, at);
            continue;
        }
        assert_eq!(end, Ok(()), "{}: expected to parse", v.name);
        let mut want = v.requests.clone();
        for &i in &injected {
            want[i]
                .headers
                .insert(0, ("HOST".to_string(), INJECTED_HOST.to_vec()));
        }
        assert_eq!(got.len(), want.len(), "{}: number of requests", v.name);
        for (g, w) in got.iter().zip(&want) {
            let authority_form = w.method == "CONNECT";
            let mut w = w.clone();
            if authority_form {
                // urlsplit makes a scheme out of `host:`; the target itself is compared.
                w.path = String::new();
                w.query = String::new();
            }
            assert_eq!(g, &w, "{}", v.name);
        }
        return injected.len();
    }
}

#[test]
fn gunicorn_vectors() {
    let vectors = load();
    assert!(vectors.len() > 100, "only {} vectors found", vectors.len());
    let mut used_deviations = Vec::new();
    let (mut matched, mut deviated, mut host_injected) = (0, 0, 0);
    let mut failures = Vec::new();
    for v in &vectors {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let deviation = DEVIATIONS.iter().find(|d| d.name == v.name);
            let unapplied: Vec<&str> = v
                .cfg
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !APPLIED_OPTIONS.contains(k))
                .collect();
            if !unapplied.is_empty() && deviation.is_none() {
                assert!(
                MOOT_OPTIONS.iter().any(|(n, _)| *n == v.name),
                "{} sets {unapplied:?}, which this test does not apply, without a documented reason",
                v.name
            );
            }
            let limits = config(v);
            if let Some(d) = deviation {
                used_deviations.push(d.name);
                let (_, end, _) = run_all(&v.name, &v.data, &limits);
                check_deviation(&v.name, d, &end);
                deviated += 1;
                return;
            }
            if v.valid {
                host_injected += usize::from(check_valid(v, &limits) > 0);
            } else {
                let class = v
                    .error
                    .as_deref()
                    .expect("invalid vector names an exception");
                let (_, end, _) = run_all(&v.name, &v.data, &limits);
                let fail = end
                    .as_ref()
                    .err()
                    .unwrap_or_else(|| panic!("{}: accepted, expected {class}", v.name));
                assert!(
                    matches_exception(class, fail),
                    "{}: expected {class}, got {fail:?}",
                    v.name
                );
            }
            matched += 1;
        }));
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| format!("{e:?}"));
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "{} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for d in DEVIATIONS {
        assert!(
            used_deviations.contains(&d.name),
            "deviation for missing vector {}",
            d.name
        );
    }
    eprintln!(
        "{} vectors: {matched} as gunicorn expects ({host_injected} valid ones needed Host added), \
         {deviated} documented deviations",
        vectors.len()
    );
}
