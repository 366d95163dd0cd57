//! Where `top` reads from: the stats endpoint, or /proc under the master's pid.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrocorn_listener::BindSpec;
use serde::Deserialize;

use crate::Error;

/// How long one fetch of the stats may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of the endpoint's JSON that `top` shows (the rest is ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    /// The master's pid and target worker count.
    pub master: Master,
    /// Each live worker.
    pub workers: Vec<Worker>,
    /// Each listening socket and its accept queue.
    #[serde(default)]
    pub listeners: Vec<ListenerStats>,
    /// Requests and responses by status class over the server's life.
    pub totals: Option<Totals>,
    /// The server's PSS against its budget.
    pub memory: Option<Memory>,
    /// The recommended worker count.
    pub recommendation: Option<Recommendation>,
    /// When this sample was taken (not in the JSON).
    #[serde(skip, default = "Instant::now")]
    pub at: Instant,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Master {
    pub pid: i32,
    #[serde(default)]
    pub workers_target: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Worker {
    pub pid: i32,
    /// `booting`, `idle`, `busy`; empty when read from /proc.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub requests: Option<u64>,
    /// App threads, and how many of them serve a request (absent from older servers' JSON).
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub busy_threads: Option<usize>,
    /// Request heads queued in the worker for a free thread.
    #[serde(default)]
    pub waiting_requests: Option<u64>,
    pub current_request: Option<CurrentRequest>,
    pub uss_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CurrentRequest {
    pub method: String,
    pub path: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListenerStats {
    pub address: String,
    pub accept_queue: Option<u32>,
    pub accept_queue_limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub responses: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Memory {
    pub budget_bytes: Option<u64>,
    pub used_pss_bytes: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Recommendation {
    pub workers: usize,
}

/// The endpoint, or the master's pid for /proc.
#[derive(Debug)]
pub enum Source {
    /// The master's `--stats` endpoint.
    Endpoint(BindSpec),
    /// The master's pid: its children are read from /proc.
    Proc(i32),
}

impl Source {
    /// `--stats` wins; otherwise the pid file's master is read from /proc.
    pub fn new(stats: Option<BindSpec>, pidfile: Option<PathBuf>) -> Result<Source, Error> {
        match (stats, pidfile) {
            (Some(spec), _) => Ok(Source::Endpoint(spec)),
            (None, Some(path)) => read_pidfile(path).map(Source::Proc),
            (None, None) => Err(Error::NoSource),
        }
    }

    /// Take one sample.
    pub fn fetch(&self) -> Result<Stats, Error> {
        match self {
            Source::Endpoint(spec) => fetch_endpoint(spec),
            Source::Proc(master) => Ok(from_proc(*master)),
        }
    }
}

fn read_pidfile(path: PathBuf) -> Result<i32, Error> {
    let text = std::fs::read_to_string(&path).map_err(|cause| Error::PidFile {
        path: path.clone(),
        cause,
    })?;
    text.trim().parse().map_err(|_| Error::BadPidFile(path))
}

fn fetch_endpoint(spec: &BindSpec) -> Result<Stats, Error> {
    let address = spec.to_string();
    let io = |cause| Error::Stats {
        address: address.clone(),
        cause,
    };
    let response = exchange(spec).map_err(io)?;
    let bad = |reason: String| Error::BadStats {
        address: address.clone(),
        reason,
    };
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no HTTP response".into()))?;
    let status_line = String::from_utf8_lossy(&response[..split]);
    if !status_line.starts_with("HTTP/1.1 200") {
        let first = status_line.lines().next().unwrap_or_default().to_string();
        return Err(bad(format!("answered {first:?}")));
    }
    serde_json::from_slice(&response[split + 4..]).map_err(|e| bad(e.to_string()))
}

/// `GET /`, read to the end (the endpoint closes after each response).
fn exchange(spec: &BindSpec) -> std::io::Result<Vec<u8>> {
    let request = b"GET / HTTP/1.1\r\nHost: ferrocorn-top\r\nConnection: close\r\n\r\n";
    let mut response = Vec::new();
    match spec {
        BindSpec::Unix(path) => {
            let mut s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(Some(FETCH_TIMEOUT))?;
            s.write_all(request)?;
            s.read_to_end(&mut response)?;
        }
        tcp => {
            let addr = tcp
                .resolve()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let mut s = std::net::TcpStream::connect_timeout(&addr, FETCH_TIMEOUT)?;
            s.set_read_timeout(Some(FETCH_TIMEOUT))?;
            s.write_all(request)?;
            s.read_to_end(&mut response)?;
        }
    }
    Ok(response)
}

/// What /proc tells of the master's children: pid, memory and CPU only.
fn from_proc(master: i32) -> Stats {
    let workers = ferrocorn_sizing::process_tree(master)
        .unwrap_or_default()
        .into_iter()
        .filter(|&pid| pid != master && parent_of(pid) == Some(master))
        .map(|pid| {
            let memory = ferrocorn_sizing::process_memory(pid).ok();
            Worker {
                pid,
                uss_bytes: memory.map(|m| m.uss),
                pss_bytes: memory.map(|m| m.pss),
                cpu_seconds: ferrocorn_sizing::process_cpu_seconds(pid).ok(),
                ..Worker::default()
            }
        })
        .collect();
    Stats {
        master: Master {
            pid: master,
            workers_target: None,
        },
        workers,
        listeners: Vec::new(),
        totals: None,
        memory: None,
        recommendation: None,
        at: Instant::now(),
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ferrocorn_sizing::parse_stat_ppid(&stat).ok()
}
