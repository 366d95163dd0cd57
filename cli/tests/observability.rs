//! What operators watch: the access log (gunicorn's lines), statsd metrics, process titles and
//! `--version`, seen from outside the real `ferrocorn` binary.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrocorn_testkit::*;

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until `path` has `n` lines (each request's line is written when it is answered, so
/// it may land a moment after the client read the response).
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    // On timeout the lines there are, for the caller's assertion to show.
    poll(BOOT_TIMEOUT, || {
        Some(read_lines(path)).filter(|l| l.len() >= n)
    })
    .unwrap_or_else(|| read_lines(path))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The Unix time of Apache's `[10/Oct/2000:13:55:36 -0700]`, checking its exact shape.
fn parse_clf_time(t: &str) -> i64 {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = t.as_bytes();
    assert_eq!(b.len(), 28, "{t}");
    assert!(
        b[0] == b'[' && b[3] == b'/' && b[7] == b'/' && b[12] == b':',
        "{t}"
    );
    assert!(
        b[15] == b':' && b[18] == b':' && b[21] == b' ' && b[27] == b']',
        "{t}"
    );
    let num = |r: std::ops::Range<usize>| t[r].parse::<i64>().expect(t);
    let month = MONTHS.iter().position(|m| *m == &t[4..7]).expect(t) as i64 + 1;
    let sign = match b[22] {
        b'+' => 1,
        b'-' => -1,
        _ => panic!("{t}"),
    };
    let offset = sign * (num(23..25) * 3600 + num(25..27) * 60);
    let days = days_from_civil(num(8..12), month, num(1..3));
    days * 86_400 + num(13..15) * 3600 + num(16..18) * 60 + num(19..21) - offset
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Checks the `[time]` of a line (within the test's run) and puts `[T]` in its place.
fn with_time_checked(line: &str, started: i64) -> String {
    let open = line.find('[').expect(line);
    let time = &line[open..open + 28];
    let at = parse_clf_time(time);
    assert!(
        (started - 1..=now() + 1).contains(&at),
        "{time} is not the time of the request"
    );
    line.replacen(time, "[T]", 1)
}

#[test]
fn default_format_lines_are_gunicorns_for_the_same_requests_and_none_is_lost_on_stop() {
    let dir = hello_app_dir("access-default");
    let log = dir.path().join("access.log");
    let started = now();
    let mut server = Server::start_in(
        &["--access-logfile", log.to_str().unwrap(), "hello:app"],
        dir.path(),
        &[],
    );
    let addr = server.addr();
    let requests: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /missing?a=1&b=%22x%22 HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0 (\"quoted\")\r\nReferer: http://example.com/from\r\nConnection: close\r\n\r\n",
        // bob:secret
        b"GET / HTTP/1.0\r\nAuthorization: Basic Ym9iOnNlY3JldA==\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"GET /a%20b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ];
    for r in requests {
        raw_exchange(addr, r);
    }
    // A graceful stop right after the last response: every line is already written.
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(STOP_PATIENCE).success());
    let lines: Vec<String> = read_lines(&log)
        .iter()
        .map(|l| with_time_checked(l, started))
        .collect();
    // gunicorn's default `%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"`, with
    // `"` in a value escaped as `\"` and a missing header as `-`.
    let expected = [
        r#"127.0.0.1 - - [T] "GET / HTTP/1.1" 200 14 "-" "-""#,
        r#"127.0.0.1 - - [T] "GET /missing?a=1&b=%22x%22 HTTP/1.1" 404 10 "http://example.com/from" "Mozilla/5.0 (\"quoted\")""#,
        r#"127.0.0.1 - bob [T] "GET / HTTP/1.0" 200 14 "-" "-""#,
        r#"127.0.0.1 - - [T] "HEAD / HTTP/1.1" 200 0 "-" "-""#,
        r#"127.0.0.1 - - [T] "POST /echo HTTP/1.1" 200 5 "-" "-""#,
        r#"127.0.0.1 - - [T] "GET /a%20b HTTP/1.1" 404 10 "-" "-""#,
    ];
    assert_eq!(lines, expected);
}

#[test]
fn every_atom_of_a_custom_format_has_gunicorns_value() {
    let dir = hello_app_dir("access-atoms");
    let log = dir.path().join("access.log");
    let format = "%(h)s|%(l)s|%(u)s|%(r)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(f)s|%(a)s|\
                  %(p)s|%({X-Test}i)s|%({content-type}o)s|%({PATH_INFO}e)s|%({wsgi.url_scheme}e)s|\
                  %({NOPE}e)s|%(nope)s|%(T)s|%(D)s|%(M)s|%(L)s|100%%";
    let mut server = Server::start_in(
        &[
            "--access-logfile",
            log.to_str().unwrap(),
            "--access-logformat",
            format,
            "hello:app",
        ],
        dir.path(),
        &[],
    );
    let worker = server.wait_worker_count(1, BOOT_TIMEOUT)[0];
    raw_exchange(
        server.addr(),
        b"GET /x%2Fy?q=1 HTTP/1.1\r\nHost: t\r\nX-Test: a\"b\r\nConnection: close\r\n\r\n",
    );
    let lines = wait_lines(&log, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields: Vec<&str> = lines[0].split('|').collect();
    let fixed = format!(
        "127.0.0.1|-|-|GET /x%2Fy?q=1 HTTP/1.1|GET|/x/y|q=1|HTTP/1.1|404|10|10|-|-|<{worker}>|\
         a\\\"b|text/plain|/x/y|http|-|-"
    );
    assert_eq!(fields[..20].join("|"), fixed);
    let (t, d, m, l) = (fields[20], fields[21], fields[22], fields[23]);
    let micros: u64 = d.parse().expect(d);
    assert_eq!(t, (micros / 1_000_000).to_string());
    assert_eq!(m, (micros / 1000).to_string());
    assert_eq!(
        l,
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    );
    assert_eq!(fields[24], "100%");
    server.signal(libc::SIGTERM);
    server.wait_exit(STOP_PATIENCE);
}

#[test]
fn usr1_after_the_access_log_was_moved_writes_to_a_new_file() {
    let dir = hello_app_dir("access-usr1");
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let mut server = Server::start_in(
        &[
            "-w",
            "2",
            "--access-logfile",
            log.to_str().unwrap(),
            "hello:app",
        ],
        dir.path(),
        &[],
    );
    let workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    assert_eq!(get(server.addr(), "/").status, 200);
    assert_eq!(wait_lines(&log, 1).len(), 1);
    std::fs::rename(&log, &rotated).unwrap();
    server.signal(libc::SIGUSR1);
    // Both workers, in whichever order they notice.
    let reopened: Vec<String> = (0..2)
        .map(|_| server.wait_for_log("Worker reopened its log file", BOOT_TIMEOUT))
        .collect();
    for pid in &workers {
        assert!(
            reopened.iter().any(|l| l.contains(&format!("[{pid}]"))),
            "{reopened:?}"
        );
    }
    for _ in 0..4 {
        assert_eq!(get(server.addr(), "/").status, 200);
    }
    assert_eq!(
        wait_lines(&log, 4).len(),
        4,
        "every later line in the new file"
    );
    assert_eq!(read_lines(&rotated).len(), 1, "none in the moved file");
    server.signal(libc::SIGTERM);
    server.wait_exit(STOP_PATIENCE);
}

#[test]
fn access_log_dash_is_stdout_and_debug_level_logs_method_and_path() {
    let dir = hello_app_dir("access-stdout");
    // The DigitalOcean unit's command line; the harness follows stdout beside stderr.
    let mut server = Server::start_in(
        &["--access-logfile", "-", "--log-level", "debug", "hello:app"],
        dir.path(),
        &[],
    );
    assert_eq!(get(server.addr(), "/missing?x=1").status, 404);
    server.wait_for_log("[DEBUG] GET /missing", BOOT_TIMEOUT);
    let line = server.wait_for_log(r#""GET /missing?x=1 HTTP/1.1" 404 10"#, BOOT_TIMEOUT);
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    server.signal(libc::SIGTERM);
    server.wait_exit(STOP_PATIENCE);
}

/// Metric lines received until `want` all arrived (or the deadline).
fn receive_until(sock: &UdpSocket, want: &[&str]) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    // On timeout what came, for the caller's assertion to show.
    let _ = poll(BOOT_TIMEOUT, || {
        if let Ok(n) = sock.recv(&mut buf) {
            // A packet may carry several metrics, one per line.
            let packet = String::from_utf8_lossy(&buf[..n]).into_owned();
            got.extend(packet.lines().map(str::to_string));
        }
        want.iter()
            .all(|w| got.iter().any(|g: &String| g.starts_with(w)))
            .then_some(())
    });
    got
}

#[test]
fn statsd_gets_gunicorns_metric_names_with_prefix_and_tags() {
    let dir = hello_app_dir("statsd");
    let statsd = UdpSocket::bind("127.0.0.1:0").unwrap();
    let host = statsd.local_addr().unwrap().to_string();
    let mut server = Server::start_in(
        &[
            "--statsd-host",
            &host,
            "--statsd-prefix",
            "shop",
            "--dogstatsd-tags",
            "env:test,team:web",
            "hello:app",
        ],
        dir.path(),
        &[],
    );
    server.wait_worker_count(1, BOOT_TIMEOUT);
    assert_eq!(get(server.addr(), "/").status, 200);
    assert_eq!(get(server.addr(), "/nope").status, 404);
    let tags = "|#env:test,team:web";
    let want = [
        format!("shop.gunicorn.workers:1|g{tags}"),
        format!("shop.gunicorn.requests:1|c|@1.0{tags}"),
        format!("shop.gunicorn.request.status.200:1|c|@1.0{tags}"),
        format!("shop.gunicorn.request.status.404:1|c|@1.0{tags}"),
        "shop.gunicorn.request.duration:".to_string(),
    ];
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let got = receive_until(&statsd, &want);
    for w in &want {
        assert!(got.iter().any(|g| g.starts_with(w)), "{w} not in {got:?}");
    }
    let duration = got
        .iter()
        .find(|g| g.starts_with("shop.gunicorn.request.duration:"))
        .unwrap();
    let value = duration
        .strip_prefix("shop.gunicorn.request.duration:")
        .and_then(|v| v.strip_suffix(&format!("|ms{tags}")))
        .expect(duration);
    assert!(value.parse::<f64>().is_ok_and(|ms| ms >= 0.0), "{duration}");
    server.signal(libc::SIGTERM);
    server.wait_exit(STOP_PATIENCE);
}

fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

#[test]
fn master_and_workers_have_process_titles_named_after_the_app_or_name() {
    let dir = hello_app_dir("titles");
    let mut server = Server::start_in(&["-w", "2", "hello:app"], dir.path(), &[]);
    let workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    assert_eq!(cmdline(server.pid()), "ferrocorn: master [hello:app]");
    for pid in &workers {
        // A worker carries the master's title from fork until it sets its own.
        wait_title(*pid, "ferrocorn: worker [hello:app]");
        assert_eq!(
            proc_status(*pid, "Name").as_deref(),
            Some("ferrocorn: work")
        );
    }
    // The app still sees its real command line.
    assert_eq!(get(server.addr(), "/").status, 200);
    server.signal(libc::SIGTERM);
    server.wait_exit(STOP_PATIENCE);

    let mut server = Server::start_in(&["-n", "shop", "hello:app"], dir.path(), &[]);
    let workers = server.wait_worker_count(1, BOOT_TIMEOUT);
    assert_eq!(cmdline(server.pid()), "ferrocorn: master [shop]");
    wait_title(workers[0], "ferrocorn: worker [shop]");
    server.signal(libc::SIGTERM);
    server.wait_exit(STOP_PATIENCE);
}

/// Wait until `pid`'s command line reads `title`.
fn wait_title(pid: i32, title: &str) {
    let _ = poll(BOOT_TIMEOUT, || (cmdline(pid) == title).then_some(()));
    assert_eq!(cmdline(pid), title);
}

#[test]
fn version_names_ferrocorn_and_the_embedded_python() {
    for flag in ["-v", "--version"] {
        let out = std::process::Command::new(ferrocorn_bin())
            .arg(flag)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(concat!("ferrocorn ", env!("CARGO_PKG_VERSION")))
        );
        let python = lines.next().unwrap_or_default();
        assert!(python.starts_with("Python 3."), "{text}");
        assert!(python.contains("libpython3"), "{text}");
    }
}

#[test]
fn during_a_usr2_upgrade_the_old_master_says_so_and_the_new_one_repeats_the_command_line() {
    let dir = hello_app_dir("titles-usr2");
    let mut server = Server::start_in(&["hello:app"], dir.path(), &[]);
    server.wait_worker_count(1, BOOT_TIMEOUT);
    server.signal(libc::SIGUSR2);
    let line = server.wait_for_log("Re-executing: new master (pid: ", BOOT_TIMEOUT);
    let new_master: i32 = line
        .rsplit("(pid: ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    let _cleanup = KillOnDrop(new_master);
    // The re-exec used the real command line although the title replaced it in argv's place.
    server.wait_for_log(&format!("({new_master})"), BOOT_TIMEOUT);
    assert_eq!(cmdline(server.pid()), "ferrocorn: old master [hello:app]");
    let _ = poll(BOOT_TIMEOUT, || {
        (cmdline(new_master) == "ferrocorn: master [hello:app]").then_some(())
    });
    assert_eq!(cmdline(new_master), "ferrocorn: master [hello:app]");
    signal(new_master, libc::SIGTERM);
    server.signal(libc::SIGTERM);
    server.wait_exit(STOP_PATIENCE);
}

#[test]
fn a_gunicorn_config_file_sets_the_access_log_its_format_and_the_process_name() {
    let dir = hello_app_dir("access-config");
    std::fs::write(
        dir.path().join("gunicorn.conf.py"),
        "accesslog = 'access.log'\naccess_log_format = '%(m)s %(U)s %(s)s'\nproc_name = 'shop'\n",
    )
    .unwrap();
    let mut server = Server::start_in(&["hello:app"], dir.path(), &[]);
    assert!(
        !server.log_text().contains("not supported"),
        "{}",
        server.log_text()
    );
    assert_eq!(cmdline(server.pid()), "ferrocorn: master [shop]");
    assert_eq!(get(server.addr(), "/").status, 200);
    assert_eq!(wait_lines(&dir.path().join("access.log"), 1), ["GET / 200"]);
    server.signal(libc::SIGTERM);
    server.wait_exit(STOP_PATIENCE);
}
