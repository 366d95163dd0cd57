//! How many workers fit on this machine: cgroup-aware CPU and memory budgets, per-process memory
//! (RSS/PSS/USS from /proc), and the worker-count recommendation.
//!
//! - [`cpu_budget`]: CPUs we may use: the tightest cgroup quota (v2 `cpu.max`, v1 CFS quota) and
//!   the affinity mask (`sched_getaffinity`, which reflects cpusets), else the online CPU count.
//! - [`memory_budget`]: the tightest cgroup memory limit, else `MemTotal`; plus `MemAvailable`.
//! - [`process_memory`] / [`tree_memory`]: RSS, PSS, USS, swap of a process or a process tree.
//! - [`advisor`]: the measured sweep behind `ferrocorn sizing`: which worker counts to try, where
//!   throughput stops rising, and the recommendation with its reason.
//! - [`recommend`]: gunicorn's `2 * cores + 1`, capped by how many workers fit in memory.
//!
//! The parsers take file contents as `&str`, so they are tested on samples as well as live files.
#![warn(missing_docs)]

pub mod advisor;
mod cgroup;
mod process;
mod recommend;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use cgroup::{
    parse_cfs, parse_cpu_list, parse_cpu_max, parse_memory_max, parse_mountinfo_cgroups,
    parse_proc_cgroup, parse_v1_memory_limit, CgroupDir, CgroupEntry, CgroupMount, Cgroups, Limit,
};
pub use process::{
    child_pids, parse_schedstat, parse_smaps_rollup, parse_stat_cpu_ticks, parse_stat_ppid,
    process_cpu_seconds, process_memory, process_schedstat, process_tree, tree_memory,
    ProcessMemory, TreeMemory,
};
pub use recommend::{
    recommend, recommend_now, recommend_with_headroom, Recommendation, DEFAULT_HEADROOM,
};

/// Why a figure could not be read from `/proc` or `/sys/fs/cgroup`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read. The message names the OS error, so `cause` is not also exposed
    /// as `source()` (a chain printer such as anyhow's `{:#}` would repeat it).
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: io::Error,
    },
    /// A file's contents are not what the kernel writes.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// The file or field.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    fn parse(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Parse {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Name the file a parse error came from.
    fn in_file(self, path: &Path) -> Error {
        match self {
            Error::Parse { what, reason } => Error::Parse {
                what: format!("{} ({what})", path.display()),
                reason,
            },
            other => other,
        }
    }
}

fn read_file(path: impl AsRef<Path>) -> Result<String, Error> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|cause| Error::Read {
        path: path.to_path_buf(),
        cause,
    })
}

fn parse_u64(what: &str, text: &str) -> Result<u64, Error> {
    let t = text.trim();
    t.parse()
        .map_err(|_| Error::parse(what, format!("{t:?} is not a number")))
}

/// Bytes as a short human string (`512 MiB`, `1.5 GiB`), for reasons and logs.
pub fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else if mib >= 10.0 {
        format!("{mib:.0} MiB")
    } else {
        format!("{mib:.1} MiB")
    }
}

/// Where a CPU budget came from.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuSource {
    /// A cgroup CPU quota (the file it was read from).
    CgroupQuota(PathBuf),
    /// The affinity mask / cpuset.
    Affinity,
    /// The number of online CPUs (affinity unavailable).
    Online,
}

/// The CPUs this process may use.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuBudget {
    /// Effective CPUs, possibly fractional under a quota (e.g. `1.5`).
    pub cpus: f64,
    /// CPUs in the affinity mask, if it could be read.
    pub affinity: Option<usize>,
    /// The cgroup quota in CPUs, if any.
    pub quota: Option<f64>,
    /// Which bound set `cpus`.
    pub source: CpuSource,
}

impl CpuBudget {
    /// Whole cores for the `2 * cores + 1` rule: a fractional quota rounds up, at least 1.
    pub fn cores(&self) -> usize {
        (self.cpus.ceil() as usize).max(1)
    }
}

impl fmt::Display for CpuBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            CpuSource::CgroupQuota(file) => {
                write!(f, "{} CPUs (cgroup quota in {})", self.cpus, file.display())
            }
            CpuSource::Affinity => write!(f, "{} CPUs (affinity mask)", self.cpus),
            CpuSource::Online => write!(f, "{} CPUs (online)", self.cpus),
        }
    }
}

/// CPUs in this process's affinity mask.
pub fn affinity_cpus() -> io::Result<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the size of the set we own; the kernel writes at most that much.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_COUNT only reads the set.
    Ok(unsafe { libc::CPU_COUNT(&set) } as usize)
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// Combine an affinity count, a cgroup quota and the online count into a budget.
pub fn combine_cpu(affinity: Option<usize>, quota: Option<Limit<f64>>, online: usize) -> CpuBudget {
    let (cpus, source) = match affinity {
        Some(n) if n > 0 => (n as f64, CpuSource::Affinity),
        _ => (online.max(1) as f64, CpuSource::Online),
    };
    match quota {
        Some(q) if q.value < cpus => CpuBudget {
            cpus: q.value,
            affinity,
            quota: Some(q.value),
            source: CpuSource::CgroupQuota(q.file),
        },
        q => CpuBudget {
            cpus,
            affinity,
            quota: q.map(|q| q.value),
            source,
        },
    }
}

/// The CPUs this process may use: the tighter of its cgroup quota and its affinity mask.
pub fn cpu_budget() -> Result<CpuBudget, Error> {
    let cgroups = Cgroups::discover()?;
    let quota = cgroups.cpu_limit()?;
    // The affinity mask normally reflects the cpuset already; the cpuset file still counts when
    // a process widened its own mask, or the mask cannot be read.
    let cpuset = cgroups.cpuset_cpus()?.map(|l| l.value);
    let allowed = match (affinity_cpus().ok(), cpuset) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    };
    Ok(combine_cpu(allowed, quota, online_cpus()))
}

/// A size as people write it: bytes, or with a `K`, `M` or `G` suffix (KiB, MiB, GiB; `KB`,
/// `MiB`, `g` are read the same), fractions allowed (`1.5G`).
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(Error::parse(
                "size",
                format!("{text:?}: unknown unit {other:?} (use K, M or G)"),
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| Error::parse("size", format!("{text:?} is not a size like 600M")))?;
    let bytes = value * unit as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(Error::parse("size", format!("{text:?} is out of range")));
    }
    Ok(bytes as u64)
}

/// `MemTotal` and `MemAvailable` from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// Absent on kernels before 3.14.
    pub available: Option<u64>,
}

/// Parse `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, Error> {
    let field = |name: &str| -> Result<Option<u64>, Error> {
        let Some(line) = text.lines().find(|l| l.split(':').next() == Some(name)) else {
            return Ok(None);
        };
        let value = line.split_once(':').map(|(_, v)| v.trim()).unwrap_or("");
        let kb = value.strip_suffix("kB").unwrap_or(value);
        Ok(Some(parse_u64(&format!("meminfo {name}"), kb)? * 1024))
    };
    let total = field("MemTotal")?.ok_or_else(|| Error::parse("/proc/meminfo", "no MemTotal"))?;
    Ok(MemInfo {
        total,
        available: field("MemAvailable")?,
    })
}

/// The memory this process may use.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBudget {
    /// The cgroup limit, else `MemTotal`, in bytes.
    pub limit: u64,
    /// The file of the cgroup limit; `None` when `limit` is `MemTotal`.
    pub cgroup_file: Option<PathBuf>,
    /// `MemTotal`, in bytes.
    pub mem_total: u64,
    /// `MemAvailable`: memory the system can give without swapping (others' use subtracted).
    pub mem_available: Option<u64>,
}

impl MemoryBudget {
    /// What new processes can still get: the limit less what `already_used` (e.g. the master's
    /// RSS), and never more than `MemAvailable`.
    pub fn room(&self, already_used: u64) -> u64 {
        let under_limit = self.limit.saturating_sub(already_used);
        self.mem_available
            .map_or(under_limit, |a| a.min(under_limit))
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cgroup_file {
            Some(file) => write!(
                f,
                "{} (cgroup limit in {})",
                human_bytes(self.limit),
                file.display()
            ),
            None => write!(f, "{} (MemTotal)", human_bytes(self.limit)),
        }
    }
}

/// Combine `/proc/meminfo` with a cgroup limit (a limit above `MemTotal` is no limit).
pub fn combine_memory(meminfo: MemInfo, cgroup: Option<Limit<u64>>) -> MemoryBudget {
    let (limit, cgroup_file) = match cgroup {
        Some(l) if l.value < meminfo.total => (l.value, Some(l.file)),
        _ => (meminfo.total, None),
    };
    MemoryBudget {
        limit,
        cgroup_file,
        mem_total: meminfo.total,
        mem_available: meminfo.available,
    }
}

/// The memory this process may use: its tightest cgroup limit, else `MemTotal`.
pub fn memory_budget() -> Result<MemoryBudget, Error> {
    let meminfo = parse_meminfo(&read_file("/proc/meminfo")?)?;
    Ok(combine_memory(
        meminfo,
        Cgroups::discover()?.memory_limit()?,
    ))
}
