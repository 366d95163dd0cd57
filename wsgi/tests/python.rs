//! The WSGI adapter against real CPython, without a server: environ building, APP loading, and
//! whole requests run through `WsgiApp::serve` with an in-memory body and the worker's in-memory
//! response (`MemoryConn`). The
//! apps are the test battery in `<repo>/tests/apps` (validated by `wsgiref.validate`).

use std::io::{self, Cursor, Read};
use std::net::SocketAddr;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use ferrocorn_worker::{AppError, MemoryConn, PeerAddr, ServerAddr};
use ferrocorn_wsgi::environ::{
    base_environ, build_environ, header_key, latin1, percent_decode, EnvironConfig, EnvironError,
    SecureSchemeHeaders, TrustedPeers,
};
use ferrocorn_wsgi::{load, parse_status, Headers, LoadError, RequestInfo, WsgiApp, WsgiConfig};

fn apps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/apps")
}

fn config(spec: &str) -> WsgiConfig {
    WsgiConfig {
        app: spec.into(),
        pythonpath: vec![apps_dir()],
        ..WsgiConfig::default()
    }
}

fn battery() -> WsgiApp {
    init_logger();
    load(&config("battery:app")).expect("load battery:app")
}

/// Log records, captured to check what the adapter logs (tracebacks).
static LOG: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOG.lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

fn init_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
}

fn logged(needle: &str) -> Option<String> {
    LOG.lock()
        .unwrap()
        .iter()
        .find(|l| l.contains(needle))
        .cloned()
}

/// What the worker's in-memory response recorded: the app's calls, and the body it sent (its
/// framing removed; a sendfile range is copied in memory).
#[derive(Debug, Default)]
struct Recorder {
    starts: Vec<(u16, String, Headers)>,
    body: Vec<u8>,
    writes: usize,
    sendfiles: Vec<(u64, Option<u64>)>,
    /// Fail writes after this many (a client that went away).
    fail_after: Option<usize>,
}

impl Recorder {
    fn status(&self) -> u16 {
        self.starts.last().expect("start was called").0
    }
    fn header(&self, name: &str) -> Option<String> {
        let (_, _, headers) = self.starts.last()?;
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Req<'a> {
    method: &'a str,
    target: &'a str,
    headers: Vec<(&'a str, &'a [u8])>,
}

fn get(target: &str) -> Req<'_> {
    Req {
        method: "GET",
        target,
        headers: vec![("Host", b"localhost")],
    }
}

fn peer() -> PeerAddr {
    PeerAddr::Tcp("127.0.0.1:54321".parse::<SocketAddr>().unwrap())
}

fn server() -> ServerAddr {
    ServerAddr {
        name: "localhost".into(),
        port: "8000".into(),
        scheme: "http",
    }
}

fn info<'a>(req: &Req<'a>, peer: &'a PeerAddr, server: &'a ServerAddr) -> RequestInfo<'a> {
    let (path, query) = req.target.split_once('?').unwrap_or((req.target, ""));
    RequestInfo {
        method: req.method,
        target: req.target,
        path,
        query,
        protocol: "HTTP/1.1",
        headers: req.headers.clone(),
        peer,
        server,
    }
}

fn run_with(
    app: &WsgiApp,
    req: Req<'_>,
    body: &mut dyn Read,
    sink: &mut Recorder,
) -> Result<(), AppError> {
    let (peer, server) = (peer(), server());
    let mut conn = MemoryConn::new(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    if let Some(n) = sink.fail_after {
        conn = conn.fail_writes_after(n);
    }
    let result = conn.serve(|_, res| app.serve(&info(&req, &peer, &server), body, res));
    let recorded = conn.recorded();
    sink.body = recorded.body();
    sink.starts = recorded.starts;
    sink.writes = recorded.writes;
    sink.sendfiles = recorded.sendfiles;
    result
}

fn run(app: &WsgiApp, req: Req<'_>, body: &[u8]) -> (Result<(), AppError>, Recorder) {
    let mut sink = Recorder::default();
    let result = run_with(app, req, &mut Cursor::new(body.to_vec()), &mut sink);
    (result, sink)
}

fn closed_count(app: &WsgiApp) -> u64 {
    let (r, sink) = run(app, get("/closed"), b"");
    r.unwrap();
    sink.text().trim().parse().unwrap()
}

// ---- pure helpers ----------------------------------------------------------------------------

#[test]
fn percent_decoding_and_latin1() {
    assert_eq!(percent_decode("/caf%C3%A9/a%2Fb"), b"/caf\xc3\xa9/a/b");
    assert_eq!(percent_decode("/100%/%zz/%4"), b"/100%/%zz/%4");
    assert_eq!(latin1(b"\xc3\xa9"), "\u{c3}\u{a9}");
}

#[test]
fn header_keys() {
    assert_eq!(
        header_key("X-Forwarded-For").as_deref(),
        Some("HTTP_X_FORWARDED_FOR")
    );
    assert_eq!(header_key("content-type").as_deref(), Some("CONTENT_TYPE"));
    assert_eq!(
        header_key("Content-Length").as_deref(),
        Some("CONTENT_LENGTH")
    );
    assert_eq!(header_key("X_Forwarded_For"), None);
}

#[test]
fn status_lines() {
    assert_eq!(parse_status("200 OK"), Ok((200, "OK".to_string())));
    assert_eq!(
        parse_status("404 Not Found"),
        Ok((404, "Not Found".to_string()))
    );
    assert_eq!(parse_status("204"), Ok((204, String::new())));
    for bad in [
        "OK",
        "20 OK",
        "2000 OK",
        "abc OK",
        "200 OK\r\nX: y",
        "099 Low",
        "200 caf\u{e9}",
    ] {
        assert!(parse_status(bad).is_err(), "{bad:?} accepted");
    }
}

// ---- environ ---------------------------------------------------------------------------------

fn mounted(script_name: &str) -> EnvironConfig {
    EnvironConfig {
        script_name: script_name.into(),
        ..EnvironConfig::default()
    }
}

/// Build an environ and check it with wsgiref.validate.check_environ, warnings as errors.
fn environ_for<'py>(py: Python<'py>, req: &Req<'_>, script_name: &str) -> Bound<'py, PyDict> {
    environ_from(py, req, &peer(), &mounted(script_name)).unwrap()
}

/// [`environ_for`] from another peer and with another config; the error when there is no environ.
fn environ_from<'py>(
    py: Python<'py>,
    req: &Req<'_>,
    peer: &PeerAddr,
    config: &EnvironConfig,
) -> Result<Bound<'py, PyDict>, EnvironError> {
    let server = server();
    let base = base_environ(py).unwrap();
    let env = build_environ(py, &base, &info(req, peer, &server), config).unwrap()?;
    env.set_item(
        "wsgi.input",
        py.eval(c"__import__('io').BytesIO()", None, None).unwrap(),
    )
    .unwrap();
    let check = py.eval(
        c"lambda env: (__import__('warnings').simplefilter('error'), __import__('wsgiref.validate').validate.check_environ(env))",
        None,
        None,
    );
    // check_environ wants wsgi.input/errors with the right methods: ours are checked for real in
    // the served tests; here the BytesIO stands in.
    check.unwrap().call1((&env,)).expect("check_environ");
    Ok(env)
}

fn item(env: &Bound<'_, PyDict>, key: &str) -> Option<String> {
    env.get_item(key)
        .unwrap()
        .map(|v| v.extract::<String>().unwrap())
}

#[test]
fn environ_has_pep3333_keys() {
    battery(); // starts Python
    Python::attach(|py| {
        let req = Req {
            method: "POST",
            target: "/caf%C3%A9/x?a=1&b=%20",
            headers: vec![
                ("Host", b"example.com"),
                ("Content-Type", b"text/plain"),
                ("Content-Length", b"5"),
                ("Accept", b"a"),
                ("accept", b"b"),
                ("X_Sneaky", b"dropped"),
                ("X-Latin", b"\xe9t\xe9"),
            ],
        };
        let env = environ_for(py, &req, "");
        assert_eq!(item(&env, "REQUEST_METHOD").as_deref(), Some("POST"));
        assert_eq!(item(&env, "SCRIPT_NAME").as_deref(), Some(""));
        // Percent-decoded, then each byte one code point (UTF-8 bytes seen as latin-1).
        assert_eq!(
            item(&env, "PATH_INFO").as_deref(),
            Some("/caf\u{c3}\u{a9}/x")
        );
        assert_eq!(item(&env, "QUERY_STRING").as_deref(), Some("a=1&b=%20"));
        assert_eq!(
            item(&env, "RAW_URI").as_deref(),
            Some("/caf%C3%A9/x?a=1&b=%20")
        );
        assert_eq!(item(&env, "CONTENT_TYPE").as_deref(), Some("text/plain"));
        assert_eq!(item(&env, "CONTENT_LENGTH").as_deref(), Some("5"));
        assert_eq!(item(&env, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(item(&env, "HTTP_HOST").as_deref(), Some("example.com"));
        assert_eq!(item(&env, "HTTP_ACCEPT").as_deref(), Some("a,b"));
        assert_eq!(item(&env, "HTTP_X_SNEAKY"), None);
        assert_eq!(item(&env, "HTTP_X_LATIN").as_deref(), Some("\u{e9}t\u{e9}"));
        assert_eq!(item(&env, "SERVER_NAME").as_deref(), Some("localhost"));
        assert_eq!(item(&env, "SERVER_PORT").as_deref(), Some("8000"));
        assert_eq!(item(&env, "SERVER_PROTOCOL").as_deref(), Some("HTTP/1.1"));
        assert_eq!(item(&env, "REMOTE_ADDR").as_deref(), Some("127.0.0.1"));
        assert_eq!(item(&env, "REMOTE_PORT").as_deref(), Some("54321"));
        assert_eq!(item(&env, "wsgi.url_scheme").as_deref(), Some("http"));
        let get = |k: &str| env.get_item(k).unwrap().unwrap();
        assert_eq!(get("wsgi.version").extract::<(i32, i32)>().unwrap(), (1, 0));
        assert!(!get("wsgi.multithread").extract::<bool>().unwrap());
        assert!(get("wsgi.multiprocess").extract::<bool>().unwrap());
        assert!(!get("wsgi.run_once").extract::<bool>().unwrap());
        assert!(get("wsgi.input_terminated").extract::<bool>().unwrap());
        assert!(get("wsgi.file_wrapper").is_callable());
    });
}

#[test]
fn environ_without_body_headers_omits_content_length() {
    battery();
    Python::attach(|py| {
        let env = environ_for(py, &get("/"), "");
        assert_eq!(item(&env, "CONTENT_LENGTH"), None);
        assert_eq!(item(&env, "CONTENT_TYPE"), None);
        assert_eq!(item(&env, "PATH_INFO").as_deref(), Some("/"));
    });
}

#[test]
fn script_name_is_stripped_from_path_info() {
    battery();
    Python::attach(|py| {
        let env = environ_for(py, &get("/mount/app/x"), "/mount");
        assert_eq!(item(&env, "SCRIPT_NAME").as_deref(), Some("/mount"));
        assert_eq!(item(&env, "PATH_INFO").as_deref(), Some("/app/x"));
        let (peer, server) = (peer(), server());
        let base = base_environ(py).unwrap();
        // "/mountain" is not under "/mount".
        let r = build_environ(
            py,
            &base,
            &info(&get("/mountain"), &peer, &server),
            &mounted("/mount"),
        )
        .unwrap();
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("/mountain") && msg.contains("SCRIPT_NAME"),
            "{msg}"
        );
    });
}

#[test]
fn trusted_proxies_set_script_name_and_scheme() {
    battery();
    Python::attach(|py| {
        let behind_proxy = Req {
            method: "GET",
            target: "/app/x",
            headers: vec![
                ("Host", b"example.com"),
                ("SCRIPT_NAME", b"/app/"),
                ("X-Forwarded-Proto", b"https"),
            ],
        };
        // From the local host (gunicorn's default forwarded_allow_ips) the headers count.
        let env = environ_from(py, &behind_proxy, &peer(), &mounted("")).unwrap();
        assert_eq!(item(&env, "SCRIPT_NAME").as_deref(), Some("/app"));
        assert_eq!(item(&env, "PATH_INFO").as_deref(), Some("/x"));
        assert_eq!(item(&env, "wsgi.url_scheme").as_deref(), Some("https"));
        // The header wins over $SCRIPT_NAME.
        let env = environ_from(py, &behind_proxy, &peer(), &mounted("/elsewhere")).unwrap();
        assert_eq!(item(&env, "SCRIPT_NAME").as_deref(), Some("/app"));
        // Unix-socket clients are trusted too.
        let env = environ_from(py, &behind_proxy, &PeerAddr::Unix, &mounted("")).unwrap();
        assert_eq!(item(&env, "wsgi.url_scheme").as_deref(), Some("https"));
        // Another client's headers are ignored: no mount, plain http.
        let stranger = PeerAddr::Tcp("203.0.113.9:4000".parse::<SocketAddr>().unwrap());
        let env = environ_from(py, &behind_proxy, &stranger, &mounted("")).unwrap();
        assert_eq!(item(&env, "SCRIPT_NAME").as_deref(), Some(""));
        assert_eq!(item(&env, "PATH_INFO").as_deref(), Some("/app/x"));
        assert_eq!(item(&env, "wsgi.url_scheme").as_deref(), Some("http"));
        assert_eq!(
            item(&env, "HTTP_X_FORWARDED_PROTO").as_deref(),
            Some("https")
        );
        // ... unless it is listed (or everyone is).
        for list in [
            "203.0.113.9",
            "10.0.0.1, 203.0.113.9",
            "203.0.113.0/24",
            "::ffff:203.0.113.9",
            "0.0.0.0/0",
            "*",
        ] {
            let config = EnvironConfig {
                script_name: String::new(),
                trusted: TrustedPeers::parse(list).unwrap(),
                ..EnvironConfig::default()
            };
            let env = environ_from(py, &behind_proxy, &stranger, &config).unwrap();
            assert_eq!(
                item(&env, "wsgi.url_scheme").as_deref(),
                Some("https"),
                "{list}"
            );
        }
        // Each secure-scheme header with gunicorn's values; others say http.
        for (name, value, scheme) in [
            ("X-Forwarded-Protocol", &b"ssl"[..], "https"),
            ("X-Forwarded-Ssl", b"on", "https"),
            ("X-Forwarded-Proto", b"http", "http"),
            ("X-Forwarded-Proto", b"HTTPS", "http"),
        ] {
            let req = Req {
                method: "GET",
                target: "/",
                headers: vec![("Host", b"h"), (name, value)],
            };
            let env = environ_from(py, &req, &peer(), &mounted("")).unwrap();
            assert_eq!(
                item(&env, "wsgi.url_scheme").as_deref(),
                Some(scheme),
                "{name}"
            );
        }
        // Headers that disagree are refused.
        let req = Req {
            method: "GET",
            target: "/",
            headers: vec![("X-Forwarded-Proto", b"https"), ("X-Forwarded-Ssl", b"off")],
        };
        let err = environ_from(py, &req, &peer(), &mounted("")).unwrap_err();
        assert!(matches!(err, EnvironError::ContradictoryScheme), "{err:?}");
    });
    for bad in [
        "127.0.0.1,not-an-ip",
        "10.0.0.0/33",
        "::1/129",
        "10.0.0.0/x",
    ] {
        let err = TrustedPeers::parse(bad).unwrap_err();
        assert!(err.contains("FORWARDED_ALLOW_IPS"), "{bad}: {err}");
    }
    // Networks hold exactly their addresses.
    let peer = |a: &str| PeerAddr::Tcp(a.parse::<SocketAddr>().unwrap());
    let nets = TrustedPeers::parse("10.1.0.0/16, fd00::/8").unwrap();
    assert!(nets.trusts(&peer("10.1.200.3:1")));
    assert!(!nets.trusts(&peer("10.2.0.1:1")));
    assert!(nets.trusts(&peer("[fd12::1]:1")));
    assert!(!nets.trusts(&peer("[fe80::1]:1")));
    assert!(nets.trusts(&peer("[::ffff:10.1.0.9]:1")));
    assert!(!TrustedPeers::parse("")
        .unwrap()
        .trusts(&peer("127.0.0.1:1")));
    assert!(TrustedPeers::default().trusts(&peer("[::1]:1")));
}

/// `wsgi.url_scheme` of a request with `headers` from the local host, with `secure` configured.
fn scheme_with(
    py: Python<'_>,
    secure: &SecureSchemeHeaders,
    headers: Vec<(&str, &[u8])>,
) -> Result<Option<String>, EnvironError> {
    let config = EnvironConfig {
        secure_headers: secure.clone(),
        ..EnvironConfig::default()
    };
    let req = Req {
        method: "GET",
        target: "/",
        headers,
    };
    environ_from(py, &req, &peer(), &config).map(|env| item(&env, "wsgi.url_scheme"))
}

#[test]
fn configured_secure_scheme_headers_replace_gunicorns_three() {
    battery();
    Python::attach(|py| {
        // Names match whatever their case, in the config and in the request.
        let proto_only = SecureSchemeHeaders::new([("x-forwarded-PROTO", "https")]);
        let https = scheme_with(py, &proto_only, vec![("X-Forwarded-Proto", b"https")]);
        assert_eq!(https.unwrap().as_deref(), Some("https"));
        let http = scheme_with(py, &proto_only, vec![("X-FORWARDED-PROTO", b"http")]);
        assert_eq!(http.unwrap().as_deref(), Some("http"));
        // The default headers no longer count, nor do they contradict the listed one.
        for (name, value) in [
            ("X-Forwarded-Ssl", &b"on"[..]),
            ("X-Forwarded-Protocol", b"ssl"),
        ] {
            let env = scheme_with(py, &proto_only, vec![(name, value)]);
            assert_eq!(env.unwrap().as_deref(), Some("http"), "{name}");
        }
        let mixed = vec![
            ("X-Forwarded-Proto", &b"https"[..]),
            ("X-Forwarded-Ssl", b"off"),
        ];
        assert_eq!(
            scheme_with(py, &proto_only, mixed).unwrap().as_deref(),
            Some("https")
        );
        // A header of the proxy's own choosing, with its own value.
        let custom = SecureSchemeHeaders::new([("X-Scheme", "secure"), ("Front-End-Https", "on")]);
        let env = scheme_with(py, &custom, vec![("x-scheme", b"secure")]);
        assert_eq!(env.unwrap().as_deref(), Some("https"));
        let env = scheme_with(py, &custom, vec![("X-Forwarded-Proto", b"https")]);
        assert_eq!(env.unwrap().as_deref(), Some("http"));
        // Two listed headers that disagree are refused, as with the default list.
        let both = vec![("X-Scheme", &b"secure"[..]), ("Front-End-Https", b"off")];
        let err = scheme_with(py, &custom, both).unwrap_err();
        assert!(matches!(err, EnvironError::ContradictoryScheme), "{err:?}");
        // An empty list: no header tells the scheme, and none can contradict another.
        let none = SecureSchemeHeaders::new(Vec::<(&str, &str)>::new());
        let all = vec![
            ("X-Forwarded-Proto", &b"https"[..]),
            ("X-Forwarded-Protocol", b"ssl"),
            ("X-Forwarded-Ssl", b"off"),
        ];
        assert_eq!(
            scheme_with(py, &none, all).unwrap().as_deref(),
            Some("http")
        );
    });
}

#[test]
fn unix_socket_server_name_comes_from_host() {
    battery();
    Python::attach(|py| {
        for (host, name, port) in [
            (&b"example.com"[..], "example.com", "80"),
            (b"example.com:8443", "example.com", "8443"),
            (b"[::1]:9000", "[::1]", "9000"),
        ] {
            let req = Req {
                method: "GET",
                target: "/",
                headers: vec![("Host", host)],
            };
            let env = environ_from(py, &req, &PeerAddr::Unix, &mounted("")).unwrap();
            assert_eq!(item(&env, "SERVER_NAME").as_deref(), Some(name));
            assert_eq!(item(&env, "SERVER_PORT").as_deref(), Some(port));
            assert_eq!(item(&env, "REMOTE_ADDR").as_deref(), Some(""));
            assert_eq!(item(&env, "REMOTE_PORT"), None);
        }
        // https by a trusted header: its default port.
        let req = Req {
            method: "GET",
            target: "/",
            headers: vec![("Host", b"example.com"), ("X-Forwarded-Proto", b"https")],
        };
        let env = environ_from(py, &req, &PeerAddr::Unix, &mounted("")).unwrap();
        assert_eq!(item(&env, "SERVER_PORT").as_deref(), Some("443"));
        // Over TCP the listening address stays, whatever Host says.
        let env = environ_for(py, &get("/"), "");
        assert_eq!(item(&env, "SERVER_NAME").as_deref(), Some("localhost"));
        assert_eq!(item(&env, "SERVER_PORT").as_deref(), Some("8000"));
    });
}

// ---- loading ---------------------------------------------------------------------------------

#[test]
fn spec_forms_load() {
    let (r, s) = run(&load(&config("battery")).unwrap(), get("/"), b"");
    r.unwrap();
    assert_eq!(
        s.text(),
        "Hello, World!\n",
        "module alone means module:application"
    );
    let (r, s) = run(
        &load(&config("battery:ns.inner.app")).unwrap(),
        get("/"),
        b"",
    );
    r.unwrap();
    assert_eq!(s.text(), "Hello, World!\n");
    let (r, s) = run(
        &load(&config("battery:factory('Hi', times=2, tag=[1, 'x'])")).unwrap(),
        get("/"),
        b"",
    );
    r.unwrap();
    assert_eq!(s.text(), "Hi Hi tag=[1, 'x']\n");
    let (r, s) = run(&load(&config("battery:factory()")).unwrap(), get("/"), b"");
    r.unwrap();
    assert_eq!(s.text(), "Hello\n");
}

#[test]
fn same_config_loads_the_same_object() {
    let a = battery();
    let b = battery();
    let c = a.clone_ref();
    assert!(a.object().is(b.object()) && a.object().is(c.object()));
}

fn load_err(spec: &str) -> LoadError {
    load(&config(spec)).map(|_| ()).expect_err(spec)
}

#[test]
fn missing_module_is_named() {
    let e = load_err("ferrocorn_no_such_module:app");
    assert!(matches!(e, LoadError::ModuleNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("ferrocorn_no_such_module"), "{e}");
    let e = load_err("battery.py");
    assert!(e.to_string().contains("did you mean 'battery:...'"), "{e}");
}

#[test]
fn import_error_carries_the_traceback() {
    let e = load_err("import_error:app");
    assert!(matches!(e, LoadError::ImportFailed { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("\"import_error\""), "{msg}");
    assert!(
        msg.contains("Traceback") && msg.contains("fails on purpose"),
        "{msg}"
    );
    // A dependency that is missing is an import error of the app module, not "module not found".
    let e = load_err("broken_dep:app");
    assert!(matches!(e, LoadError::ImportFailed { .. }), "{e:?}");
    assert!(
        e.to_string().contains("ferrocorn_no_such_dependency"),
        "{e}"
    );
}

#[test]
fn missing_attribute_and_not_callable() {
    let e = load_err("battery:nope");
    assert_eq!(
        e.to_string(),
        "failed to find attribute \"nope\" in \"battery\""
    );
    let e = load_err("battery:ns.inner.nope");
    assert!(e.to_string().contains("\"ns.inner.nope\""), "{e}");
    let e = load_err("battery:not_callable");
    assert!(matches!(e, LoadError::NotCallable { .. }), "{e:?}");
    assert!(e.to_string().contains("battery:not_callable"), "{e}");
}

#[test]
fn bad_specs_are_refused_without_evaluating() {
    for (spec, needle) in [
        ("battery:factory(__import__('os').getcwd())", "literals"),
        ("battery:factory(*[1])", "*args"),
        ("battery:factory(**{})", "**kwargs"),
        ("battery:app[0]", "attribute name"),
        ("battery:", "empty"),
        (":app", "empty"),
        ("bat-tery:app", "module name"),
        ("battery:factory(", "attribute name"),
    ] {
        let e = load_err(spec);
        assert!(matches!(e, LoadError::BadSpec { .. }), "{spec}: {e:?}");
        assert!(e.to_string().contains(needle), "{spec}: {e}");
    }
    let e = load_err("battery:factory(times='x')");
    assert!(matches!(e, LoadError::FactoryFailed { .. }), "{e:?}");
    assert!(e.to_string().contains("TypeError"), "{e}");
}

// ---- serving ---------------------------------------------------------------------------------

#[test]
fn hello_through_the_validator() {
    let (r, s) = run(&battery(), get("/"), b"");
    r.unwrap();
    assert_eq!((s.status(), s.starts[0].1.as_str()), (200, "OK"));
    assert_eq!(s.header("content-length").as_deref(), Some("14"));
    assert_eq!(s.text(), "Hello, World!\n");
}

#[test]
fn streaming_generator_and_close() {
    let app = battery();
    let before = closed_count(&app);
    let (r, s) = run(&app, get("/stream?n=3"), b"");
    r.unwrap();
    assert_eq!(s.text(), "chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(s.writes, 3, "each chunk is written as it is produced");
    assert_eq!(s.header("content-length"), None);
    assert!(closed_count(&app) > before);
}

#[test]
fn a_list_is_sent_without_a_close_and_a_list_subclass_with_one_is_closed() {
    let app = battery();
    let before = closed_count(&app);
    let (r, s) = run(&app, get("/"), b"");
    r.unwrap();
    assert_eq!(s.text(), "Hello, World!\n");
    assert_eq!(closed_count(&app), before, "a list has no close()");
    let (r, s) = run(&app, get("/closing_list"), b"");
    r.unwrap();
    assert_eq!(s.text(), "closed");
    assert_eq!(closed_count(&app), before + 1);
}

#[test]
fn close_is_called_when_the_client_goes_away() {
    let app = battery();
    let before = closed_count(&app);
    let mut sink = Recorder {
        fail_after: Some(1),
        ..Recorder::default()
    };
    let r = run_with(
        &app,
        get("/stream?n=50"),
        &mut Cursor::new(Vec::new()),
        &mut sink,
    );
    assert!(matches!(r, Err(AppError::Io(_))), "{r:?}");
    assert_eq!(sink.text(), "chunk 0\n");
    assert!(
        closed_count(&app) > before,
        "close() not called after a failed write"
    );
}

#[test]
fn start_response_called_inside_the_generator() {
    let (r, s) = run(&battery(), get("/lazy"), b"");
    r.unwrap();
    assert_eq!((s.status(), s.text().as_str()), (200, "started lazily\n"));
}

#[test]
fn write_callable() {
    let (r, s) = run(&battery(), get("/write"), b"");
    r.unwrap();
    assert_eq!(s.text(), "written 1\nwritten 2\nreturned\n");
}

#[test]
fn empty_bodies() {
    for kind in ["list", "empties", "204"] {
        let target = format!("/empty?kind={kind}");
        let (r, s) = run(&battery(), get(&target), b"");
        r.unwrap();
        assert_eq!(s.starts.len(), 1, "{kind}: head started once, at the end");
        assert_eq!(s.status(), if kind == "204" { 204 } else { 200 });
        assert!(s.body.is_empty());
        assert_eq!(s.writes, 0, "{kind}: empty strings are not written");
    }
}

#[test]
fn file_wrapper_uses_sendfile_for_regular_files() {
    let path = std::env::temp_dir().join(format!("ferrocorn-fw-{}.bin", std::process::id()));
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let target = format!("/sendfile?path={}&offset=1000", path.display());
    let (r, s) = run(&battery(), get(&target), b"");
    r.unwrap();
    assert_eq!(s.sendfiles, vec![(1000, Some(299_000))]);
    assert_eq!(s.writes, 0);
    assert!(s.body == data[1000..], "sendfile sent other bytes");
    // Through the validator (which wraps the iterable) the same file is iterated instead.
    let (r, s) = run(
        &battery(),
        get(&target.replacen("/sendfile", "/file", 1)),
        b"",
    );
    r.unwrap();
    assert!(s.sendfiles.is_empty());
    assert!(s.body == data[1000..], "iteration sent other bytes");
    // Without a Content-Length the whole rest of the file goes.
    let (r, s) = run(&battery(), get(&format!("{target}&nolength=1")), b"");
    r.unwrap();
    assert_eq!(s.sendfiles, vec![(1000, Some(299_000))]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn file_wrapper_iterates_objects_without_a_file_descriptor() {
    let (r, s) = run(&battery(), get("/file?mem=1&repeat=3"), b"");
    r.unwrap();
    assert!(s.sendfiles.is_empty());
    assert_eq!(s.text(), "in-memory file\n".repeat(3));
}

#[test]
fn exc_info_before_the_head_replaces_the_status() {
    let (r, s) = run(&battery(), get("/exc_info/early"), b"");
    r.unwrap();
    assert_eq!(s.status(), 500);
    assert_eq!(s.text(), "recovered from ValueError\n");
}

#[test]
fn exc_info_after_the_head_reraises() {
    let (r, s) = run(&battery(), get("/exc_info/late"), b"");
    match r {
        Err(AppError::Failed(msg)) => assert!(msg.contains("something broke mid-body"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.status(), 200);
    assert_eq!(s.text(), "partial body\n");
}

#[test]
fn app_exception_is_failed() {
    let (r, s) = run(&battery(), get("/error"), b"");
    match r {
        Err(AppError::Failed(msg)) => assert!(msg.contains("always raises"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(s.starts.is_empty());
    // The whole traceback is logged as an error, with the request and the raising function.
    let line = logged("battery /error always raises").expect("traceback logged");
    assert!(
        line.starts_with("ERROR Error handling request /error"),
        "{line}"
    );
    assert!(line.contains("Traceback (most recent call last)"), "{line}");
    assert!(line.contains("in error"), "{line}");
}

#[test]
fn broken_responses_are_bad_response() {
    for (route, needle) in [
        ("/broken/status", "invalid status line"),
        ("/broken/header", "not latin-1"),
        ("/broken/no_start", "start_response"),
        ("/broken/str_body", "yielded str"),
        ("/broken/never_started", "did not call start_response"),
        (
            "/broken/two_lengths",
            "conflicting Content-Length headers (5 and 7)",
        ),
    ] {
        let (r, _) = run(&battery(), get(route), b"");
        match r {
            Err(AppError::BadResponse(msg)) => assert!(msg.contains(needle), "{route}: {msg}"),
            other => panic!("{route}: {other:?}"),
        }
    }
}

#[test]
fn input_read_in_chunks_streams_the_body() {
    let body: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
    let req = Req {
        method: "POST",
        target: "/upload",
        headers: vec![
            ("Content-Length", b"1000003"),
            ("Content-Type", b"application/octet-stream"),
        ],
    };
    // A reader that counts how much was asked of it at most at once.
    struct Counting {
        inner: Cursor<Vec<u8>>,
        biggest: usize,
    }
    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.biggest = self.biggest.max(buf.len());
            self.inner.read(buf)
        }
    }
    let mut reader = Counting {
        inner: Cursor::new(body.clone()),
        biggest: 0,
    };
    let mut sink = Recorder::default();
    run_with(&battery(), req, &mut reader, &mut sink).unwrap();
    let digest = Python::attach(|py| {
        let h = py
            .import("hashlib")
            .unwrap()
            .call_method1("sha256", (pyo3::types::PyBytes::new(py, &body),))
            .unwrap();
        h.call_method0("hexdigest")
            .unwrap()
            .extract::<String>()
            .unwrap()
    });
    assert_eq!(sink.text(), format!("1000003 {digest}\n"));
    assert!(
        reader.biggest <= 65536,
        "read {} bytes at once for read(65536)",
        reader.biggest
    );
}

#[test]
fn input_lines() {
    let body = b"one\ntwo\n\nthree";
    for how in ["iter", "readline", "readlines"] {
        let target = format!("/lines?how={how}");
        let req = Req {
            method: "POST",
            target: &target,
            headers: vec![("Content-Length", b"14")],
        };
        let (r, s) = run(&battery(), req, body);
        r.unwrap();
        assert_eq!(s.text(), r#"["one\n", "two\n", "\n", "three"]"#, "{how}");
    }
}

#[test]
fn input_stream_methods_directly() {
    // read(n) never returns more than n, readline(limit) stops at the limit, the end gives b"".
    let app = battery();
    Python::attach(|py| {
        let code = c"
def probe(environ, start_response):
    i = environ['wsgi.input']
    out = [i.read(3), i.readline(2), i.readline(), i.readline(-1), i.read(0), i.readlines(1),
           i.read(), i.read(5), i.readline()]
    environ['saved'].append(i)
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [repr(out).encode()]
saved = []
";
        let m = pyo3::types::PyModule::from_code(py, code, c"probe.py", c"probe").unwrap();
        let _ = &app;
        let probe = m.getattr("probe").unwrap();
        let saved = m.getattr("saved").unwrap();
        let wrapper = py
            .eval(c"lambda f, saved: (lambda env, sr: (env.__setitem__('saved', saved), f(env, sr))[1])", None, None)
            .unwrap()
            .call1((probe, &saved))
            .unwrap();
        let app = ferrocorn_wsgi::WsgiApp::from_object(wrapper.unbind()).unwrap();
        py.detach(|| {
            let (r, s) = run(
                &app,
                Req {
                    method: "POST",
                    target: "/",
                    headers: vec![],
                },
                b"abcdef\nghi\njkl\nmno\npqr",
            );
            r.unwrap();
            assert_eq!(
                s.text(),
                r"[b'abc', b'de', b'f\n', b'ghi\n', b'', [b'jkl\n'], b'mno\npqr', b'', b'']"
            );
        });
        // Kept past its request, the stream refuses to read instead of touching freed memory.
        let err = saved
            .get_item(0)
            .unwrap()
            .call_method1("read", (1,))
            .unwrap_err();
        assert!(
            err.to_string().contains("after the request finished"),
            "{err}"
        );
    });
}

#[test]
fn wsgi_errors_accepts_text() {
    let app = battery();
    let _ = app;
    Python::attach(|py| {
        let base = base_environ(py).unwrap();
        let errors = base.get_item("wsgi.errors").unwrap().unwrap();
        errors
            .call_method1("write", ("wsgi.errors test line\n",))
            .unwrap();
        errors
            .call_method1("writelines", (vec!["a\n", "b\n"],))
            .unwrap();
        errors.call_method0("flush").unwrap();
        assert!(errors
            .call_method1("write", (b"bytes".as_slice(),))
            .is_err());
    });
}

#[test]
fn sys_argv_is_the_process_command_line() {
    battery();
    let argv: Vec<String> = Python::attach(|py| {
        py.import("sys")
            .unwrap()
            .getattr("argv")
            .unwrap()
            .extract()
            .unwrap()
    });
    let ours: Vec<String> = std::env::args().collect();
    assert_eq!(argv, ours);
}

#[test]
fn a_body_cut_short_is_an_io_error_not_the_apps_fault() {
    /// Gives some bytes, then fails like a client that went away mid-body.
    struct CutShort(usize);
    impl Read for CutShort {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed mid-body",
                ));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }
    let req = Req {
        method: "POST",
        target: "/upload",
        headers: vec![("Content-Length", b"1000000")],
    };
    let mut sink = Recorder::default();
    let r = run_with(&battery(), req, &mut CutShort(100_000), &mut sink);
    match r {
        Err(AppError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(
        sink.starts.is_empty(),
        "nothing may be answered to a broken request"
    );
}

#[test]
fn other_threads_cannot_touch_the_request() {
    battery();
    let app = Python::attach(|py| {
        let code = c"
import threading

def app(environ, start_response):
    errors = []
    def poke():
        for call in (lambda: environ['wsgi.input'].read(1),
                     lambda: start_response('200 OK', [])):
            try:
                call()
                errors.append('allowed')
            except RuntimeError as e:
                errors.append(str(e))
    t = threading.Thread(target=poke)
    t.start()
    t.join()
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return ['\\n'.join(errors).encode()]
";
        let m = pyo3::types::PyModule::from_code(py, code, c"threads.py", c"threads").unwrap();
        m.getattr("app").unwrap().unbind()
    });
    let app = WsgiApp::from_object(app).unwrap();
    let req = Req {
        method: "POST",
        target: "/",
        headers: vec![("Content-Length", b"3")],
    };
    let (r, s) = run(&app, req, b"abc");
    r.unwrap();
    let text = s.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("outside the thread serving the request")),
        "{text}"
    );
}
