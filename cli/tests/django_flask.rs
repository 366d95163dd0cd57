//! Real frameworks served by ferrocorn from the test virtualenv (`<repo>/.venv`, made by
//! `scripts/python-env.sh`): a Flask app (`tests/apps/flask_demo`) and a Django project
//! (`tests/apps/django_demo`), checked over HTTP: templates, form POSTs, sqlite queries.

use ferrocorn_testkit::*;

fn temp_db(name: &str) -> String {
    let path = unique_temp_path(&format!("{name}.sqlite3"));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(format!("{}.migrate-lock", path.display()));
    path.to_str().unwrap().to_string()
}

fn form(addr: std::net::SocketAddr, path: &str, body: &str) -> Resp {
    post(
        addr,
        path,
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    )
}

#[test]
fn flask_app_from_the_virtualenv() {
    let venv = test_venv();
    let db = temp_db("flask");
    let mut server = Server::start_in(
        &[
            "--virtualenv",
            venv.to_str().unwrap(),
            "--chdir",
            "tests/apps/flask_demo",
            "-w",
            "2",
            "-e",
            &format!("FLASK_DEMO_DB={db}"),
            "demo_flask:app",
        ],
        &repo_root(),
        &[],
    );
    server.wait_for_workers(2);
    let addr = server.addr();

    // Jinja template, autoescaped.
    let resp = get(addr, "/?name=%3Cferrocorn%3E");
    assert_eq!(resp.status, 200, "{resp:?}\n{}", server.log_text());
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = resp.text();
    assert!(
        html.contains("<h1>Hello, &lt;ferrocorn&gt;!</h1>"),
        "{html}"
    );
    assert!(html.contains("<p>0 item(s)</p>"), "{html}");

    // Form POSTs stored in sqlite, read back by later requests (whichever worker answers).
    for name in ["apple", "pear & plum"] {
        let resp = form(
            addr,
            "/items",
            &format!("name={}", name.replace(' ', "+").replace('&', "%26")),
        );
        assert_eq!(resp.status, 201, "{resp:?}");
        assert_eq!(resp.text(), format!("added {name}\n"));
    }
    assert_eq!(form(addr, "/items", "other=1").status, 400);
    let json = get(addr, "/items.json").text();
    assert!(
        json.contains(r#""items":["apple","pear & plum"]"#),
        "{json}"
    );
    let html = get(addr, "/").text();
    assert!(
        html.contains("<li>apple</li><li>pear &amp; plum</li>"),
        "{html}"
    );

    // A multipart upload parsed by werkzeug from wsgi.input.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    let mut body =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob.bin\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
            .to_vec();
    body.extend_from_slice(&payload);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let resp = post(addr, "/upload", "multipart/form-data; boundary=XyZ", &body);
    assert_eq!(resp.status, 200, "{resp:?}");
    let sha = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", "import hashlib,sys; print(hashlib.sha256(bytes(i % 256 for i in range(200000))).hexdigest())"])
        .output()
        .unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap();
    assert_eq!(resp.text(), format!("blob.bin 200000 {}", sha));
    let _ = std::fs::remove_file(&db);
}

#[test]
fn django_project_from_virtual_env() {
    let venv = test_venv();
    let db = temp_db("django");
    let mut server = Server::start_in(
        &[
            "--chdir",
            "tests/apps/django_demo",
            "-w",
            "1",
            "mysite.wsgi",
        ],
        &repo_root(),
        &[
            ("VIRTUAL_ENV", venv.to_str().unwrap()),
            ("DJANGO_DEMO_DB", &db),
        ],
    );
    server.wait_for_workers(1);
    let addr = server.addr();

    let resp = get(addr, "/");
    assert_eq!(resp.status, 200, "{resp:?}\n{}", server.log_text());
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        resp.text().contains("<h1>0 notes in sqlite</h1>"),
        "{}",
        resp.text()
    );

    // A csrf_exempt form view writes through the ORM.
    let resp = form(addr, "/notes/add", "text=hello+%3Cworld%3E");
    assert_eq!(resp.status, 201, "{resp:?}");
    assert_eq!(resp.text(), "created note 1: hello <world>\n");
    assert_eq!(form(addr, "/notes/add", "text=second").status, 201);
    assert_eq!(form(addr, "/notes/add", "nothing=1").status, 400);
    assert_eq!(get(addr, "/notes/add").status, 405);

    // The template renders what the sqlite query returns, escaped.
    let html = get(addr, "/").text();
    assert!(html.contains("<h1>2 notes in sqlite</h1>"), "{html}");
    assert!(
        html.contains("<li>hello &lt;world&gt;</li><li>second</li>"),
        "{html}"
    );
    assert_eq!(get(addr, "/notes/count").text(), r#"{"count": 2}"#);

    // A FileResponse goes out through wsgi.file_wrapper, exactly and with its length.
    let source = std::fs::read(repo_root().join("tests/apps/django_demo/notes/views.py")).unwrap();
    let resp = get(addr, "/source");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("content-length"),
        Some(source.len().to_string().as_str())
    );
    assert!(resp.body == source, "{}", resp.text());

    // Django's CSRF middleware runs: a POST without a token is refused.
    assert_eq!(form(addr, "/protected", "x=1").status, 403);
    // CommonMiddleware's APPEND_SLASH redirect and a 404 from the URL resolver.
    assert_eq!(get(addr, "/nowhere").status, 404);
    let _ = std::fs::remove_file(&db);
}

/// How many of `pids` have a file whose path contains one of `names` open (from /proc/PID/fd).
fn holding_any(pids: &[i32], names: &[&str]) -> usize {
    pids.iter()
        .filter(|pid| {
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            dir.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| {
                    let target = target.to_string_lossy();
                    names.iter().any(|n| target.contains(n))
                })
            })
        })
        .count()
}

#[test]
fn django_workers_creating_the_tables_at_once_all_boot() {
    // mysite/wsgi.py runs `migrate` at import; workers importing together on a fresh sqlite file
    // raced to create the same table ("table already exists") and the master exited 4. To line
    // the workers up at the race, a Python process holds an exclusive sqlite lock until all four
    // are inside the import with the database (or the demo's migrate lock) open; then it lets go
    // and every worker must answer. Each round starts on a new file.
    let venv = test_venv();
    for round in 0..3 {
        let db = temp_db(&format!("django-race{round}"));
        let mut holder = std::process::Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('BEGIN EXCLUSIVE')\n\
                 print('held', flush=True)\n\
                 sys.stdin.readline()\n\
                 c.execute('ROLLBACK')",
                &db,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut held = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut held,
        )
        .unwrap();
        assert_eq!(held, "held\n");
        let mut server = Server::start_in(
            &[
                "--chdir",
                "tests/apps/django_demo",
                "-w",
                "4",
                "mysite.wsgi",
            ],
            &repo_root(),
            &[
                ("VIRTUAL_ENV", venv.to_str().unwrap()),
                ("DJANGO_DEMO_DB", &db),
            ],
        );
        let workers = server.wait_for_workers(4);
        let lock = format!("{db}.migrate-lock");
        poll(BOOT_TIMEOUT, || {
            (holding_any(&workers, &[&db]) >= 4).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "round {round}: workers never reached the database; log:\n{}",
                server.log_text()
            )
        });
        // Released: the waiting workers all go at once.
        drop(holder.stdin.take());
        holder.wait().unwrap();
        let addr = server.addr();
        let mut seen = std::collections::BTreeSet::new();
        let every_worker_answered = poll(BOOT_TIMEOUT, || {
            let batch: Vec<_> = (0..4)
                .map(|_| std::thread::spawn(move || get(addr, "/pid?sleep=0.2")))
                .collect();
            for handle in batch {
                let resp = handle.join().unwrap_or_else(|_| {
                    panic!(
                        "round {round}: a request failed; log:\n{}",
                        server.log_text()
                    )
                });
                assert_eq!(
                    resp.status,
                    200,
                    "round {round}: {resp:?}\n{}",
                    server.log_text()
                );
                seen.insert(resp.text());
            }
            (seen.len() >= 4).then_some(())
        });
        assert!(
            every_worker_answered.is_some(),
            "round {round}: only workers {seen:?} answered; log:\n{}",
            server.log_text()
        );
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "round {round}: the master exited; log:\n{}",
            server.log_text()
        );
        assert_eq!(get(addr, "/notes/count").text(), r#"{"count": 0}"#);
        drop(server);
        let _ = std::fs::remove_file(&db);
        let _ = std::fs::remove_file(&lock);
    }
}
