//! `--stats ADDRESS`: a read-only HTTP endpoint served from the master's own loop (no thread:
//! the master forks; no Python). `GET /` answers JSON ([`Report`]), `GET /metrics` the same in
//! Prometheus text format. What the workers do is read from the shared scoreboard, which they
//! write without system calls, so serving stats costs request handling nothing.
//!
//! Each connection is non-blocking and bounded: its head must arrive within [`CLIENT_TIME`] and
//! fit [`HEAD_MAX`], the whole response is written, then the connection is closed. A client that
//! stalls is dropped; the master never blocks on one.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use ferrocorn_arbiter::{
    ArbiterStatus, ExitCause, LaneSnapshot, PollFd, SlotState, Want, WorkerStatus,
};
use ferrocorn_http::{HeadParser, Limits, Parsed};
use ferrocorn_listener::{Listener, Stream};
use log::debug;
use serde::Serialize;

/// How long a stats client gets from connect to the end of its response.
const CLIENT_TIME: Duration = Duration::from_secs(5);
/// Largest request head read.
const HEAD_MAX: usize = 8 * 1024;
/// Connections served at once; more are closed at accept.
const MAX_CLIENTS: usize = 16;

/// The stats listener, its clients, and the counters kept from the arbiter's events.
pub(crate) struct StatsServer {
    listener: Listener,
    clients: Vec<Client>,
    exits: ExitCounts,
    started: Instant,
    /// The server's listeners (duplicates), for their accept queues.
    listeners: Vec<(String, Listener)>,
}

struct Client {
    stream: Stream,
    head: Vec<u8>,
    /// The response once the head is in, and how much of it is written.
    response: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// Worker exits by cause, since the master started.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ExitCounts {
    pub crash: u64,
    pub timeout: u64,
    pub max_requests: u64,
    pub memory: u64,
    pub scale_down: u64,
    pub boot_failure: u64,
}

impl ExitCounts {
    fn count(&mut self, cause: ExitCause) {
        *match cause {
            ExitCause::Crash { .. } => &mut self.crash,
            ExitCause::Timeout => &mut self.timeout,
            ExitCause::MaxRequests => &mut self.max_requests,
            ExitCause::Memory => &mut self.memory,
            ExitCause::ScaleDown => &mut self.scale_down,
            ExitCause::BootFailure(_) => &mut self.boot_failure,
        } += 1;
    }

    fn pairs(&self) -> [(&'static str, u64); 6] {
        [
            ("crash", self.crash),
            ("timeout", self.timeout),
            ("max_requests", self.max_requests),
            ("memory", self.memory),
            ("scale_down", self.scale_down),
            ("boot_failure", self.boot_failure),
        ]
    }
}

fn cause_name(cause: ExitCause) -> &'static str {
    match cause {
        ExitCause::Crash { .. } => "crash",
        ExitCause::Timeout => "timeout",
        ExitCause::MaxRequests => "max_requests",
        ExitCause::Memory => "memory",
        ExitCause::ScaleDown => "scale_down",
        ExitCause::BootFailure(_) => "boot_failure",
    }
}

impl StatsServer {
    /// Serve on `listener` (made non-blocking); `listeners` are the server's own.
    pub(crate) fn new(listener: Listener, listeners: Vec<(String, Listener)>) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(StatsServer {
            listener,
            clients: Vec::new(),
            exits: ExitCounts::default(),
            started: Instant::now(),
            listeners,
        })
    }

    /// A unix stats socket's file goes with the server, as the server's own do.
    pub(crate) fn remove_socket_file(&self) {
        if let Err(e) = self.listener.remove_socket_file() {
            log::error!("cannot remove the stats socket: {e}");
        }
    }

    pub(crate) fn worker_exited(&mut self, cause: ExitCause) {
        self.exits.count(cause);
    }

    /// The descriptors to poll now; clients past their time are dropped first.
    pub(crate) fn poll_fds(&mut self) -> Vec<PollFd> {
        let now = Instant::now();
        self.clients.retain(|c| {
            let alive = now < c.deadline;
            if !alive {
                debug!("stats client dropped: too slow");
            }
            alive
        });
        let clients = self.clients.iter().map(|c| PollFd {
            fd: c.stream.as_raw_fd(),
            want: if c.response.is_some() {
                Want::Write
            } else {
                Want::Read
            },
        });
        std::iter::once(PollFd {
            fd: self.listener.as_raw_fd(),
            want: Want::Read,
        })
        .chain(clients)
        .collect()
    }

    pub(crate) fn fd_ready(&mut self, fd: RawFd, status: &ArbiterStatus) {
        if fd == self.listener.as_raw_fd() {
            self.accept();
            return;
        }
        let Some(i) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd) else {
            return;
        };
        let done = match self.clients[i].response {
            None => self.read_head(i, status),
            Some(_) => write_some(&mut self.clients[i]),
        };
        if done {
            self.clients.swap_remove(i);
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock, or a failure the next poll retries.
            };
            if self.clients.len() >= MAX_CLIENTS || set_nonblocking(&stream).is_err() {
                continue; // dropped: closed at once
            }
            self.clients.push(Client {
                stream,
                head: Vec::new(),
                response: None,
                deadline: Instant::now() + CLIENT_TIME,
            });
        }
    }

    /// Read what is there; once the head is complete, build the response and start writing.
    /// True when the client is done with (closed, failed, or answered in full).
    fn read_head(&mut self, i: usize, status: &ArbiterStatus) -> bool {
        let client = &mut self.clients[i];
        let mut buf = [0u8; 2048];
        match client.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => client.head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
            Err(_) => return true,
        }
        let limits = Limits::default();
        let response = match HeadParser::new().parse(&client.head, &limits) {
            Ok(Parsed::Partial) if client.head.len() < HEAD_MAX => return false,
            Ok(Parsed::Partial) => respond(431, "text/plain", b"request head too large\n"),
            Ok(Parsed::Complete(head, _)) => {
                let (method, path) = (head.method().to_string(), head.path().to_string());
                self.route(&method, &path, status)
            }
            Err(_) => respond(400, "text/plain", b"bad request\n"),
        };
        let client = &mut self.clients[i];
        client.response = Some((response, 0));
        write_some(client)
    }

    fn route(&self, method: &str, path: &str, status: &ArbiterStatus) -> Vec<u8> {
        match (method, path) {
            ("GET", "/") => {
                let json = serde_json::to_vec_pretty(&self.report(status))
                    .expect("a report always serializes");
                respond(200, "application/json", &json)
            }
            ("GET", "/metrics") => respond(
                200,
                "text/plain; version=0.0.4",
                metrics(&self.report(status)).as_bytes(),
            ),
            (_, "/" | "/metrics") => respond(405, "text/plain", b"read-only: GET only\n"),
            _ => respond(404, "text/plain", b"not found: GET / or /metrics\n"),
        }
    }

    fn report(&self, status: &ArbiterStatus) -> Report {
        build_report(status, &self.exits, self.started.elapsed(), &self.listeners)
    }
}

fn set_nonblocking(stream: &Stream) -> io::Result<()> {
    match stream {
        Stream::Tcp(s) => s.set_nonblocking(true),
        Stream::Unix(s) => s.set_nonblocking(true),
    }
}

/// Write as much of the response as the socket takes. True when done with the client.
fn write_some(client: &mut Client) -> bool {
    let Some((bytes, written)) = &mut client.response else {
        return true;
    };
    while *written < bytes.len() {
        match client.stream.write(&bytes[*written..]) {
            Ok(0) => return true,
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    true
}

fn respond(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The JSON of `GET /`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub master: MasterReport,
    pub workers: Vec<WorkerReport>,
    pub listeners: Vec<ListenerReport>,
    pub totals: Totals,
    pub memory: MemoryReport,
    /// `None` (null) when it cannot be computed (e.g. /proc unreadable).
    pub recommendation: Option<RecommendationReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MasterReport {
    pub pid: i32,
    pub uptime_seconds: f64,
    /// Workers to keep (`-w`, TTIN/TTOU).
    pub workers_target: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    pub pid: i32,
    /// gunicorn's age: the worker's number in order of forking (1 for the first).
    pub age: u64,
    pub uptime_seconds: f64,
    /// `booting`, `idle` or `busy`.
    pub state: &'static str,
    /// Sent TERM (scaled down, replaced by a reload, stopping).
    pub retiring: bool,
    pub requests: u64,
    /// App threads (`--threads`).
    pub threads: usize,
    /// Of those, the ones serving a request now.
    pub busy_threads: usize,
    /// Complete request heads queued in the worker for a free thread.
    pub waiting_requests: u64,
    /// The longest-running request being served (`busy` only).
    pub current_request: Option<CurrentRequest>,
    /// Every request being served, one per busy thread.
    pub current_requests: Vec<ThreadRequest>,
    pub last_request_seconds: f64,
    pub uss_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// Why the worker this one replaced exited: `crash`, `timeout`, `max_requests`, `memory`,
    /// `scale_down`, `boot_failure`; null for a worker that replaced none.
    pub predecessor_exit: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurrentRequest {
    pub method: String,
    pub path: String,
    pub seconds: f64,
}

/// A request one app thread serves.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadRequest {
    /// The thread's index in its worker, from 0.
    pub thread: usize,
    pub method: String,
    pub path: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerReport {
    pub address: String,
    /// Connections waiting to be accepted; null where the kernel does not say.
    pub accept_queue: Option<u32>,
    pub accept_queue_limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub workers: usize,
    /// App threads of the live workers.
    pub threads: usize,
    /// Of those, the ones serving a request now.
    pub busy_threads: usize,
    /// Request heads queued in the workers for a free thread.
    pub waiting_requests: u64,
    /// Requests served, by live and exited workers.
    pub requests: u64,
    /// Responses by status class (`1xx` .. `5xx`).
    pub responses: Classes,
    /// Worker exits by cause; each one but `scale_down` is followed by a respawn.
    pub worker_exits: ExitCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Classes {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl From<[u64; 5]> for Classes {
    fn from([c1xx, c2xx, c3xx, c4xx, c5xx]: [u64; 5]) -> Self {
        Classes {
            c1xx,
            c2xx,
            c3xx,
            c4xx,
            c5xx,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// The tightest cgroup limit, else MemTotal; null if unreadable.
    pub budget_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    /// PSS of the master and its live workers: what the server really uses.
    pub used_pss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecommendationReport {
    pub workers: usize,
    pub cpu_workers: usize,
    pub memory_workers: Option<usize>,
    pub reason: String,
}

fn build_report(
    status: &ArbiterStatus,
    exits: &ExitCounts,
    uptime: Duration,
    listeners: &[(String, Listener)],
) -> Report {
    let workers: Vec<WorkerReport> = status.workers.iter().map(worker_report).collect();
    let mut statuses = status.exited_statuses;
    for w in &status.workers {
        for (total, n) in statuses.iter_mut().zip(w.slot.statuses) {
            *total += n;
        }
    }
    let requests = status.exited_served + status.workers.iter().map(|w| w.slot.served).sum::<u64>();
    let master_pss = ferrocorn_sizing::process_memory(status.master_pid).map_or(0, |m| m.pss);
    let budget = ferrocorn_sizing::memory_budget().ok();
    Report {
        version: env!("CARGO_PKG_VERSION"),
        master: MasterReport {
            pid: status.master_pid,
            uptime_seconds: uptime.as_secs_f64(),
            workers_target: status.target,
        },
        totals: Totals {
            workers: workers.len(),
            threads: workers.iter().map(|w| w.threads).sum(),
            busy_threads: workers.iter().map(|w| w.busy_threads).sum(),
            waiting_requests: workers.iter().map(|w| w.waiting_requests).sum(),
            requests,
            responses: statuses.into(),
            worker_exits: exits.clone(),
        },
        memory: MemoryReport {
            budget_bytes: budget.as_ref().map(|b| b.limit),
            available_bytes: budget.as_ref().and_then(|b| b.mem_available),
            used_pss_bytes: master_pss + workers.iter().filter_map(|w| w.pss_bytes).sum::<u64>(),
        },
        recommendation: recommendation(status),
        listeners: listeners.iter().map(listener_report).collect(),
        workers,
    }
}

fn worker_report(w: &WorkerStatus) -> WorkerReport {
    let memory = ferrocorn_sizing::process_memory(w.pid).ok();
    WorkerReport {
        pid: w.pid,
        age: w.age,
        uptime_seconds: w.uptime.as_secs_f64(),
        state: match w.slot.state {
            SlotState::Booting => "booting",
            SlotState::Idle => "idle",
            SlotState::Busy => "busy",
        },
        retiring: w.retiring,
        requests: w.slot.served,
        threads: w.slot.lanes.len(),
        busy_threads: w.slot.busy_lanes(),
        waiting_requests: w.slot.waiting,
        current_request: w.slot.busy_for.map(|d| CurrentRequest {
            method: w.slot.method.clone(),
            path: w.slot.path.clone(),
            seconds: d.as_secs_f64(),
        }),
        current_requests: thread_requests(&w.slot.lanes),
        last_request_seconds: w.slot.last_duration.as_secs_f64(),
        uss_bytes: memory.map(|m| m.uss),
        pss_bytes: memory.map(|m| m.pss),
        rss_bytes: memory.map(|m| m.rss),
        cpu_seconds: ferrocorn_sizing::process_cpu_seconds(w.pid).ok(),
        predecessor_exit: w.predecessor_exit.map(cause_name),
    }
}

fn thread_requests(lanes: &[LaneSnapshot]) -> Vec<ThreadRequest> {
    lanes
        .iter()
        .enumerate()
        .filter_map(|(thread, lane)| {
            lane.busy_for.map(|d| ThreadRequest {
                thread,
                method: lane.method.clone(),
                path: lane.path.clone(),
                seconds: d.as_secs_f64(),
            })
        })
        .collect()
}

fn listener_report((address, listener): &(String, Listener)) -> ListenerReport {
    let queue = listener.accept_queue();
    ListenerReport {
        address: address.clone(),
        accept_queue: queue.map(|q| q.queued),
        accept_queue_limit: queue.map(|q| q.limit),
    }
}

/// The sizing advice, measured on a worker that has served (copy-on-write makes workers grow).
fn recommendation(status: &ArbiterStatus) -> Option<RecommendationReport> {
    let sample = status
        .workers
        .iter()
        .filter(|w| w.slot.state != SlotState::Booting)
        .max_by_key(|w| w.slot.served)
        .map(|w| w.pid);
    let r = ferrocorn_sizing::recommend_now(status.master_pid, sample).ok()?;
    Some(RecommendationReport {
        workers: r.workers,
        cpu_workers: r.cpu_workers,
        memory_workers: r.memory_workers,
        reason: r.reason,
    })
}

/// The report in Prometheus text exposition format.
pub fn metrics(r: &Report) -> String {
    let mut out = Metrics::default();
    total_metrics(&mut out, r);
    outcome_metrics(&mut out, &r.totals);
    out.gauge(
        "ferrocorn_master_uptime_seconds",
        "Time since the master started.",
        &[("", r.master.uptime_seconds)],
    );
    worker_metrics(&mut out, &r.workers);
    listener_metrics(&mut out, &r.listeners);
    sizing_metrics(&mut out, r);
    out.text
}

/// Workers, threads and requests summed over the live workers, and the worker target.
fn total_metrics(out: &mut Metrics, r: &Report) {
    out.gauge(
        "ferrocorn_workers",
        "Live worker processes.",
        &[("", r.totals.workers as f64)],
    );
    out.gauge(
        "ferrocorn_workers_target",
        "Workers to keep (-w, TTIN/TTOU).",
        &[("", r.master.workers_target as f64)],
    );
    out.gauge(
        "ferrocorn_threads",
        "App threads of the live workers (--threads each).",
        &[("", r.totals.threads as f64)],
    );
    out.gauge(
        "ferrocorn_busy_threads",
        "App threads serving a request.",
        &[("", r.totals.busy_threads as f64)],
    );
    out.gauge(
        "ferrocorn_waiting_requests",
        "Request heads queued in the workers for a free thread.",
        &[("", r.totals.waiting_requests as f64)],
    );
    out.counter(
        "ferrocorn_requests_total",
        "Requests served.",
        &[("", r.totals.requests as f64)],
    );
}

/// Responses by status class and worker exits by cause.
fn outcome_metrics(out: &mut Metrics, totals: &Totals) {
    let c = &totals.responses;
    let classes = [
        ("1xx", c.c1xx),
        ("2xx", c.c2xx),
        ("3xx", c.c3xx),
        ("4xx", c.c4xx),
        ("5xx", c.c5xx),
    ]
    .map(|(k, v)| (format!("class=\"{k}\""), v as f64));
    out.counter(
        "ferrocorn_responses_total",
        "Responses by status class.",
        &labelled(&classes),
    );
    let exits = totals
        .worker_exits
        .pairs()
        .map(|(k, v)| (format!("cause=\"{k}\""), v as f64));
    out.counter(
        "ferrocorn_worker_exits_total",
        "Worker exits by cause.",
        &labelled(&exits),
    );
}

/// The memory budget and use, and the recommended worker count.
fn sizing_metrics(out: &mut Metrics, r: &Report) {
    if let Some(budget) = r.memory.budget_bytes {
        out.gauge(
            "ferrocorn_memory_budget_bytes",
            "Cgroup memory limit, else MemTotal.",
            &[("", budget as f64)],
        );
    }
    out.gauge(
        "ferrocorn_memory_used_pss_bytes",
        "PSS of the master and its workers.",
        &[("", r.memory.used_pss_bytes as f64)],
    );
    if let Some(rec) = &r.recommendation {
        out.gauge(
            "ferrocorn_recommended_workers",
            "Workers the sizing advice recommends now.",
            &[("", rec.workers as f64)],
        );
    }
}

fn labelled(pairs: &[(String, f64)]) -> Vec<(&str, f64)> {
    pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// Label text (`pid="12"`) and value, one per series of a family.
type Labelled = Vec<(String, f64)>;

/// Per-worker series, labelled by pid.
fn worker_metrics(out: &mut Metrics, workers: &[WorkerReport]) {
    out.counter(
        "ferrocorn_worker_requests_total",
        "Requests served by the worker.",
        &labelled(&per_worker(workers, &|w| Some(w.requests as f64))),
    );
    for (name, help, values) in &worker_gauges(workers) {
        out.gauge(name, help, &labelled(values));
    }
    out.counter(
        "ferrocorn_worker_cpu_seconds_total",
        "CPU time (user + system) of the worker.",
        &labelled(&per_worker(workers, &|w| w.cpu_seconds)),
    );
}

/// One series per worker that has the value `f` picks.
fn per_worker(workers: &[WorkerReport], f: &dyn Fn(&WorkerReport) -> Option<f64>) -> Labelled {
    workers
        .iter()
        .filter_map(|w| f(w).map(|v| (format!("pid=\"{}\"", w.pid), v)))
        .collect()
}

/// The per-worker gauge families: name, help and series.
fn worker_gauges(workers: &[WorkerReport]) -> [(&'static str, &'static str, Labelled); 9] {
    [
        (
            "ferrocorn_worker_busy",
            "1 while any thread of the worker serves a request.",
            per_worker(workers, &|w| Some(f64::from(u8::from(w.state == "busy")))),
        ),
        (
            "ferrocorn_worker_threads",
            "The worker's app threads.",
            per_worker(workers, &|w| Some(w.threads as f64)),
        ),
        (
            "ferrocorn_worker_busy_threads",
            "The worker's app threads serving a request.",
            per_worker(workers, &|w| Some(w.busy_threads as f64)),
        ),
        (
            "ferrocorn_worker_waiting_requests",
            "Request heads queued in the worker for a free thread.",
            per_worker(workers, &|w| Some(w.waiting_requests as f64)),
        ),
        (
            "ferrocorn_worker_current_request_seconds",
            "How long the worker's longest-running current request has run.",
            per_worker(workers, &|w| w.current_request.as_ref().map(|c| c.seconds)),
        ),
        (
            "ferrocorn_worker_last_request_seconds",
            "Duration of the worker's last request.",
            per_worker(workers, &|w| Some(w.last_request_seconds)),
        ),
        (
            "ferrocorn_worker_uss_bytes",
            "Worker unique set size.",
            per_worker(workers, &|w| w.uss_bytes.map(|v| v as f64)),
        ),
        (
            "ferrocorn_worker_pss_bytes",
            "Worker proportional set size.",
            per_worker(workers, &|w| w.pss_bytes.map(|v| v as f64)),
        ),
        (
            "ferrocorn_worker_rss_bytes",
            "Worker resident set size.",
            per_worker(workers, &|w| w.rss_bytes.map(|v| v as f64)),
        ),
    ]
}

fn listener_metrics(out: &mut Metrics, listeners: &[ListenerReport]) {
    let per = |f: &dyn Fn(&ListenerReport) -> Option<u32>| -> Vec<(String, f64)> {
        listeners
            .iter()
            .filter_map(|l| {
                f(l).map(|v| (format!("listener=\"{}\"", escape(&l.address)), f64::from(v)))
            })
            .collect()
    };
    out.gauge(
        "ferrocorn_listener_accept_queue",
        "Connections waiting to be accepted.",
        &labelled(&per(&|l| l.accept_queue)),
    );
    out.gauge(
        "ferrocorn_listener_accept_queue_limit",
        "The listener's backlog.",
        &labelled(&per(&|l| l.accept_queue_limit)),
    );
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, values: &[(&str, f64)]) {
        self.family(name, help, "gauge", values);
    }

    fn counter(&mut self, name: &str, help: &str, values: &[(&str, f64)]) {
        self.family(name, help, "counter", values);
    }

    /// One metric family; `values` pairs the labels inside `{}` (or "" for none) with a value.
    fn family(&mut self, name: &str, help: &str, kind: &str, values: &[(&str, f64)]) {
        use std::fmt::Write as _;
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in values {
            let _ = match *labels {
                "" => writeln!(self.text, "{name} {value}"),
                labels => writeln!(self.text, "{name}{{{labels}}} {value}"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocorn_arbiter::SlotSnapshot;

    fn lane(busy_secs: Option<u64>, path: &str) -> LaneSnapshot {
        LaneSnapshot {
            busy_for: busy_secs.map(Duration::from_secs),
            method: "GET".into(),
            path: path.into(),
            started: 1,
        }
    }

    /// A worker of four threads, two of them busy, three heads waiting.
    fn threaded_worker(pid: i32) -> WorkerStatus {
        let lanes = vec![
            lane(None, "/done"),
            lane(Some(1), "/short"),
            lane(None, ""),
            lane(Some(7), "/long"),
        ];
        WorkerStatus {
            pid,
            age: 1,
            uptime: Duration::from_secs(60),
            retiring: false,
            predecessor_exit: None,
            slot: SlotSnapshot {
                state: SlotState::Busy,
                silence: Duration::ZERO,
                served: 5,
                busy_for: Some(Duration::from_secs(7)),
                method: "GET".into(),
                path: "/long".into(),
                last_duration: Duration::from_millis(20),
                statuses: [0, 5, 0, 0, 0],
                lanes,
                waiting: 3,
            },
        }
    }

    #[test]
    fn threads_busy_of_total_and_waiting_heads_are_reported_per_worker_and_in_total() {
        // Pids no process has: their memory and CPU read as unknown.
        let status = ArbiterStatus {
            master_pid: std::process::id() as i32,
            target: 2,
            workers: vec![threaded_worker(i32::MAX - 1), threaded_worker(i32::MAX - 2)],
            exited_served: 0,
            exited_statuses: [0; 5],
        };
        let report = build_report(&status, &ExitCounts::default(), Duration::ZERO, &[]);
        let w = &report.workers[0];
        assert_eq!((w.threads, w.busy_threads, w.waiting_requests), (4, 2, 3));
        assert_eq!(w.state, "busy");
        assert_eq!(w.current_request.as_ref().unwrap().path, "/long");
        let current: Vec<(usize, &str)> = w
            .current_requests
            .iter()
            .map(|r| (r.thread, r.path.as_str()))
            .collect();
        assert_eq!(current, [(1, "/short"), (3, "/long")]);
        let t = &report.totals;
        assert_eq!((t.threads, t.busy_threads, t.waiting_requests), (8, 4, 6));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["workers"][0]["current_requests"][1]["thread"], 3);
        assert_eq!(json["totals"]["busy_threads"], 4);
        let text = metrics(&report);
        for line in [
            "ferrocorn_threads 8",
            "ferrocorn_busy_threads 4",
            "ferrocorn_waiting_requests 6",
            &format!(
                "ferrocorn_worker_busy_threads{{pid=\"{}\"}} 2",
                i32::MAX - 1
            ),
            &format!("ferrocorn_worker_threads{{pid=\"{}\"}} 4", i32::MAX - 2),
            &format!(
                "ferrocorn_worker_waiting_requests{{pid=\"{}\"}} 3",
                i32::MAX - 1
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
