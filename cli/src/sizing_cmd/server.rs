//! The server under test: this very binary re-launched with the user's serve flags on a private
//! loopback port, one process per sweep step, measured through /proc.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferrocorn_sizing::advisor::{Bench, StepPlan, StepResult};
use ferrocorn_sizing::{ProcessMemory, TreeMemory};

use super::load::{self, Target};

/// How long the master may take to start and fork its workers.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a quick stop (SIGINT) may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Log lines kept to explain a failure.
const LOG_TAIL: usize = 30;

/// Everything needed to start the app as `ferrocorn ARGS APP` would.
#[derive(Debug, Clone)]
pub struct Launch {
    pub exe: std::path::PathBuf,
    /// The user's serve flags and APP, minus the ones the advisor sets itself.
    pub args: Vec<OsString>,
    pub targets: Vec<Target>,
    pub host: String,
    /// The run's hard end (`--duration`).
    pub deadline: Instant,
}

/// A running master and the tail of its log.
struct Running {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let start = log.len().saturating_sub(LOG_TAIL);
        log[start..].join("\n")
    }

    fn workers(&self) -> Vec<i32> {
        ferrocorn_sizing::child_pids(self.pid()).unwrap_or_default()
    }

    /// Quick stop (SIGINT: the master kills its workers), SIGKILL if it lingers.
    fn stop(mut self) {
        let workers = self.workers();
        send(self.pid(), libc::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            for pid in workers.iter().copied().chain([self.pid()]) {
                send(pid, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

fn send(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) with a pid we started; a stale pid at worst gets ESRCH.
    unsafe { libc::kill(pid, signal) };
}

/// Ask the kernel to SIGINT the child when this process dies, so a killed advisor leaves no
/// server behind.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `--threads N` for a step of N app threads per worker; nothing for one (the default, so a
/// sweep without `--threads` runs its servers exactly as before).
pub(super) fn threads_args(threads: usize) -> Vec<String> {
    match threads {
        0 | 1 => Vec::new(),
        n => vec!["--threads".to_string(), n.to_string()],
    }
}

/// The [`Bench`] that runs real `ferrocorn` processes.
pub struct ProcessBench {
    pub launch: Launch,
    pub stop: Arc<AtomicBool>,
    /// Print a line per step to stderr.
    pub progress: bool,
}

impl ProcessBench {
    fn left(&self) -> Duration {
        self.launch
            .deadline
            .saturating_duration_since(Instant::now())
    }

    fn check_time(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if self.left().is_zero() {
            bail!("the --duration ran out");
        }
        Ok(())
    }

    fn start(&self, plan: &StepPlan) -> Result<Running> {
        let mut cmd = Command::new(&self.launch.exe);
        cmd.args(["-b", "127.0.0.1:0", "--log-level", "info", "-w"])
            .arg(plan.workers.to_string())
            .args(plan.preload.then_some("--preload"))
            .args(threads_args(plan.threads))
            .args(&self.launch.args)
            .env_remove("WEB_CONCURRENCY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.launch.exe.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_address(&line) {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut running = Running {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        match self.wait_ready(&mut running, &rx, plan.workers) {
            Ok(addr) => {
                running.addr = addr;
                Ok(running)
            }
            Err(e) => {
                let tail = running.log_tail();
                running.stop();
                Err(e.context(format!("the server's log:\n{tail}")))
            }
        }
    }

    /// Wait for "Listening at:" and for `workers` workers to have booted.
    fn wait_ready(
        &self,
        running: &mut Running,
        rx: &mpsc::Receiver<SocketAddr>,
        workers: usize,
    ) -> Result<SocketAddr> {
        let deadline = Instant::now() + START_TIMEOUT.min(self.left());
        let mut addr = None;
        loop {
            self.check_time()?;
            if let Some(status) = running.child.try_wait()? {
                bail!("the server exited during start-up ({status})");
            }
            if addr.is_none() {
                addr = rx.try_recv().ok();
            }
            if let Some(addr) = addr {
                let pids = running.workers();
                // Forked is not ready: without --preload each worker imports the app first.
                if pids.len() >= workers && pids.iter().all(|&pid| waiting_in_poll(pid)) {
                    return Ok(addr);
                }
            }
            if Instant::now() >= deadline {
                bail!("{workers} workers did not start in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Each URL once: an error answer stops the whole run with its status and body.
    fn check_urls(&self, running: &Running) -> Result<()> {
        for target in &self.launch.targets {
            let timeout = self.left().clamp(Duration::from_secs(1), START_TIMEOUT);
            let answer = load::exchange(running.addr, &self.launch.host, target, timeout)
                .with_context(|| format!("warm-up request {target}"))?;
            if answer.status >= 400 {
                bail!(
                    "warm-up request {target} answered {}:\n{}",
                    answer.status,
                    answer.body_text(2000)
                );
            }
        }
        Ok(())
    }

    fn load(&self, running: &Running, plan: &StepPlan, duration: Duration) -> load::LoadReport {
        load::run(
            running.addr,
            &self.launch.host,
            &self.launch.targets,
            plan.connections,
            duration.min(self.left()),
            &self.stop,
        )
    }

    fn measure(&self, running: &Running, plan: &StepPlan) -> Result<StepResult> {
        self.check_urls(running)?;
        self.load(running, plan, plan.warmup);
        self.check_time()?;
        let workers = running.workers();
        let uss_before = mean_uss(&workers);
        let pss_before = server_memory(running)?.total.pss;
        let (cpu_before, wait_before) = cpu_seconds(&workers);
        let report = self.load(running, plan, plan.window);
        let (cpu_after, wait_after) = cpu_seconds(&workers);
        let (master, worker_memory) = master_and_rest(server_memory(running)?)?;
        if report.ok == 0 {
            bail!(
                "no request was answered: {}",
                report.first_error.as_deref().unwrap_or("no answer")
            );
        }
        Ok(StepResult {
            workers: plan.workers,
            threads: plan.threads,
            preload: plan.preload,
            connections: plan.connections,
            requests: report.ok,
            errors: report.errors,
            window: plan.window,
            p50: report.quantile(0.5),
            p99: report.quantile(0.99),
            mean_latency: report.mean(),
            worker_cpu: (cpu_after - cpu_before).max(0.0),
            worker_cpu_wait: (wait_after - wait_before).max(0.0),
            total_pss_before: pss_before,
            master,
            worker_memory,
            worker_uss_before: uss_before,
            elapsed: Duration::ZERO,
        })
    }
}

/// The epoll and poll system calls, in one of which a booted worker's I/O loop waits for
/// connections.
#[cfg(target_arch = "x86_64")]
const POLL_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_poll,
    libc::SYS_ppoll,
];
#[cfg(not(target_arch = "x86_64"))]
const POLL_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
];

/// Whether `pid` is blocked in epoll or poll, from `/proc/PID/syscall` (of its main thread, the
/// I/O loop's): before any load is sent, that is a worker done loading its app and waiting for
/// connections. When the file cannot be read
/// (no permission, kernel without it), the worker is taken as ready.
fn waiting_in_poll(pid: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else {
        return true;
    };
    text.split_whitespace()
        .next()
        .and_then(|nr| nr.parse::<libc::c_long>().ok())
        .is_some_and(|nr| POLL_SYSCALLS.contains(&nr))
}

/// Seconds on a CPU and waiting for one, summed over `pids`: from schedstat (nanoseconds),
/// else from stat's clock ticks with no wait known.
fn cpu_seconds(pids: &[i32]) -> (f64, f64) {
    pids.iter()
        .filter_map(|&pid| {
            ferrocorn_sizing::process_schedstat(pid).ok().or_else(|| {
                ferrocorn_sizing::process_cpu_seconds(pid)
                    .ok()
                    .map(|cpu| (cpu, 0.0))
            })
        })
        .fold((0.0, 0.0), |(c, w), (dc, dw)| (c + dc, w + dw))
}

/// The master's memory and that of every process under it (workers and anything they
/// started), from smaps_rollup: what `cargo xtask bench` counts too
/// ([`ferrocorn_sizing::tree_memory`]).
fn server_memory(running: &Running) -> Result<TreeMemory> {
    ferrocorn_sizing::tree_memory(running.pid())
        .map_err(|e| anyhow!("measuring the server's memory: {e}"))
}

/// The master's memory (the root of `tree`) and the others'.
fn master_and_rest(tree: TreeMemory) -> Result<(ProcessMemory, Vec<ProcessMemory>)> {
    let mut processes = tree.processes.into_iter();
    let (_, master) = processes.next().context("the master is gone")?;
    Ok((master, processes.map(|(_, m)| m).collect()))
}

fn mean_uss(pids: &[i32]) -> u64 {
    let all: Vec<ProcessMemory> = pids
        .iter()
        .filter_map(|&pid| ferrocorn_sizing::process_memory(pid).ok())
        .collect();
    all.iter().map(|m| m.uss).sum::<u64>() / (all.len().max(1) as u64)
}

/// The address in ferrocorn's "Listening at: http://ADDR (PID)" line.
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split("Listening at: http://").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

impl Bench for ProcessBench {
    type Error = String;

    fn step(&mut self, plan: &StepPlan) -> Result<StepResult, String> {
        let started = Instant::now();
        self.check_time().map_err(|e| format!("{e:#}"))?;
        let running = self.start(plan).map_err(|e| format!("{e:#}"))?;
        let ready = started.elapsed();
        let measured = self.measure(&running, plan);
        let loaded = started.elapsed();
        let tail = running.log_tail();
        running.stop();
        if self.progress {
            let outcome = match &measured {
                Ok(r) => format!(
                    "{:.1} req/s, p99 {:.1} ms",
                    r.rps(),
                    r.p99.as_secs_f64() * 1e3
                ),
                Err(_) => "failed".to_string(),
            };
            eprintln!(
                "  {}{}: {outcome} (start {:.1} s, load {:.1} s, stop {:.1} s)",
                ferrocorn_sizing::advisor::slots_text(plan.workers, plan.threads),
                if plan.preload { " with --preload" } else { "" },
                ready.as_secs_f64(),
                (loaded - ready).as_secs_f64(),
                (started.elapsed() - loaded).as_secs_f64()
            );
        }
        let mut result = measured.map_err(|e| {
            if self.stop.load(Ordering::Relaxed) {
                "interrupted".to_string()
            } else {
                format!("{e:#}\nthe server's log:\n{tail}")
            }
        })?;
        result.elapsed = started.elapsed();
        Ok(result)
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn out_of_time(&self) -> bool {
        self.left().is_zero()
    }
}
