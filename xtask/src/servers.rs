//! The servers under test in `cargo xtask bench` and `cargo xtask soak`: how to start ferrocorn,
//! gunicorn, uWSGI and Granian on the same app with the same workers, wait until they serve, and
//! stop them (the whole process group, so a master started by USR2 goes too).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferrocorn_sizing::process_tree;

use crate::{cargo, run};

/// `.venv-bench` made (or checked) and a release ferrocorn built: what every comparison needs.
pub(crate) fn prepare(root: &Path) -> Result<Env> {
    let venv = root.join(".venv-bench");
    run(Command::new(root.join("scripts/bench-env.sh")).arg(&venv))?;
    run(cargo().args(["build", "--release", "-p", "ferrocorn-cli"]))?;
    Ok(Env {
        root: root.to_path_buf(),
        venv,
        ferrocorn: target_dir(root).join("release/ferrocorn"),
    })
}

/// Where cargo puts what it builds: `$CARGO_TARGET_DIR` when set, else `target/`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}

/// A server under test: how to start it serving `module:app` from `dir` on `port`.
pub(crate) struct ServerKind {
    pub name: &'static str,
    pub command: fn(&Env, &Target, u16, usize, bool) -> Command,
}

pub(crate) struct Env {
    pub root: PathBuf,
    pub venv: PathBuf,
    pub ferrocorn: PathBuf,
}

/// An app to serve: a directory, an app spec and a path to request.
pub(crate) struct Target {
    pub dir: PathBuf,
    pub spec: &'static str,
    pub path: &'static str,
}

/// ferrocorn takes gunicorn's flags: one command line for both, only the program differs.
fn gunicorn_style(
    mut cmd: Command,
    t: &Target,
    port: u16,
    workers: usize,
    preload: bool,
) -> Command {
    cmd.args([
        "-w",
        &workers.to_string(),
        "-b",
        &format!("127.0.0.1:{port}"),
    ])
    .args(["--log-level", "warning", "--chdir"])
    .arg(&t.dir);
    if preload {
        cmd.arg("--preload");
    }
    cmd.arg(t.spec);
    cmd
}

fn ferrocorn_cmd(env: &Env, t: &Target, port: u16, workers: usize, preload: bool) -> Command {
    // The venv comes from $VIRTUAL_ENV, which `start` sets for every server.
    gunicorn_style(Command::new(&env.ferrocorn), t, port, workers, preload)
}

fn gunicorn_cmd(env: &Env, t: &Target, port: u16, workers: usize, preload: bool) -> Command {
    gunicorn_style(venv_script(env, "gunicorn"), t, port, workers, preload)
}

/// A console script of the bench venv, run by the venv's interpreter: a venv made in one place
/// and reached through another path (a symlink, a copy) keeps working although its scripts'
/// `#!` lines name where it was made.
pub(crate) fn venv_script(env: &Env, script: &str) -> Command {
    let mut cmd = Command::new(env.venv.join("bin/python"));
    cmd.arg(env.venv.join("bin").join(script));
    cmd
}

fn uwsgi_cmd(env: &Env, t: &Target, port: u16, workers: usize, preload: bool) -> Command {
    let (module, callable) = t.spec.split_once(':').unwrap_or((t.spec, "application"));
    let mut cmd = Command::new(env.venv.join("bin/uwsgi"));
    cmd.args([
        "--http-socket",
        &format!("127.0.0.1:{port}"),
        "--master",
        "--processes",
        &workers.to_string(),
    ])
    .args([
        "--module",
        module,
        "--callable",
        callable,
        "--disable-logging",
        "--die-on-term",
    ])
    .arg("--chdir")
    .arg(&t.dir)
    .arg("--virtualenv")
    .arg(&env.venv);
    if !preload {
        cmd.arg("--lazy-apps");
    }
    cmd
}

fn granian_cmd(env: &Env, t: &Target, port: u16, workers: usize, _preload: bool) -> Command {
    let mut cmd = venv_script(env, "granian");
    cmd.args([
        "--interface",
        "wsgi",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .args([
        "--workers",
        &workers.to_string(),
        "--blocking-threads",
        "1",
        "--no-ws",
    ])
    .args(["--log-level", "warning"])
    .arg("--working-dir")
    .arg(&t.dir)
    .arg(t.spec);
    cmd
}

pub(crate) const SERVERS: &[ServerKind] = &[
    ServerKind {
        name: "ferrocorn",
        command: ferrocorn_cmd,
    },
    ServerKind {
        name: "gunicorn",
        command: gunicorn_cmd,
    },
    ServerKind {
        name: "uwsgi",
        command: uwsgi_cmd,
    },
    ServerKind {
        name: "granian",
        command: granian_cmd,
    },
];

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started server; killed (whole process group) on drop.
pub(crate) struct Running {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // Every server here stops gracefully on TERM; SIGKILL the group if it lingers.
        kill_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(pgid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

pub(crate) fn kill_group(pgid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the process group.
    unsafe { libc::kill(-pgid, signal) };
}

pub(crate) fn start(
    kind: &ServerKind,
    env: &Env,
    target: &Target,
    workers: usize,
    preload: bool,
) -> Result<Running> {
    let log_name = format!("{}-{}w-preload-{preload}", kind.name, workers);
    start_with(kind, env, target, workers, preload, &[], &log_name)
}

/// [`start`] with more flags (both servers take them after the app), logging to
/// `target/bench-logs/LOG_NAME.log`.
pub(crate) fn start_with(
    kind: &ServerKind,
    env: &Env,
    target: &Target,
    workers: usize,
    preload: bool,
    extra_args: &[String],
    log_name: &str,
) -> Result<Running> {
    let port = free_port()?;
    let mut cmd = (kind.command)(env, target, port, workers, preload);
    cmd.args(extra_args);
    // Each server's own log, to read when a run misbehaves.
    let log_dir = env.root.join("target/bench-logs");
    std::fs::create_dir_all(&log_dir)?;
    let log_path = log_dir.join(format!("{log_name}.log"));
    let log = std::fs::File::create(&log_path)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.env("VIRTUAL_ENV", &env.venv)
        .env_remove("WEB_CONCURRENCY");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", kind.name))?;
    let mut running = Running {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    // Ready when every worker has answered: keep asking until `workers` distinct workers were seen,
    // or at least until requests succeed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = running.child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log.lines().last().unwrap_or("(nothing logged)");
            bail!("{} exited during start-up with {status}: {last}", kind.name);
        }
        if let Ok(200) = one_request(running.addr, target.path).map(|(status, _)| status) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} did not answer within 60 s", kind.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Workers boot lazily in some servers; wait for the process tree to have them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while workers_of(running.child.id() as i32).len() < workers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(running)
}

/// How long [`one_request`] waits for each read of its answer.
pub(crate) const ONE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn one_request(addr: SocketAddr, path: &str) -> std::io::Result<(u16, usize)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(ONE_REQUEST_TIMEOUT))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = Vec::with_capacity(1024);
    s.read_to_end(&mut buf)?;
    let status = buf
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, buf.len()))
}

/// Descendants of `pid` (the workers, and any helper processes a server starts).
pub(crate) fn workers_of(pid: i32) -> Vec<i32> {
    process_tree(pid)
        .map(|tree| tree.into_iter().filter(|p| *p != pid).collect())
        .unwrap_or_default()
}
