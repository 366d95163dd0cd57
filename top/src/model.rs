//! What the screen shows, computed from two samples (rates need a previous one).

use crate::source::Stats;

/// The order of the rows; `s` cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By pid, ascending.
    Pid,
    /// By CPU%, highest first.
    Cpu,
    /// By USS, largest first.
    Uss,
    /// By requests per second, highest first.
    RequestRate,
}

impl Sort {
    /// The order after this one (the `s` key).
    pub fn next(self) -> Sort {
        match self {
            Sort::Pid => Sort::Cpu,
            Sort::Cpu => Sort::Uss,
            Sort::Uss => Sort::RequestRate,
            Sort::RequestRate => Sort::Pid,
        }
    }

    /// The short name shown in the header (`pid`, `cpu%`, `uss`, `req/s`).
    pub fn name(self) -> &'static str {
        match self {
            Sort::Pid => "pid",
            Sort::Cpu => "cpu%",
            Sort::Uss => "uss",
            Sort::RequestRate => "req/s",
        }
    }
}

/// One worker's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The worker's pid.
    pub pid: i32,
    /// `booting`, `idle`, `busy`, or `-` when unknown (read from /proc).
    pub state: String,
    /// Requests per second since the previous sample; `None` on the first one or without stats.
    pub requests_per_second: Option<f64>,
    /// Busy app threads out of the worker's threads.
    pub threads: Option<(usize, usize)>,
    /// Request heads queued in the worker for a free thread.
    pub waiting: Option<u64>,
    /// `GET /path` and how long it has run.
    pub current: Option<(String, f64)>,
    /// Private memory in bytes.
    pub uss: Option<u64>,
    /// Proportional memory (shared pages split between sharers) in bytes.
    pub pss: Option<u64>,
    /// CPU use since the previous sample, in percent of one CPU.
    pub cpu_percent: Option<f64>,
}

/// The whole screen's data.
#[derive(Debug, Clone)]
pub struct Table {
    /// The master's pid (the keys signal it).
    pub master_pid: i32,
    /// The lines above the rows: totals, memory, accept queues, recommendation.
    pub header: Vec<String>,
    /// One per worker, in `sort` order.
    pub rows: Vec<Row>,
    /// The order of `rows`.
    pub sort: Sort,
}

impl Table {
    /// The table for `current`; rates (req/s, CPU%) need the `previous` sample and are `None`
    /// without it.
    pub fn new(previous: Option<&Stats>, current: &Stats, sort: Sort) -> Table {
        let mut rows: Vec<Row> = current
            .workers
            .iter()
            .map(|w| {
                let before = previous.and_then(|p| p.workers.iter().find(|b| b.pid == w.pid));
                let seconds = previous.map(|p| current.at.duration_since(p.at).as_secs_f64());
                let rate = |now: Option<f64>, then: Option<f64>| match (now, then, seconds) {
                    (Some(n), Some(t), Some(s)) if s > 0.0 => Some((n - t).max(0.0) / s),
                    _ => None,
                };
                Row {
                    pid: w.pid,
                    state: if w.state.is_empty() {
                        "-".into()
                    } else {
                        w.state.clone()
                    },
                    requests_per_second: rate(
                        w.requests.map(|r| r as f64),
                        before.and_then(|b| b.requests).map(|r| r as f64),
                    ),
                    threads: w.busy_threads.zip(w.threads),
                    waiting: w.waiting_requests,
                    current: w
                        .current_request
                        .as_ref()
                        .map(|c| (format!("{} {}", c.method, c.path), c.seconds)),
                    uss: w.uss_bytes,
                    pss: w.pss_bytes,
                    cpu_percent: rate(w.cpu_seconds, before.and_then(|b| b.cpu_seconds))
                        .map(|r| r * 100.0),
                }
            })
            .collect();
        sort_rows(&mut rows, sort);
        Table {
            master_pid: current.master.pid,
            header: header(current),
            rows,
            sort,
        }
    }
}

fn sort_rows(rows: &mut [Row], sort: Sort) {
    let desc = |a: Option<f64>, b: Option<f64>| b.unwrap_or(-1.0).total_cmp(&a.unwrap_or(-1.0));
    match sort {
        Sort::Pid => rows.sort_by_key(|r| r.pid),
        Sort::Cpu => rows.sort_by(|a, b| desc(a.cpu_percent, b.cpu_percent)),
        Sort::Uss => rows.sort_by_key(|r| std::cmp::Reverse(r.uss)),
        Sort::RequestRate => {
            rows.sort_by(|a, b| desc(a.requests_per_second, b.requests_per_second))
        }
    }
}

/// Totals, memory against the budget, accept queues, the recommended worker count.
fn header(s: &Stats) -> Vec<String> {
    let target = s
        .master
        .workers_target
        .map_or(String::new(), |t| format!(" (target {t})"));
    let mut lines = vec![format!(
        "master {}  workers {}{target}  {}",
        s.master.pid,
        s.workers.len(),
        busy_summary(s)
    )];
    if let Some(t) = &s.totals {
        let classes: Vec<String> = t
            .responses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        lines.push(format!("requests {}  {}", t.requests, classes.join("  ")));
    }
    if let Some(m) = &s.memory {
        let budget = m
            .budget_bytes
            .map_or("?".to_string(), ferrocorn_sizing::human_bytes);
        lines.push(format!(
            "memory {} PSS of {budget} budget",
            ferrocorn_sizing::human_bytes(m.used_pss_bytes)
        ));
    }
    let queues: Vec<String> = s
        .listeners
        .iter()
        .map(|l| match (l.accept_queue, l.accept_queue_limit) {
            (Some(q), Some(limit)) => format!("{} {q}/{limit}", l.address),
            _ => format!("{} ?", l.address),
        })
        .collect();
    if !queues.is_empty() {
        lines.push(format!("accept queue {}", queues.join("  ")));
    }
    if let Some(r) = &s.recommendation {
        lines.push(format!("recommended workers {}", r.workers));
    }
    if s.totals.is_none() {
        lines.push("from /proc: no state or requests (use --stats for them)".into());
    }
    lines
}

/// `busy 3 of 8 threads  waiting 2`, or busy workers from a server that does not count threads.
fn busy_summary(s: &Stats) -> String {
    let busy_workers = s.workers.iter().filter(|w| w.state == "busy").count();
    let threads: Option<Vec<(usize, usize)>> = s
        .workers
        .iter()
        .map(|w| w.busy_threads.zip(w.threads))
        .collect();
    match threads.filter(|t| !t.is_empty()) {
        Some(threads) => {
            let busy: usize = threads.iter().map(|t| t.0).sum();
            let total: usize = threads.iter().map(|t| t.1).sum();
            let waiting: u64 = s.workers.iter().filter_map(|w| w.waiting_requests).sum();
            format!("busy {busy} of {total} threads  waiting {waiting}")
        }
        None => format!("busy {busy_workers}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::source::Stats;

    fn sample(json: &str) -> Stats {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rates_come_from_two_samples_and_rows_sort_by_the_chosen_column() {
        let before = sample(
            r#"{"master": {"pid": 1}, "workers": [
                {"pid": 10, "state": "idle", "requests": 100, "cpu_seconds": 1.0, "uss_bytes": 5},
                {"pid": 11, "state": "idle", "requests": 0, "cpu_seconds": 1.0, "uss_bytes": 9}]}"#,
        );
        let mut after = sample(
            r#"{"master": {"pid": 1}, "workers": [
                {"pid": 11, "state": "busy", "requests": 1, "cpu_seconds": 1.5, "uss_bytes": 9,
                 "current_request": {"method": "GET", "path": "/x", "seconds": 0.3}},
                {"pid": 10, "state": "idle", "requests": 120, "cpu_seconds": 1.1, "uss_bytes": 5},
                {"pid": 12, "state": "booting"}]}"#,
        );
        after.at = before.at + Duration::from_secs(2);
        let table = Table::new(Some(&before), &after, Sort::Pid);
        let pids: Vec<i32> = table.rows.iter().map(|r| r.pid).collect();
        assert_eq!(pids, [10, 11, 12]);
        let first = &table.rows[0];
        assert_eq!(first.requests_per_second, Some(10.0));
        assert!((first.cpu_percent.unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(table.rows[1].current, Some(("GET /x".into(), 0.3)));
        assert_eq!(
            table.rows[2].requests_per_second, None,
            "new worker: no rate yet"
        );
        let by_cpu = Table::new(Some(&before), &after, Sort::Cpu);
        assert_eq!(by_cpu.rows[0].pid, 11);
        let by_uss = Table::new(Some(&before), &after, Sort::Uss);
        assert_eq!(by_uss.rows[0].pid, 11);
        assert!(Table::new(None, &after, Sort::Pid).rows[0]
            .requests_per_second
            .is_none());
        assert_eq!(
            table.header[0], "master 1  workers 3  busy 1",
            "no thread counts"
        );
    }

    #[test]
    fn threads_busy_of_total_and_waiting_heads_show_per_worker_and_in_the_header() {
        let stats = sample(
            r#"{"master": {"pid": 1, "workers_target": 2}, "workers": [
                {"pid": 10, "state": "busy", "threads": 4, "busy_threads": 3,
                 "waiting_requests": 2},
                {"pid": 11, "state": "idle", "threads": 4, "busy_threads": 0,
                 "waiting_requests": 0}]}"#,
        );
        let table = Table::new(None, &stats, Sort::Pid);
        assert_eq!(
            table.header[0],
            "master 1  workers 2 (target 2)  busy 3 of 8 threads  waiting 2"
        );
        assert_eq!(table.rows[0].threads, Some((3, 4)));
        assert_eq!(table.rows[0].waiting, Some(2));
        assert_eq!(table.rows[1].threads, Some((0, 4)));
    }
}
