//! The Rust example apps, run as real processes: gunicorn's flags and process model without
//! Python (`ferrocorn-rust-hello`), and the library alone (`ferrocorn-minimal`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use ferrocorn_testkit::*;

/// The example built on `ferrocorn-flags` (`src/bin/rust_hello.rs`).
fn rust_example_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrocorn-rust-hello"))
}

/// The example built on `ferrocorn-server` alone (`src/bin/minimal.rs`).
fn minimal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrocorn-minimal"))
}

#[test]
fn rust_example_answers_get_and_post_exactly() {
    let mut server = Server::start_bin(&rust_example_bin(), &["-w", "2"], &repo_root(), &[]);
    server.wait_for_workers(2);
    let addr = server.addr();

    let resp = get(addr, "/");
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"));
    assert_eq!(resp.body, b"Hello from Rust!\n");
    assert_eq!(resp.header("content-length"), Some("17"));
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let resp = post(addr, "/echo", "text/csv", b"a,b\n1,2\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"a,b\n1,2\n");
    assert_eq!(resp.header("content-type"), Some("text/csv"));

    let resp = get(addr, "/nowhere");
    assert_eq!(resp.status, 404);
}

#[test]
#[ignore = "needs root: --user"]
fn user_drops_the_workers_privileges_and_owns_the_unix_socket() {
    let (uid, gid) = passwd_ids("nobody").expect("a user nobody");
    let dir = TempDir::new("user");
    let sock = dir.path().join("app.sock");
    let unix = format!("unix:{}", sock.display());
    // The Rust example: `nobody` may not read this machine's Python (it may live under /root).
    let mut server = Server::start_bin(
        &rust_example_bin(),
        &["-w", "2", "--user", "nobody", "-b", &unix],
        &repo_root(),
        &[],
    );
    let workers = server.wait_for_workers(2);
    assert_eq!(get(server.addr(), "/").status, 200);
    for pid in workers {
        let ids = |field| {
            proc_status(pid, field)
                .unwrap()
                .split_whitespace()
                .map(|v| v.parse::<u32>().unwrap())
                .collect::<Vec<_>>()
        };
        // "Booting worker" is logged at fork, before the worker switches user: wait for the
        // switch (the request above proves it for only one of the two workers).
        wait_until(&format!("worker {pid} leaves root"), || ids("Uid")[0] != 0);
        assert_eq!(ids("Uid"), [uid; 4], "real, effective, saved, fs uid");
        assert_eq!(ids("Gid"), [gid; 4]);
        assert_eq!(
            ids("Groups"),
            [gid],
            "root's supplementary groups are dropped"
        );
    }
    assert_eq!(
        proc_status(server.pid(), "Uid")
            .unwrap()
            .split_whitespace()
            .next(),
        Some("0"),
        "the master stays root"
    );
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid, gid),
        "gunicorn chowns the socket"
    );
}

#[test]
#[ignore = "needs root: --user"]
fn initgroups_gives_workers_the_users_supplementary_groups() {
    // A user that /etc/group lists as a member of some group (e.g. postgres in ssl-cert).
    let group_db = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let memberships: Vec<(String, u32)> = group_db
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let gid = f.get(2)?.parse().ok()?;
            Some(
                f.get(3)?
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(move |m| (m.to_string(), gid))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    let Some((user, (uid, gid))) = memberships
        .iter()
        .find_map(|(user, _)| Some((user.clone(), passwd_ids(user)?)))
    else {
        panic!("no user with supplementary groups in /etc/group to test --initgroups with");
    };
    let mut supplementary: Vec<u32> = memberships
        .iter()
        .filter(|(member, _)| *member == user)
        .map(|(_, gid)| *gid)
        .chain([gid])
        .collect();
    supplementary.sort();
    supplementary.dedup();

    for (initgroups, expected) in [(true, supplementary), (false, vec![gid])] {
        let mut args = vec!["-w", "1", "--user", user.as_str()];
        if initgroups {
            args.push("--initgroups");
        }
        let mut server = Server::start_bin(&rust_example_bin(), &args, &repo_root(), &[]);
        let worker = server.wait_for_workers(1)[0];
        assert_eq!(get(server.addr(), "/").status, 200);
        let field = |name| proc_status(worker, name).unwrap();
        let mut groups: Vec<u32> = field("Groups")
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        groups.sort();
        assert_eq!(groups, expected, "--initgroups {initgroups} for {user}");
        assert!(field("Uid")
            .split_whitespace()
            .all(|u| u == uid.to_string()));
        assert!(field("Gid")
            .split_whitespace()
            .all(|g| g == gid.to_string()));
    }
}

#[test]
#[ignore = "needs root: --user"]
fn workers_of_a_master_that_dropped_privileges_stop_when_it_is_killed() {
    // Changing credentials clears the kernel's parent-death signal: it must be set again.
    assert_workers_stop_when_the_master_is_killed(Server::start_bin(
        &rust_example_bin(),
        &["-w", "2", "--user", "nobody"],
        &repo_root(),
        &[],
    ));
}

#[test]
fn the_minimal_library_example_serves_http_and_stops_on_term() {
    let mut server = Server::spawn_bin(&minimal_bin(), &["127.0.0.1:0"], &repo_root(), &[]);
    let line = server.wait_for_log("Listening at: http://", BOOT_TIMEOUT);
    let rest = line.split("Listening at: http://").nth(1).unwrap();
    let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
    server.wait_for_workers(2);
    let resp = get(addr, "/anything");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"Hello\n"[..]));
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(STOP_PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    assert!(server.log_text().contains("Shutting down: Master"));
}
