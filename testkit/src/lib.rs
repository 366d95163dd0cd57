//! Shared harness for end-to-end tests: run the real `ferrocorn` binary (or another binary built
//! on the ferrocorn crates, given by path), wait on its log lines (never on sleeps), talk raw
//! bytes over TCP, send real signals, read real /proc. A dev-only crate, so it is compiled once
//! for every test binary that uses it.
#![warn(missing_docs)]
// Handles to processes and directories, only ever used by tests.
#![allow(missing_debug_implementations)]

mod http;

pub use http::*;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to boot (and the default patience of every wait): generous, as the
/// machine may be loaded.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping server may take.
pub const STOP_PATIENCE: Duration = Duration::from_secs(20);

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `ferrocorn` binary of this build. Cargo builds a package's binaries before its
/// integration tests and puts them (CARGO_BIN_EXE_*) in the target directory the test executable
/// lives under (`target/<profile>/deps/`), so the `ferrocorn-cli` tests find the fresh one there.
pub fn ferrocorn_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable in target/<profile>/deps")
        .join("ferrocorn");
    assert!(
        bin.is_file(),
        "{} is missing: the ferrocorn-cli tests build it",
        bin.display()
    );
    bin
}

/// A running `ferrocorn` master whose stderr log we follow line by line.
pub struct Server {
    /// The process (the master, when the command execs it).
    pub child: Child,
    /// The first TCP address it listens on (when bound to TCP).
    pub addr: Option<SocketAddr>,
    lines: Receiver<String>,
    /// Lines read past by a wait that leaves the others for the next one (see `reexec`).
    unread: std::collections::VecDeque<String>,
    /// Every log line seen so far (also those consumed by `wait_for_log`).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start `ferrocorn ARGS` (add `-b 127.0.0.1:0` yourself or use [`Server::start`]), with
    /// `cwd` as its working directory and extra environment.
    pub fn spawn(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Server {
        Self::spawn_bin(&ferrocorn_bin(), args, cwd, env)
    }

    /// Like [`Server::spawn`] for another binary built on the ferrocorn crates (the Rust example).
    pub fn spawn_bin(bin: &Path, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(bin);
        cmd.args(args).current_dir(cwd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn_command(cmd)
    }

    /// Start on an ephemeral TCP port and wait until it says where it listens.
    pub fn start(args: &[&str]) -> Server {
        Self::start_in(args, &repo_root(), &[])
    }

    /// [`Server::start`] with a working directory and extra environment.
    pub fn start_in(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_bin(&ferrocorn_bin(), args, cwd, env)
    }

    /// Start `bin` on an ephemeral TCP port and wait until it says where it listens.
    pub fn start_bin(bin: &Path, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Server {
        let mut all = vec!["-b", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut server = Server::spawn_bin(bin, &all, cwd, env);
        let line = server.wait_for_log("Listening at: http://", BOOT_TIMEOUT);
        let rest = line.split("Listening at: http://").nth(1).unwrap();
        let addr = rest.split_whitespace().next().unwrap();
        server.addr = Some(addr.parse().expect("listen address"));
        server
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The first TCP address it listens on; panics when it was not bound to TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("server bound to TCP")
    }

    /// Wait for a log line containing `needle`; panics with the log so far on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        while let Some(line) = self.unread.pop_front() {
            if line.contains(needle) {
                return line;
            }
        }
        self.next_log_line_with(needle, timeout, |_| {})
    }

    /// Like [`Server::wait_for_log`], but the lines read past stay for the next wait: for a line
    /// of one process while another (a re-executed master) may already be logging.
    fn wait_for_log_leaving_others(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(i) = self.unread.iter().position(|l| l.contains(needle)) {
            return self.unread.remove(i).unwrap_or_default();
        }
        let mut passed = Vec::new();
        let line = self.next_log_line_with(needle, timeout, |l| passed.push(l));
        self.unread.extend(passed);
        line
    }

    /// The next line from the output holding `needle`; `passed` gets the others.
    fn next_log_line_with(
        &mut self,
        needle: &str,
        timeout: Duration,
        mut passed: impl FnMut(String),
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => passed(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no log line with {needle:?} within {timeout:?}; log:\n{}",
                        self.log_text()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "ferrocorn closed its output before {needle:?}; log:\n{}",
                        self.log_text()
                    )
                }
            }
        }
    }

    /// Send USR2 and wait for the master to say it re-executed; returns the new master's pid.
    /// The new master may log before the old one says so: its lines are left for the next wait.
    pub fn reexec(&mut self) -> i32 {
        self.signal(libc::SIGUSR2);
        let line =
            self.wait_for_log_leaving_others("Re-executing: new master (pid: ", BOOT_TIMEOUT);
        line.rsplit("(pid: ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .expect("the new master's pid")
    }

    /// Wait until `n` workers have logged that they booted (counting from now).
    pub fn wait_for_workers(&mut self, n: usize) -> Vec<i32> {
        (0..n)
            .map(|_| {
                let line = self.wait_for_log("Booting worker with pid: ", BOOT_TIMEOUT);
                line.rsplit(' ').next().unwrap().trim().parse().unwrap()
            })
            .collect()
    }

    /// Every log line so far, joined.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Send `sig` to the master.
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// Wait for the master to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        poll(timeout, || child.try_wait().unwrap()).unwrap_or_else(|| {
            panic!(
                "ferrocorn did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            )
        })
    }

    /// Live worker processes: children of the master, from /proc.
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Poll /proc until the live workers are exactly `pids` (sorted); returns them.
    pub fn wait_until_workers(&self, pids: &[i32], timeout: Duration) -> Vec<i32> {
        poll(timeout, || {
            Some(self.worker_pids()).filter(|now| now == pids)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected workers {pids:?}, have {:?}; log:\n{}",
                self.worker_pids(),
                self.log_text()
            )
        })
    }

    /// Poll /proc until the number of workers is `n` (the arbiter's forks/reaps are asynchronous).
    pub fn wait_worker_count(&self, n: usize, timeout: Duration) -> Vec<i32> {
        poll(timeout, || {
            Some(self.worker_pids()).filter(|pids| pids.len() == n)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} workers, have {:?}; log:\n{}",
                self.worker_pids(),
                self.log_text()
            )
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pids = self.worker_pids();
            signal(self.pid(), libc::SIGKILL);
            for pid in pids {
                signal(pid, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// Send `sig` to `pid`, failing the test if it cannot be sent.
pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Whether `pid` runs (a zombie does not). A process counts as gone only once every one of its
/// threads is a zombie: a thread-group leader turns `Z` while its sibling threads are still
/// exiting and still hold the process's files (its listening socket among them).
pub fn pid_alive(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| !is_zombie_stat(&stat))
    })
}

/// Whether a `/proc/.../stat` line says `Z` (the state follows the command's closing paren).
fn is_zombie_stat(stat: &str) -> bool {
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .starts_with('Z')
}

/// Pids whose parent is `ppid` (from /proc/*/stat), excluding zombies.
pub fn children_of(ppid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[1].parse::<i32>() == Ok(ppid) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// A fresh scratch directory holding the bundled example app as `hello.py` (serve it with
/// `--chdir DIR hello:app`).
pub fn hello_app_dir(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    std::fs::copy(
        repo_root().join("examples/hello.py"),
        dir.path().join("hello.py"),
    )
    .unwrap();
    dir
}

/// `ferrocorn ARGS --chdir examples hello:app` on an ephemeral port: the bundled example app
/// (`examples/hello.py`: `/`, `POST /echo`, `/sleep?s=N`, `/error`).
pub fn start_hello(args: &[&str]) -> Server {
    let mut all = vec!["--chdir", "examples"];
    all.extend_from_slice(args);
    all.push("hello:app");
    Server::start(&all)
}

/// `ferrocorn ARGS --chdir <repo>/tests/apps APP` on an ephemeral port: one of the test apps
/// (`tests/apps/*.py`), e.g. `threads_app:app`.
pub fn start_test_app(app: &str, args: &[&str]) -> Server {
    let apps = repo_root().join("tests/apps");
    let mut all = vec!["--chdir", apps.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push(app);
    Server::start(&all)
}

/// The SHA-256 of `bytes` in hex, as `sha256sum` (coreutils) computes it: a second opinion for
/// what an app hashed.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    // Written from another thread: sha256sum's output cannot fill a pipe, but be plain about it.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("sha256sum's output");
    writer.join().unwrap().expect("feeding sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string()
}

/// The test virtualenv `<repo>/.venv` with Flask and Django (requirements/test.txt), made or
/// refreshed by `scripts/python-env.sh` (idempotent and quick when up to date; once per test binary).
pub fn test_venv() -> PathBuf {
    static READY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let venv = repo_root().join(".venv");
            let out = Command::new("bash")
                .arg(repo_root().join("scripts/python-env.sh"))
                .arg(&venv)
                .output()
                .map_err(|e| format!("running scripts/python-env.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/python-env.sh failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(venv)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

impl Server {
    /// Start a prepared command (e.g. with inherited sockets, or wrapped in `sh -c`), following its
    /// log like [`Server::spawn`]. The command's stdout/stderr are taken over; its pid is the
    /// master's only if the command execs it.
    pub fn spawn_command(mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The test runner's own environment must not pick defaults; values the test set stay.
        for var in [
            "WEB_CONCURRENCY",
            "PORT",
            "VIRTUAL_ENV",
            "GUNICORN_CMD_ARGS",
            "FERROCORN_CMD_ARGS",
        ] {
            if !cmd.get_envs().any(|(k, _)| k == var) {
                cmd.env_remove(var);
            }
        }
        let mut child = cmd.spawn().expect("spawn ferrocorn");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("FERROCORN_TEST_ECHO").is_some() {
                        eprintln!("ferrocorn| {line}");
                    }
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Server {
            child,
            addr: None,
            lines: rx,
            unread: std::collections::VecDeque::new(),
            log,
        }
    }

    /// Wait until the process exits and its output pipes close; the exit status and every line
    /// it wrote (stderr and stdout).
    pub fn wait_exit_and_output(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = self.wait_exit(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("output pipes still open after exit"),
            }
        }
        (status, self.log_text())
    }

    /// Wait for the next "Listening at: http://ADDR" line and return ADDR (also kept as `addr`
    /// when none was known yet).
    pub fn wait_listening_tcp(&mut self) -> SocketAddr {
        let line = self.wait_for_log("Listening at: http://", BOOT_TIMEOUT);
        let rest = line.split("Listening at: http://").nth(1).unwrap();
        let addr: SocketAddr = rest
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .expect("listen address");
        self.addr.get_or_insert(addr);
        addr
    }

    /// Log lines seen so far that contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// A field of /proc/PID/status (e.g. "Uid", "Threads"), its value without the name.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// A TCP port that was free a moment ago (bind port 0, note it, close it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A path under the temp dir no other test (in this process or another) uses:
/// `ferrocorn-PID-N-NAME`, N counting up per process (NAME last, so an extension stays one).
pub fn unique_temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("ferrocorn-{}-{n}-{name}", std::process::id()))
}

/// A scratch directory, removed at the end of the test.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Create an empty directory at [`unique_temp_path`]`(name)`, open to every user.
    pub fn new(name: &str) -> TempDir {
        let dir = unique_temp_path(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Workers running as `nobody` must get in.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Where it is, as a command-line argument.
    pub fn str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIGKILLs a process and its children when dropped: a master that outlived the one the test
/// started must not outlive a failing test.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !pid_alive(self.0) {
            return;
        }
        // Each may exit on its own meanwhile (a worker with its master): a failed kill is no news,
        // and a panic here, during a failing test's unwinding, would abort the whole test binary.
        for pid in children_of(self.0).into_iter().chain([self.0]) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The server's only worker was replaced by a new one that serves; returns its pid.
pub fn assert_replaced_and_serving(server: &mut Server, first: i32) -> i32 {
    let replacement = server.wait_for_workers(1)[0];
    assert_ne!(replacement, first);
    assert_eq!(get(server.addr(), "/").status, 200, "{}", server.log_text());
    replacement
}

/// How often [`poll`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The harness's one deadline loop: call `probe` until it gives a value or `timeout` has passed
/// (`None` then). For state nothing announces (/proc, a file, a counter); a log line is waited
/// for with [`Server::wait_for_log`] instead.
pub fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Poll `probe` until it gives a value, failing the test (naming `what`) after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Option<T>) -> T {
    poll(timeout, probe).unwrap_or_else(|| panic!("not within {timeout:?}: {what}"))
}

/// Poll `done` until it holds (failing the test after [`BOOT_TIMEOUT`]).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    wait_for(what, BOOT_TIMEOUT, || done().then_some(()))
}

/// uid and gid of a user from /etc/passwd.
pub fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.split(':').next() == Some(user))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// The OOM killer's way: SIGKILL the master, then every worker must stop on its own and the port
/// be free.
pub fn assert_workers_stop_when_the_master_is_killed(mut server: Server) {
    server.wait_for_workers(2);
    let workers = server.wait_worker_count(2, BOOT_TIMEOUT);
    let _cleanup: Vec<KillOnDrop> = workers.iter().map(|pid| KillOnDrop(*pid)).collect();
    assert_eq!(get(server.addr(), "/").status, 200);
    // No chance for the master to stop anything.
    server.signal(libc::SIGKILL);
    server.wait_exit(STOP_PATIENCE);
    for pid in &workers {
        wait_until(&format!("orphaned worker {pid} exits"), || !pid_alive(*pid));
    }
    assert!(
        std::net::TcpStream::connect(server.addr()).is_err(),
        "nobody holds the port any more; listening sockets now:\n{}",
        listening_sockets()
    );
}

/// `ss -ltnp`'s listing, for a failure message that says who holds a port.
fn listening_sockets() -> String {
    Command::new("ss")
        .arg("-ltnp")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_else(|e| format!("(ss: {e})"))
}

/// The shared libraries `bin` loads, as `ldd` lists them (and a failure if it cannot tell).
pub fn ldd(bin: &Path) -> String {
    let out = Command::new("ldd").arg(bin).output().expect("running ldd");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ldd {}: {listing}", bin.display());
    assert!(
        listing.contains("libc.so"),
        "ldd {} lists no libc, so it says nothing: {listing}",
        bin.display()
    );
    listing
}

/// Whether `bin` links libpython.
pub fn links_libpython(bin: &Path) -> bool {
    ldd(bin).lines().any(|line| line.contains("libpython"))
}

/// Poll a log file (`--log-file`, where the harness cannot follow the output) until a line holds
/// `needle`; panics with the file's text on timeout.
pub fn wait_for_file_line(path: &Path, needle: &str, timeout: Duration) -> String {
    let text = || std::fs::read_to_string(path).unwrap_or_default();
    poll(timeout, || {
        text()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    })
    .unwrap_or_else(|| {
        panic!(
            "no line with {needle:?} in {} within {timeout:?}; it holds:\n{}",
            path.display(),
            text()
        )
    })
}

/// Clients connected to the TCP listener on `addr` and not accepted yet: the accept queue of the
/// listening socket, which /proc/net/tcp shows as its rx_queue.
pub fn accept_queue_len(addr: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = format!(":{:04X}", addr.port());
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // fields: sl, local_address, rem_address, st, tx_queue:rx_queue, ...; 0A is LISTEN.
        if fields.len() > 4 && fields[1].ends_with(&port) && fields[3] == "0A" {
            u32::from_str_radix(fields[4].split(':').nth(1)?, 16).ok()
        } else {
            None
        }
    })
}

/// Poll /proc until no client is queued on `addr` (every connection made so far was accepted by
/// a worker); panics after `timeout`.
pub fn wait_all_accepted(addr: SocketAddr, timeout: Duration) {
    wait_for(
        &format!("every connection to {addr} accepted"),
        timeout,
        || (accept_queue_len(addr) == Some(0)).then_some(()),
    )
}

/// What a command that ran to its end printed.
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (e.g. `--json`).
    pub stdout: String,
    /// Everything it wrote to stderr (the log).
    pub stderr: String,
}

/// Run `ferrocorn ARGS` in the repository root to its end (killed, and the test failed, if it
/// takes longer than `timeout`), with stdout and stderr apart (e.g. `--json` on stdout).
pub fn run_ferrocorn(args: &[&str], timeout: Duration) -> Finished {
    let mut child = Command::new(ferrocorn_bin())
        .args(args)
        .current_dir(repo_root())
        .env_remove("WEB_CONCURRENCY")
        .env_remove("PORT")
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrocorn");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ferrocorn {args:?} did not finish within {timeout:?}; stderr:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `pid`'s children, their children and so on (not `pid` itself), parents first.
pub fn descendants_of(pid: i32) -> Vec<i32> {
    let mut found = children_of(pid);
    let mut next = 0;
    while next < found.len() {
        let more = children_of(found[next]);
        found.extend(more);
        next += 1;
    }
    found
}
