//! Per-process memory from `/proc/PID/smaps_rollup`, and sums over a process tree.

use std::collections::HashMap;
use std::io;
use std::ops::{Add, AddAssign};
use std::path::PathBuf;

use crate::Error;

/// Memory of one process (or a sum over several), in bytes.
///
/// For pre-forked workers, `uss` is what one more worker costs: its private pages. `pss` splits
/// shared (copy-on-write) pages between the processes sharing them, so PSS summed over the master
/// and all workers is the memory the whole server really uses. `rss` counts shared pages in full
/// in every process and overstates a pre-fork server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size.
    pub rss: u64,
    /// Proportional set size.
    pub pss: u64,
    /// Unique set size: `Private_Clean + Private_Dirty`.
    pub uss: u64,
    /// Swapped-out anonymous memory.
    pub swap: u64,
}

impl Add for ProcessMemory {
    type Output = ProcessMemory;
    fn add(self, o: ProcessMemory) -> ProcessMemory {
        ProcessMemory {
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
            uss: self.uss + o.uss,
            swap: self.swap + o.swap,
        }
    }
}

impl AddAssign for ProcessMemory {
    fn add_assign(&mut self, o: ProcessMemory) {
        *self = *self + o;
    }
}

impl std::iter::Sum for ProcessMemory {
    fn sum<I: Iterator<Item = ProcessMemory>>(iter: I) -> ProcessMemory {
        iter.fold(ProcessMemory::default(), Add::add)
    }
}

/// Parse `/proc/PID/smaps_rollup` (or a whole `/proc/PID/smaps`: every mapping is summed).
/// An empty text (a zombie or kernel thread has no mappings) is all zeros.
pub fn parse_smaps_rollup(text: &str) -> Result<ProcessMemory, Error> {
    let (mut rss, mut pss, mut clean, mut dirty, mut swap) = (None, None, None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "Rss" => &mut rss,
            "Pss" => &mut pss,
            "Private_Clean" => &mut clean,
            "Private_Dirty" => &mut dirty,
            "Swap" => &mut swap,
            _ => continue,
        };
        let kb = value
            .trim()
            .strip_suffix("kB")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::parse("smaps_rollup", format!("bad value in line {line:?}")))?;
        *slot = Some(slot.unwrap_or(0) + kb * 1024);
    }
    match (rss, pss, clean, dirty) {
        (None, None, None, None) if text.lines().all(|l| !l.contains(':')) => {
            Ok(ProcessMemory::default())
        }
        (Some(rss), Some(pss), Some(clean), Some(dirty)) => Ok(ProcessMemory {
            rss,
            pss,
            uss: clean + dirty,
            swap: swap.unwrap_or(0),
        }),
        _ => Err(Error::parse(
            "smaps_rollup",
            "missing Rss, Pss, Private_Clean or Private_Dirty",
        )),
    }
}

/// RSS, PSS, USS and swap of one process, from `/proc/PID/smaps_rollup` (`smaps` on kernels
/// older than 4.14). Reading another user's process needs the right to ptrace it.
pub fn process_memory(pid: i32) -> Result<ProcessMemory, Error> {
    let rollup = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    let (path, text) = match std::fs::read_to_string(&rollup) {
        Ok(t) => (rollup, t),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                && PathBuf::from(format!("/proc/{pid}")).exists() =>
        {
            let smaps = PathBuf::from(format!("/proc/{pid}/smaps"));
            let t = std::fs::read_to_string(&smaps).map_err(|cause| Error::Read {
                path: smaps.clone(),
                cause,
            })?;
            (smaps, t)
        }
        Err(cause) => {
            return Err(Error::Read {
                path: rollup,
                cause,
            })
        }
    };
    parse_smaps_rollup(&text).map_err(|e| e.in_file(&path))
}

/// The parent pid from the text of `/proc/PID/stat`. The command name may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_stat_ppid(text: &str) -> Result<i32, Error> {
    let ppid = *stat_fields(text)?
        .get(1)
        .ok_or_else(|| Error::parse("stat", "too few fields"))?;
    ppid.parse()
        .map_err(|_| Error::parse("stat", format!("bad ppid {ppid:?}")))
}

/// The fields after the command name in the text of `/proc/PID/stat` (the name may hold spaces
/// and parentheses, so they are counted after its last `)`): state, ppid, ...
fn stat_fields(text: &str) -> Result<Vec<&str>, Error> {
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| Error::parse("stat", "no ')'"))?;
    Ok(after.split_whitespace().collect())
}

/// User plus system CPU time, in clock ticks, from the text of `/proc/PID/stat`.
pub fn parse_stat_cpu_ticks(text: &str) -> Result<u64, Error> {
    let fields = stat_fields(text)?;
    // utime and stime are fields 14 and 15 of stat(5); the name was field 2.
    let tick = |i: usize| -> Result<u64, Error> {
        let f = fields
            .get(i)
            .ok_or_else(|| Error::parse("stat", "too few fields"))?;
        f.parse()
            .map_err(|_| Error::parse("stat", format!("bad CPU time {f:?}")))
    };
    Ok(tick(11)? + tick(12)?)
}

/// CPU seconds (user + system) a process has used so far.
pub fn process_cpu_seconds(pid: i32) -> Result<f64, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = std::fs::read_to_string(&path).map_err(|cause| Error::Read {
        path: path.clone(),
        cause,
    })?;
    let ticks = parse_stat_cpu_ticks(&text).map_err(|e| e.in_file(&path))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// `/proc/PID/schedstat`: nanoseconds on a CPU, nanoseconds waiting in the run queue (runnable
/// but no CPU free), and timeslices. Returns the first two in seconds.
pub fn parse_schedstat(text: &str) -> Result<(f64, f64), Error> {
    let mut fields = text.split_whitespace().map(|f| {
        f.parse::<u64>()
            .map_err(|_| Error::parse("schedstat", format!("bad number {f:?}")))
    });
    let (Some(on_cpu), Some(waiting)) = (fields.next(), fields.next()) else {
        return Err(Error::parse("schedstat", "fewer than 2 fields"));
    };
    Ok((on_cpu? as f64 / 1e9, waiting? as f64 / 1e9))
}

/// Seconds a process has spent on a CPU and waiting for one, summed over its threads
/// (`/proc/PID/task/TID/schedstat`: the process's own file counts its main thread only).
pub fn process_schedstat(pid: i32) -> Result<(f64, f64), Error> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let dir = std::fs::read_dir(&tasks).map_err(|cause| Error::Read {
        path: tasks.clone(),
        cause,
    })?;
    let (mut on_cpu, mut waiting) = (0.0, 0.0);
    for task in dir.flatten() {
        let path = task.path().join("schedstat");
        // A thread that ended since the listing took its counts with it.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let (cpu, wait) = parse_schedstat(&text).map_err(|e| e.in_file(&path))?;
        on_cpu += cpu;
        waiting += wait;
    }
    Ok((on_cpu, waiting))
}

/// Every process's children, from the ppid in each `/proc/PID/stat`.
fn children_by_parent() -> Result<HashMap<i32, Vec<i32>>, Error> {
    let dir = std::fs::read_dir("/proc").map_err(|cause| Error::Read {
        path: "/proc".into(),
        cause,
    })?;
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        children
            .entry(parse_stat_ppid(&stat)?)
            .or_default()
            .push(child);
    }
    Ok(children)
}

/// The direct children of `pid` (a master's workers), in no particular order.
pub fn child_pids(pid: i32) -> Result<Vec<i32>, Error> {
    Ok(children_by_parent()?.remove(&pid).unwrap_or_default())
}

/// `pid` and all its descendants, parents before children. Processes that exit during the scan
/// are left out.
pub fn process_tree(pid: i32) -> Result<Vec<i32>, Error> {
    let children = children_by_parent()?;
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids.iter().copied());
        }
        i += 1;
    }
    Ok(tree)
}

/// Memory of a process tree: each member and the sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeMemory {
    /// The sum over the tree.
    pub total: ProcessMemory,
    /// (pid, memory), the root first.
    pub processes: Vec<(i32, ProcessMemory)>,
}

/// Sum [`process_memory`] over `pid` and its descendants (e.g. the master and its workers).
/// The sum of PSS is the server's real footprint; the sum of RSS counts shared pages many times.
pub fn tree_memory(pid: i32) -> Result<TreeMemory, Error> {
    let mut out = TreeMemory::default();
    for p in process_tree(pid)? {
        match process_memory(p) {
            Ok(m) => {
                out.total += m;
                out.processes.push((p, m));
            }
            // A descendant that exited since the scan (gone: ENOENT; exiting: ESRCH).
            Err(Error::Read { ref cause, .. })
                if p != pid
                    && (cause.kind() == io::ErrorKind::NotFound
                        || cause.raw_os_error() == Some(libc::ESRCH)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
