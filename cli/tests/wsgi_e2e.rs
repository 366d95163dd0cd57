//! PEP 3333 end to end: the real binary serving the test battery (`tests/apps/battery.py`, every
//! route inside `wsgiref.validate.validator` with warnings as errors) over real sockets.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrocorn_testkit::*;

fn apps_dir() -> std::path::PathBuf {
    repo_root().join("tests/apps")
}

/// `ferrocorn --pythonpath tests/apps ARGS battery:app`.
fn start_battery(args: &[&str], env: &[(&str, &str)]) -> Server {
    let apps = apps_dir();
    let mut all = vec!["--pythonpath", apps.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push("battery:app");
    let mut server = Server::start_in(&all, &repo_root(), env);
    server.wait_for_workers(1);
    server
}

/// Spawn the battery app expecting it not to come up (e.g. a bad venv or setting): no readiness wait.
fn spawn_battery_failing(env: &[(&str, &str)]) -> Server {
    let apps = apps_dir();
    let args = [
        "-b",
        "127.0.0.1:0",
        "--pythonpath",
        apps.to_str().unwrap(),
        "battery:app",
    ];
    Server::spawn(&args, &repo_root(), env)
}

/// A virtualenv whose pyvenv.cfg says Python 3.12, which a 3.11 build must refuse.
fn venv_of_python_3_12(name: &str) -> TempDir {
    let venv = TempDir::new(name);
    std::fs::create_dir_all(venv.path().join("bin")).unwrap();
    std::fs::write(
        venv.path().join("pyvenv.cfg"),
        "home = /usr/bin\nversion = 3.12.4\n",
    )
    .unwrap();
    venv
}

fn ok(resp: &Resp) -> &Resp {
    assert_eq!(resp.status, 200, "{resp:?}");
    resp
}

/// Value of `"KEY": "value"` in the /environ JSON (values there are plain strings).
fn json_str(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\": \"");
    let start = json.find(&needle)? + needle.len();
    let end = start + json[start..].find('"')?;
    Some(json[start..end].to_string())
}

fn worker_pid(server: &Server) -> i32 {
    let pids = server.wait_worker_count(1, BOOT_TIMEOUT);
    pids[0]
}

/// (`wchar`, `syscw`) from /proc/PID/io: bytes and calls of write-like syscalls (write, writev,
/// sendfile; not send on a socket).
fn proc_io(pid: i32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |name: &str| -> u64 {
        let line = io.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("wchar:"), field("syscw:"))
}

/// "VmHWM" (peak RSS) of a process, in KiB.
fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn validated_routes_answer_exactly() {
    let server = start_battery(&[], &[]);
    let addr = server.addr();

    assert_eq!(ok(&get(addr, "/")).body, b"Hello, World!\n");

    // A generator without Content-Length: chunked on HTTP/1.1, each chunk as produced.
    let resp = get(addr, "/stream?n=4");
    assert_eq!(ok(&resp).text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));

    assert_eq!(
        ok(&get(addr, "/write")).text(),
        "written 1\nwritten 2\nreturned\n"
    );
    // start_response called inside the generator, before its first non-empty item.
    assert_eq!(ok(&get(addr, "/lazy")).text(), "started lazily\n");

    for kind in ["list", "empties"] {
        let resp = get(addr, &format!("/empty?kind={kind}"));
        assert!(ok(&resp).body.is_empty());
        assert_eq!(resp.header("content-length"), Some("0"));
    }
    let resp = get(addr, "/empty?kind=204");
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());

    // HEAD: the app's headers, no body.
    let bytes = raw_exchange(
        addr,
        b"HEAD /head HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (resp, used) = parse_response(&bytes, true).expect("a response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("31"));
    assert_eq!(
        used,
        bytes.len(),
        "HEAD response carried a body: {:?}",
        String::from_utf8_lossy(&bytes)
    );

    // start_response(exc_info) before the head: the new status wins.
    let resp = get(addr, "/exc_info/early");
    assert_eq!(resp.status, 500);
    assert_eq!(resp.text(), "recovered from ValueError\n");

    let resp = get(addr, "/thread");
    assert_eq!(ok(&resp).text(), "thread result 499500\n");
}

#[test]
fn exc_info_after_the_head_cuts_the_response_short() {
    let mut server = start_battery(&[], &[]);
    let bytes = raw_exchange(
        server.addr(),
        b"GET /exc_info/late HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("partial body\n"), "{text}");
    // The connection was closed without the last chunk: the client sees a truncated body.
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    assert!(!text.contains("never sent"), "{text}");
    server.wait_for_log("something broke mid-body", BOOT_TIMEOUT);
}

#[test]
fn environ_seen_by_the_app() {
    let server = start_battery(&[], &[]);
    let addr = server.addr();
    let req =
        b"GET /environ?q=%20x HTTP/1.1\r\nHost: example.com:8080\r\nAccept: a\r\nAccept: b\r\n\
                X_Sneaky: 1\r\nX-Latin: \xe9t\xe9\r\nConnection: close\r\n\r\n";
    let resp = request(addr, req);
    let json = ok(&resp).text();
    assert_eq!(json_str(&json, "REQUEST_METHOD").as_deref(), Some("GET"));
    assert_eq!(json_str(&json, "PATH_INFO").as_deref(), Some("/environ"));
    assert_eq!(json_str(&json, "QUERY_STRING").as_deref(), Some("q=%20x"));
    assert_eq!(json_str(&json, "SCRIPT_NAME").as_deref(), Some(""));
    assert_eq!(
        json_str(&json, "HTTP_HOST").as_deref(),
        Some("example.com:8080")
    );
    assert_eq!(json_str(&json, "HTTP_ACCEPT").as_deref(), Some("a,b"));
    assert_eq!(
        json_str(&json, "HTTP_X_LATIN").as_deref(),
        Some("\\u00e9t\\u00e9")
    );
    assert!(!json.contains("HTTP_X_SNEAKY"), "{json}");
    assert!(!json.contains("CONTENT_LENGTH"), "{json}");
    assert!(!json.contains("CONTENT_TYPE"), "{json}");
    assert_eq!(
        json_str(&json, "SERVER_PROTOCOL").as_deref(),
        Some("HTTP/1.1")
    );
    assert_eq!(json_str(&json, "REMOTE_ADDR").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        json_str(&json, "SERVER_PORT"),
        Some(addr.port().to_string())
    );
    assert_eq!(json_str(&json, "wsgi.url_scheme").as_deref(), Some("http"));
    assert!(json.contains("\"wsgi.multiprocess\": true"), "{json}");
    assert!(json.contains("\"wsgi.version\": [1, 0]"), "{json}");
    // Apps tell gunicorn by this (httpbin takes chunked bodies only then); as gunicorn, the
    // process environment says it too.
    for key in ["SERVER_SOFTWARE", "os.environ SERVER_SOFTWARE"] {
        let software = json_str(&json, key).unwrap_or_default();
        assert!(software.starts_with("gunicorn/"), "{key}: {json}");
        assert!(software.contains("(ferrocorn/"), "{key}: {json}");
    }

    // PATH_INFO is percent-decoded: "/%65nviron" reaches the app's "/environ" route.
    let resp = get(addr, "/%65nviron");
    assert_eq!(ok(&resp).header("content-type"), Some("application/json"));
}

#[test]
fn script_name_from_the_environment_mounts_the_app() {
    let server = start_battery(&[], &[("SCRIPT_NAME", "/mount")]);
    let json = ok(&get(server.addr(), "/mount/environ")).text();
    assert_eq!(json_str(&json, "SCRIPT_NAME").as_deref(), Some("/mount"));
    assert_eq!(json_str(&json, "PATH_INFO").as_deref(), Some("/environ"));
    // Outside the mount point: a server-side error, not the app's routing.
    assert_eq!(get(server.addr(), "/elsewhere").status, 500);
}

#[test]
fn post_bodies_reach_wsgi_input() {
    let server = start_battery(&["--chdir", "tests/apps"], &[]);
    let addr = server.addr();
    for how in ["iter", "readline", "readlines"] {
        let resp = post(
            addr,
            &format!("/lines?how={how}"),
            "text/plain",
            b"one\ntwo\n\nthree",
        );
        assert_eq!(
            ok(&resp).text(),
            r#"["one\n", "two\n", "\n", "three"]"#,
            "{how}"
        );
    }
    // Chunked request body: no CONTENT_LENGTH, the stream still ends where the body ends.
    let req = b"POST /lines?how=iter HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                4\r\nab\nc\r\n3\r\nd\nE\r\n0\r\n\r\n";
    assert_eq!(ok(&request(addr, req)).text(), r#"["ab\n", "cd\n", "E"]"#);
}

#[test]
fn file_wrapper_sends_a_multi_megabyte_file_exactly() {
    let server = start_battery(&[], &[]);
    let path = unique_temp_path("e2e-file.bin");
    let data: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let p = path.to_str().unwrap();
    // /sendfile returns the wrapper itself (sendfile(2)); /file goes through the validator
    // (iteration); nolength=1 makes the body chunked.
    for (route, extra) in [
        ("sendfile", ""),
        ("sendfile", "&nolength=1"),
        ("file", ""),
        ("sendfile", "&offset=12345"),
    ] {
        let resp = get(server.addr(), &format!("/{route}?path={p}{extra}"));
        let offset = if extra.contains("offset") { 12345 } else { 0 };
        assert_eq!(ok(&resp).body.len(), data.len() - offset, "{route}{extra}");
        assert!(
            resp.body == data[offset..],
            "{route}{extra}: different bytes"
        );
        if extra.contains("nolength") {
            assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        }
    }
    // sendfile(2) is seen in the worker's I/O accounting: it counts in wchar/syscw (send(2) on a
    // socket does not), and sends the 6 MB in a few calls, where writes of 64 KiB blocks would
    // take about a hundred.
    let pid = worker_pid(&server);
    let before = proc_io(pid);
    ok(&get(server.addr(), &format!("/sendfile?path={p}")));
    let after = proc_io(pid);
    let (wchar, syscw) = (after.0 - before.0, after.1 - before.1);
    assert!(
        wchar >= data.len() as u64,
        "wchar grew by {wchar}: no sendfile?"
    );
    assert!(
        (1..10).contains(&syscw),
        "{syscw} write-like calls for one sendfile response"
    );
    // HEAD: the file's length, none of its bytes.
    let head = format!("HEAD /sendfile?path={p} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let bytes = raw_exchange(server.addr(), head.as_bytes());
    let (resp, used) = parse_response(&bytes, true).expect("a response");
    assert_eq!(resp.header("content-length"), Some("6000000"));
    assert_eq!(
        used,
        bytes.len(),
        "HEAD sent {} body bytes",
        bytes.len() - used
    );
    // A file-like object without a descriptor is iterated.
    let resp = get(server.addr(), "/file?mem=1&repeat=1000");
    assert_eq!(ok(&resp).text(), "in-memory file\n".repeat(1000));
    std::fs::remove_file(&path).unwrap();
}

/// Block `i` (1 MiB) of the large uploads: varied bytes, so a misplaced block is noticed.
fn upload_block(i: usize) -> Vec<u8> {
    (0..1 << 20).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// The worker's peak RSS grew by far less than the body (it was streamed, not buffered), and the
/// same worker is still there.
fn assert_body_was_streamed(server: &Server, pid: i32, before_kib: u64) {
    let growth_kib = vm_hwm_kib(pid).saturating_sub(before_kib);
    eprintln!("worker peak RSS grew by {growth_kib} KiB for a 100 MB body");
    assert!(
        growth_kib < 64 * 1024,
        "peak RSS grew by {growth_kib} KiB: the body was buffered"
    );
    assert_eq!(worker_pid(server), pid);
}

#[test]
fn a_100_mb_upload_streams_through_with_bounded_memory() {
    const SIZE: usize = 100 * 1024 * 1024;
    let server = start_battery(&["-w", "1"], &[]);
    let addr = server.addr();
    let pid = worker_pid(&server);
    ok(&post(
        addr,
        "/upload",
        "application/octet-stream",
        b"warm-up",
    ));
    let before_kib = vm_hwm_kib(pid);

    // Hash the same bytes locally with sha256sum while sending them.
    let mut hasher = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut hasher_in = hasher.stdin.take().unwrap();
    let mut s = connect(addr);
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {SIZE}\r\n\r\n"
    )
    .unwrap();
    for i in 0..SIZE >> 20 {
        let block = upload_block(i);
        s.write_all(&block).unwrap();
        hasher_in.write_all(&block).unwrap();
    }
    drop(hasher_in);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let (resp, _) = parse_response(&out, false).expect("a response");
    let expected_hash = String::from_utf8(hasher.wait_with_output().unwrap().stdout).unwrap();
    let expected_hash = expected_hash.split_whitespace().next().unwrap();
    assert_eq!(ok(&resp).text(), format!("{SIZE} {expected_hash}\n"));

    assert_body_was_streamed(&server, pid, before_kib);
}

#[test]
fn a_100_mb_upload_is_echoed_back_while_it_streams_with_bounded_memory() {
    const SIZE: usize = 100 * 1024 * 1024;
    let server = start_battery(&["-w", "1"], &[]);
    let addr = server.addr();
    let pid = worker_pid(&server);
    ok(&post(addr, "/echo", "application/octet-stream", b"warm-up"));
    let before_kib = vm_hwm_kib(pid);

    let s = connect(addr);
    let mut writer = s.try_clone().unwrap();
    // The app answers while the upload is still arriving, so send and receive at the same time.
    let sender = std::thread::spawn(move || {
        write!(
            writer,
            "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {SIZE}\r\n\r\n"
        )
        .unwrap();
        for i in 0..SIZE >> 20 {
            writer.write_all(&upload_block(i)).unwrap();
        }
    });
    let mut client = Client::on(s);
    let (status, headers) = client.read_head().unwrap();
    assert_eq!(status, 200, "{headers:?}");
    let length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    assert_eq!(length.map(|(_, v)| v.as_str()), Some(&*SIZE.to_string()));
    for i in 0..SIZE >> 20 {
        let block = client.read_exact(1 << 20).unwrap();
        assert!(block == upload_block(i), "echoed block {i} differs");
    }
    sender.join().unwrap();
    assert!(client.at_eof(), "nothing after the declared length");

    assert_body_was_streamed(&server, pid, before_kib);
}

#[test]
fn an_app_exception_is_a_500_and_the_same_worker_answers_next() {
    let mut server = start_battery(&["-w", "1"], &[]);
    let addr = server.addr();
    let pid_line = ok(&get(addr, "/pid")).text();
    let resp = get(addr, "/error");
    assert_eq!(resp.status, 500);
    server.wait_for_log("Error handling request /error", BOOT_TIMEOUT);
    server.wait_for_log("Traceback (most recent call last)", BOOT_TIMEOUT);
    server.wait_for_log("RuntimeError: battery /error always raises", BOOT_TIMEOUT);
    assert_eq!(
        ok(&get(addr, "/pid")).text(),
        pid_line,
        "a different worker answered"
    );
}

#[test]
fn broken_responses_are_500_and_logged_as_the_apps_fault() {
    let mut server = start_battery(&["-w", "1"], &[]);
    let addr = server.addr();
    let pid_line = ok(&get(addr, "/pid")).text();
    for (route, needle) in [
        ("/broken/status", "invalid status line \"OK\""),
        ("/broken/header", "is not latin-1"),
        ("/broken/no_start", "before start_response was called"),
        ("/broken/str_body", "yielded str, not bytes"),
        ("/broken/never_started", "did not call start_response"),
        (
            "/broken/two_lengths",
            "conflicting Content-Length headers (5 and 7)",
        ),
        ("/status_only?s=2000", "invalid status line \"2000\""),
    ] {
        let resp = get(addr, route);
        assert_eq!(resp.status, 500, "{route}: {resp:?}");
        let line = server.wait_for_log(needle, BOOT_TIMEOUT);
        assert!(line.contains("ERROR") && line.contains(route), "{line}");
    }
    // The same worker answers after all of them.
    assert_eq!(ok(&get(addr, "/pid")).text(), pid_line);
}

/// Run ferrocorn on an app that cannot load; it must exit 4 with a log line holding `needles`.
fn load_failure(spec: &str, extra: &[&str], needles: &[&str]) {
    let apps = apps_dir();
    let mut args = vec!["-b", "127.0.0.1:0", "--pythonpath", apps.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(spec);
    let mut server = Server::spawn(&args, &repo_root(), &[]);
    let status = server.wait_exit(BOOT_TIMEOUT);
    for needle in needles {
        server.wait_for_log(needle, Duration::from_secs(5));
    }
    assert_eq!(
        status.code(),
        Some(4),
        "{spec}: log:\n{}",
        server.log_text()
    );
}

#[test]
fn load_failures_exit_4_naming_module_and_reason() {
    load_failure(
        "import_error:app",
        &[],
        &[
            "error importing application module \"import_error\"",
            "Traceback",
            "fails on purpose",
        ],
    );
    load_failure(
        "broken_dep:app",
        &[],
        &[
            "\"broken_dep\"",
            "No module named 'ferrocorn_no_such_dependency'",
        ],
    );
    load_failure(
        "ferrocorn_nowhere:app",
        &[],
        &["failed to find application module \"ferrocorn_nowhere\""],
    );
    load_failure(
        "battery:nope",
        &[],
        &["failed to find attribute \"nope\" in \"battery\""],
    );
    load_failure(
        "battery:not_callable",
        &[],
        &["\"battery:not_callable\" is not callable"],
    );
    load_failure(
        "battery:factory(open('/etc/passwd'))",
        &[],
        &["must be Python literals"],
    );
    // --preload: the master itself fails to load.
    load_failure("import_error:app", &["--preload"], &["fails on purpose"]);
}

#[test]
fn a_virtualenv_of_another_python_is_refused_naming_both_versions() {
    let venv = venv_of_python_3_12("fake-venv");
    let v = venv.str();
    load_failure(
        "battery:app",
        &["--virtualenv", v],
        &["uses Python 3.12 but ferrocorn was built with Python 3.11"],
    );
    // The same through $VIRTUAL_ENV.
    let mut server = spawn_battery_failing(&[("VIRTUAL_ENV", v)]);
    let status = server.wait_exit(BOOT_TIMEOUT);
    server.wait_for_log(
        &format!("virtualenv {v} uses Python 3.12"),
        Duration::from_secs(5),
    );
    assert_eq!(status.code(), Some(4));
}

#[test]
fn a_preloaded_app_is_imported_once_and_served_by_every_worker() {
    let server = start_battery(&["--preload", "-w", "3"], &[]);
    let master = server.pid();
    let workers = server.wait_worker_count(3, BOOT_TIMEOUT);
    let addr = server.addr();
    // Three concurrent slow requests keep three workers busy at once; repeat until each worker
    // has answered (a worker still starting up may miss a round).
    let mut seen = std::collections::BTreeSet::new();
    let every_worker_answered = poll(Duration::from_secs(60), || {
        let round: Vec<_> = (0..3)
            .map(|_| std::thread::spawn(move || ok(&get(addr, "/pid?sleep=0.3")).text()))
            .collect();
        for handle in round {
            let text = handle.join().unwrap();
            let mut parts = text.split_whitespace().map(|p| p.parse::<i32>().unwrap());
            let (worker, importer) = (parts.next().unwrap(), parts.next().unwrap());
            assert_eq!(
                importer, master,
                "the app was imported in {importer}, not the master"
            );
            assert!(
                workers.contains(&worker),
                "{worker} is not one of {workers:?}"
            );
            seen.insert(worker);
        }
        (seen.len() >= 3).then_some(())
    });
    assert!(
        every_worker_answered.is_some(),
        "only workers {seen:?} of {workers:?} answered"
    );
    // Python threads work in the forked children (PyOS_AfterFork_Child ran).
    for _ in 0..3 {
        assert_eq!(ok(&get(addr, "/thread")).text(), "thread result 499500\n");
    }
    // gc.freeze() ran before the fork: the preloaded objects sit in the permanent generation.
    let frozen: u64 = ok(&get(addr, "/gc_frozen")).text().trim().parse().unwrap();
    assert!(frozen > 1000, "only {frozen} objects frozen");
}

#[test]
fn without_preload_each_worker_imports_the_app() {
    let server = start_battery(&["-w", "1"], &[]);
    let text = ok(&get(server.addr(), "/pid")).text();
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        pids[0], pids[1],
        "imported in {} but served by {}",
        pids[1], pids[0]
    );
    assert_ne!(pids[0], server.pid());
    let frozen = ok(&get(server.addr(), "/gc_frozen")).text();
    assert_eq!(frozen, "0\n", "gc.freeze() without --preload");
}

#[test]
fn close_is_called_when_the_client_disconnects_mid_stream() {
    let mut server = start_battery(&["-w", "1"], &[]);
    let addr = server.addr();
    let before: u64 = ok(&get(addr, "/closed")).text().trim().parse().unwrap();
    {
        let mut s = connect(addr);
        s.write_all(b"GET /stream?n=2000&delay=0.002 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 64];
        let n = s.read(&mut first).unwrap();
        assert!(
            n > 0 && first.starts_with(b"HTTP/1.1 200 OK"),
            "{:?}",
            &first[..n]
        );
        // Dropped here: the worker's next writes fail.
    }
    server.wait_for_log("connection error during GET /stream", BOOT_TIMEOUT);
    // The same (only) worker answers, after it finished with the broken stream.
    let after: u64 = ok(&get(addr, "/closed")).text().trim().parse().unwrap();
    assert_eq!(after, before + 1, "the generator was not closed");
}

#[test]
fn keep_alive_requests_share_a_connection_even_when_the_app_skips_the_body() {
    let server = start_battery(&["-w", "1"], &[]);
    // "/" never reads wsgi.input: the server must skip the body to find the next request.
    let bytes = raw_exchange(
        server.addr(),
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\nignored bodyGET /write HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /sendfile?mem=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&bytes);
    let responses = parse_all_responses(&bytes);
    assert!(responses.len() >= 2, "{text}");
    assert_eq!(responses[0].body, b"Hello, World!\n", "{text}");
    assert_eq!(
        responses[1].text(),
        "written 1\nwritten 2\nreturned\n",
        "{text}"
    );
    // The HEAD response ends the stream without a body.
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
}

#[test]
fn python_threads_run_while_the_worker_waits_for_connections() {
    let apps = apps_dir();
    let mut server = Server::start_in(
        &["--chdir", apps.to_str().unwrap(), "ticker:app"],
        &repo_root(),
        &[],
    );
    server.wait_for_workers(1);
    // No request at all: the ticker thread only runs if the worker released the GIL.
    server.wait_for_log("ticker tick 5", BOOT_TIMEOUT);
    assert_eq!(get(server.addr(), "/").text(), "ok\n");
    let seen = server.wait_for_log("ticker tick", BOOT_TIMEOUT);
    let n: u32 = seen.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n > 5, "{seen}");
}

#[test]
fn chdir_and_comma_separated_pythonpath_find_modules() {
    // --chdir alone puts the directory first on sys.path.
    let server = Server::start_in(&["--chdir", "tests/apps", "battery:app"], &repo_root(), &[]);
    assert_eq!(get(server.addr(), "/").text(), "Hello, World!\n");
    drop(server);
    // Both entries of a comma-separated --pythonpath are searched.
    let flask_dir = repo_root().join("tests/apps/flask_demo");
    let paths = format!("{},{}", flask_dir.display(), apps_dir().display());
    let server = Server::start_in(&["--pythonpath", &paths, "ticker:app"], &repo_root(), &[]);
    assert_eq!(get(server.addr(), "/").text(), "ok\n");
}

#[test]
fn a_declared_content_length_is_never_exceeded() {
    let server = start_battery(&[], &[]);
    let bytes = raw_exchange(server.addr(), b"GET /overlong HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let responses = parse_all_responses(&bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(responses.len(), 2, "{text}");
    assert_eq!(responses[0].body, b"01234", "{text}");
    assert!(!text.contains("56789"), "{text}");
    assert_eq!(responses[1].body, b"Hello, World!\n", "{text}");
}

#[test]
fn environ_over_a_unix_socket() {
    let sock = unique_temp_path("wsgi.sock");
    let bind = format!("unix:{}", sock.display());
    let server = start_battery(&["-b", &bind], &[]);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /environ HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let (resp, _) = parse_response(&bytes, false).expect("a response");
    let json = ok(&resp).text();
    // gunicorn's values for a unix socket: SERVER_* from the Host header (port 80 by default),
    // an empty client address and no client port.
    assert_eq!(json_str(&json, "SERVER_NAME").as_deref(), Some("local"));
    assert_eq!(json_str(&json, "SERVER_PORT").as_deref(), Some("80"));
    assert_eq!(json_str(&json, "REMOTE_ADDR").as_deref(), Some(""));
    assert!(!json.contains("REMOTE_PORT"), "{json}");
    // Without a Host header (HTTP/1.0): the socket's path and no port.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /environ HTTP/1.0\r\n\r\n").unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let (resp, _) = parse_response(&bytes, false).expect("a response");
    let json = ok(&resp).text();
    assert_eq!(
        json_str(&json, "SERVER_NAME"),
        Some(sock.display().to_string())
    );
    assert_eq!(json_str(&json, "SERVER_PORT").as_deref(), Some(""));
    drop(server);
}

#[test]
fn environ_client_port_raw_path_and_body_headers() {
    let server = start_battery(&[], &[]);
    let addr = server.addr();
    let mut s = connect(addr);
    let client_port = s.local_addr().unwrap().port();
    s.write_all(
        b"POST /environ/caf%C3%A9/a%2Fb?x=%C3%A9&y HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n\
          Content-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let (resp, _) = parse_response(&bytes, false).expect("a response");
    let json = ok(&resp).text();
    assert_eq!(
        json_str(&json, "REMOTE_PORT"),
        Some(client_port.to_string())
    );
    assert_eq!(json_str(&json, "SERVER_NAME").as_deref(), Some("127.0.0.1"));
    // Percent-decoded to bytes, each byte one code point: UTF-8 "é" arrives as "Ã©", and an
    // encoded "/" is indistinguishable from a real one (as in every WSGI server).
    assert_eq!(
        json_str(&json, "PATH_INFO").as_deref(),
        Some("/environ/caf\\u00c3\\u00a9/a/b")
    );
    // The query string is left as sent.
    assert_eq!(
        json_str(&json, "QUERY_STRING").as_deref(),
        Some("x=%C3%A9&y")
    );
    assert_eq!(
        json_str(&json, "CONTENT_TYPE").as_deref(),
        Some("text/plain")
    );
    assert_eq!(json_str(&json, "CONTENT_LENGTH").as_deref(), Some("3"));
    assert!(!json.contains("HTTP_CONTENT_"), "{json}");
}

#[test]
fn trusted_proxy_scheme_headers_set_the_url_scheme() {
    let proxied = b"GET /environ HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n\
                    Connection: close\r\n\r\n";
    // From 127.0.0.1, trusted by default (gunicorn's forwarded_allow_ips).
    let server = start_battery(&[], &[]);
    let json = ok(&request(server.addr(), proxied)).text();
    assert_eq!(json_str(&json, "wsgi.url_scheme").as_deref(), Some("https"));
    // Secure-scheme headers that disagree: 400, and the worker goes on.
    let resp = request(
        server.addr(),
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n\
          Connection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(ok(&get(server.addr(), "/")).text(), "Hello, World!\n");
    drop(server);
    // $FORWARDED_ALLOW_IPS not naming 127.0.0.1: the header is the client's own, ignored.
    let server = start_battery(&[], &[("FORWARDED_ALLOW_IPS", "192.0.2.1")]);
    let json = ok(&request(server.addr(), proxied)).text();
    assert_eq!(json_str(&json, "wsgi.url_scheme").as_deref(), Some("http"));
    assert_eq!(
        json_str(&json, "HTTP_X_FORWARDED_PROTO").as_deref(),
        Some("https")
    );
    drop(server);
    // A network that holds 127.0.0.1 trusts it again.
    let server = start_battery(&[], &[("FORWARDED_ALLOW_IPS", "10.0.0.1,127.0.0.0/8")]);
    let json = ok(&request(server.addr(), proxied)).text();
    assert_eq!(json_str(&json, "wsgi.url_scheme").as_deref(), Some("https"));
}

/// `wsgi.url_scheme` the battery app sees for a request from 127.0.0.1 with these header lines.
fn url_scheme_with(server: &Server, header_lines: &str) -> Option<String> {
    let req =
        format!("GET /environ HTTP/1.1\r\nHost: h\r\n{header_lines}Connection: close\r\n\r\n");
    json_str(
        &ok(&request(server.addr(), req.as_bytes())).text(),
        "wsgi.url_scheme",
    )
}

/// The battery app with a config file (`-c`) holding `config`.
fn start_battery_configured(dir: &TempDir, config: &str) -> Server {
    let file = dir.path().join("gunicorn.conf.py");
    std::fs::write(&file, config).unwrap();
    start_battery(&["-c", file.to_str().unwrap()], &[])
}

#[test]
fn a_config_files_secure_scheme_headers_replace_gunicorns_default_ones() {
    let dir = TempDir::new("e2e-secure-scheme");
    let server = start_battery_configured(
        &dir,
        "secure_scheme_headers = {'X-FORWARDED-PROTO': 'https'}\nforwarded_allow_ips = '127.0.0.1'\n",
    );
    // The default headers are no longer trusted: alone they change nothing, and beside the
    // listed one they contradict nothing (gunicorn would say 400 with its default list).
    for (lines, want) in [
        ("X-Forwarded-Proto: https\r\n", "https"),
        ("X-Forwarded-Proto: http\r\n", "http"),
        ("X-Forwarded-Ssl: on\r\n", "http"),
        ("X-Forwarded-Protocol: ssl\r\n", "http"),
        (
            "X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n",
            "https",
        ),
    ] {
        let scheme = url_scheme_with(&server, lines);
        assert_eq!(scheme.as_deref(), Some(want), "{lines:?}");
    }
    drop(server);
    // A header of the proxy's own choosing, whatever the case of its name.
    let server = start_battery_configured(
        &dir,
        "secure_scheme_headers = {'x-scheme': 'secure', 'Front-End-Https': 'on'}\n",
    );
    let scheme = |lines: &str| url_scheme_with(&server, lines);
    assert_eq!(scheme("X-SCHEME: secure\r\n").as_deref(), Some("https"));
    assert_eq!(
        scheme("X-Forwarded-Proto: https\r\n").as_deref(),
        Some("http")
    );
    let contradiction = "GET / HTTP/1.1\r\nHost: h\r\nX-Scheme: secure\r\n\
                         Front-End-Https: off\r\nConnection: close\r\n\r\n";
    let resp = request(server.addr(), contradiction.as_bytes());
    assert_eq!(resp.status, 400, "{resp:?}");
    drop(server);
    // None at all: no header tells the scheme.
    let server = start_battery_configured(&dir, "secure_scheme_headers = {}\n");
    let all = "X-Forwarded-Proto: https\r\nX-Forwarded-Protocol: ssl\r\nX-Forwarded-Ssl: on\r\n";
    assert_eq!(url_scheme_with(&server, all).as_deref(), Some("http"));
}

#[test]
fn an_invalid_forwarded_allow_ips_stops_the_load() {
    let mut server = spawn_battery_failing(&[("FORWARDED_ALLOW_IPS", "127.0.0.1,proxy.local")]);
    let status = server.wait_exit(BOOT_TIMEOUT);
    server.wait_for_log(
        "\"proxy.local\" is not an IP address",
        Duration::from_secs(5),
    );
    assert_eq!(status.code(), Some(4), "{}", server.log_text());
}

#[test]
fn file_wrapper_never_sends_past_a_shorter_declared_length() {
    let server = start_battery(&[], &[]);
    let path = unique_temp_path("e2e-short.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    // sendfile(2) of a real file, and iteration of a file-like without a descriptor; each
    // followed on the same connection by another request, which must parse cleanly.
    let cases = [
        (
            format!("/sendfile?path={}&length=1000", path.display()),
            data[..1000].to_vec(),
        ),
        (
            format!("/sendfile?path={}&offset=500&length=70000", path.display()),
            data[500..70_500].to_vec(),
        ),
        (
            "/sendfile?mem=1&repeat=100&length=20".to_string(),
            b"in-memory file\nin-me".to_vec(),
        ),
    ];
    for (target, expected) in cases {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        );
        let bytes = raw_exchange(server.addr(), req.as_bytes());
        let responses = parse_all_responses(&bytes);
        assert_eq!(
            responses.len(),
            2,
            "{target}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(responses[0].body.len(), expected.len(), "{target}");
        assert!(responses[0].body == expected, "{target}: other bytes");
        assert_eq!(responses[1].body, b"Hello, World!\n", "{target}");
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn close_is_called_when_the_iterable_raises() {
    let mut server = start_battery(&["-w", "1"], &[]);
    let addr = server.addr();
    let before: u64 = ok(&get(addr, "/closed")).text().trim().parse().unwrap();
    let bytes = raw_exchange(addr, b"GET /iter_error HTTP/1.1\r\nHost: t\r\n\r\n");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("before the error\n"), "{text}");
    // Cut short: no terminating chunk, so the client knows the body is incomplete.
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    server.wait_for_log("Error handling request /iter_error", BOOT_TIMEOUT);
    server.wait_for_log(
        "RuntimeError: battery iterable raised mid-body",
        BOOT_TIMEOUT,
    );
    let after: u64 = ok(&get(addr, "/closed")).text().trim().parse().unwrap();
    assert_eq!(after, before + 1, "close() was not called");
}

#[test]
fn bare_status_codes_are_sent_with_that_code() {
    let server = start_battery(&[], &[]);
    for code in [204u16, 404, 503] {
        let resp = get(server.addr(), &format!("/status_only?s={code}"));
        assert_eq!(resp.status, code, "{resp:?}");
        assert!(resp.body.is_empty());
    }
    let resp = get(server.addr(), "/status_only?s=201%20Made%20It");
    assert_eq!((resp.status, resp.reason.as_str()), (201, "Made It"));
}

#[test]
fn wsgi_errors_lines_reach_the_error_log() {
    let mut server = start_battery(&[], &[]);
    assert_eq!(ok(&get(server.addr(), "/errors")).text(), "logged\n");
    server.wait_for_log("battery wsgi.errors write", BOOT_TIMEOUT);
    server.wait_for_log("battery wsgi.errors line 1", BOOT_TIMEOUT);
    server.wait_for_log("battery wsgi.errors line 2", BOOT_TIMEOUT);
}

#[test]
fn every_read_form_stops_at_the_end_of_the_body() {
    let server = start_battery(&["-w", "1"], &[]);
    let body = b"ab\ncd\nef";
    let chunked = b"3\r\nab\n\r\n5\r\ncd\nef\r\n0\r\n\r\n";
    for (how, expected) in [
        ("all", "ab\ncd\nef##"),
        ("none", "ab\ncd\nef##"),
        ("neg", "ab\ncd\nef##"),
        ("3", "ab\n#cd\nef#"),
        ("100", "ab\ncd\nef##"),
        ("hint4", "ab\n|cd\n#ef#"),
        ("hint0", "ab\n|cd\n|ef##"),
    ] {
        // With Content-Length, and chunked; a pipelined request follows on the same connection,
        // so any read past the body would eat into it.
        let mut sized =
            format!("POST /read?how={how} HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n")
                .into_bytes();
        sized.extend_from_slice(body);
        let mut framed = format!(
            "POST /read?how={how} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        framed.extend_from_slice(chunked);
        for mut req in [sized, framed] {
            req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let bytes = raw_exchange(server.addr(), &req);
            let responses = parse_all_responses(&bytes);
            let text = String::from_utf8_lossy(&bytes);
            assert_eq!(responses.len(), 2, "{how}: {text}");
            assert_eq!(responses[0].text(), expected, "{how}: {text}");
            assert_eq!(responses[1].body, b"Hello, World!\n", "{how}: {text}");
        }
    }
}

#[test]
fn hup_with_preload_forks_new_workers_from_the_preloaded_master() {
    let mut server = start_battery(&["--preload", "-w", "2"], &[]);
    server.wait_for_workers(1);
    let master = server.pid();
    let addr = server.addr();
    let mut old = server.wait_worker_count(2, BOOT_TIMEOUT);
    for round in 0..2 {
        server.signal(libc::SIGHUP);
        let mut new = server.wait_for_workers(2);
        new.sort();
        let now = server.wait_until_workers(&new, BOOT_TIMEOUT);
        assert!(
            old.iter().all(|p| !now.contains(p)),
            "round {round}: {old:?} vs {now:?}"
        );
        for _ in 0..4 {
            let text = ok(&get(addr, "/pid")).text();
            let pids: Vec<i32> = text
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
            assert!(
                now.contains(&pids[0]),
                "round {round}: served by {}",
                pids[0]
            );
            assert_eq!(pids[1], master, "round {round}: the app was imported again");
            assert_eq!(ok(&get(addr, "/thread")).text(), "thread result 499500\n");
        }
        old = now;
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "{}",
        server.log_text()
    );
}

// The slow-body case is `event_worker.rs`'s `python_threads_run_while_an_app_thread_waits_for_a_slow_big_body`:
// a small body is now read before the app is called.

#[test]
fn python_threads_run_while_the_worker_waits_to_write_to_a_slow_reader() {
    const MB: usize = 64;
    let apps = apps_dir();
    let mut server = Server::start_in(
        &["-w", "1", "--chdir", apps.to_str().unwrap(), "ticker:app"],
        &repo_root(),
        &[],
    );
    server.wait_for_workers(1);
    let mut s = connect(server.addr());
    write!(
        s,
        "GET /?mb={MB} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    server.wait_for_log("ticker sending megabytes", BOOT_TIMEOUT);
    // Nothing is read yet: the socket buffers fill and the worker blocks writing.
    let first = next_tick(&mut server);
    server.wait_for_log(&format!("ticker tick {}", first + 5), BOOT_TIMEOUT);
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let (resp, _) = parse_response(&out, false).expect("a response");
    assert_eq!(ok(&resp).body.len(), MB << 20);
}

#[test]
fn the_virtualenv_flag_wins_over_virtual_env() {
    // $VIRTUAL_ENV names a venv ferrocorn must refuse; --virtualenv names a usable one.
    let bad = venv_of_python_3_12("bad-venv");
    let good = test_venv();
    let apps = apps_dir();
    let server = Server::start_in(
        &[
            "--virtualenv",
            good.to_str().unwrap(),
            "--pythonpath",
            apps.to_str().unwrap(),
            "battery:app",
        ],
        &repo_root(),
        &[("VIRTUAL_ENV", bad.str())],
    );
    // Started at all: with $VIRTUAL_ENV alone the master exits 4 (see the test above).
    assert_eq!(ok(&get(server.addr(), "/")).text(), "Hello, World!\n");
    drop(server);
}

/// The number in the next "ticker tick N" log line.
fn next_tick(server: &mut Server) -> u32 {
    let line = server.wait_for_log("ticker tick", BOOT_TIMEOUT);
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_preloaded_masters_python_threads_run_on_across_forks() {
    // With --preload the ticker thread starts in the master (fork copies no threads, so every
    // tick comes from there). It must keep ticking after the forks: the master releases the GIL
    // it held across fork (PyOS_AfterFork_Parent), also for the workers a HUP forks.
    let apps = apps_dir();
    let mut server = Server::start_in(
        &[
            "--preload",
            "-w",
            "2",
            "--chdir",
            apps.to_str().unwrap(),
            "ticker:app",
        ],
        &repo_root(),
        &[],
    );
    let workers = server.wait_for_workers(2);
    let first = next_tick(&mut server);
    server.wait_for_log(&format!("ticker tick {}", first + 5), BOOT_TIMEOUT);
    assert_eq!(ok(&get(server.addr(), "/")).text(), "ok\n");
    server.signal(libc::SIGHUP);
    let mut new = server.wait_for_workers(2);
    new.sort();
    server.wait_until_workers(&new, BOOT_TIMEOUT);
    assert!(workers.iter().all(|w| !new.contains(w)));
    let after = next_tick(&mut server);
    server.wait_for_log(&format!("ticker tick {}", after + 5), BOOT_TIMEOUT);
    assert_eq!(ok(&get(server.addr(), "/")).text(), "ok\n");
}

#[test]
fn app_spec_forms_through_the_command_line() {
    let apps = apps_dir();
    for (spec, expected) in [
        (
            "battery:factory('Hi', times=2, tag={'k': (1, None)})",
            "Hi Hi tag={'k': (1, None)}\n",
        ),
        ("battery:factory()", "Hello\n"),
        ("battery:ns.inner.app", "Hello, World!\n"),
        ("battery", "Hello, World!\n"),
    ] {
        let server = Server::start_in(
            &["--pythonpath", apps.to_str().unwrap(), spec],
            &repo_root(),
            &[],
        );
        assert_eq!(ok(&get(server.addr(), "/")).text(), expected, "{spec}");
    }
}
