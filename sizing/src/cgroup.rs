//! Finding this process's cgroup directories (v1 and v2) and reading their CPU and memory limits.

use std::path::{Path, PathBuf};

use crate::{parse_u64, read_file, Error};

/// One line of `/proc/PID/cgroup`: `hierarchy-ID:controller-list:cgroup-path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEntry {
    /// The hierarchy ID; 0 for v2.
    pub hierarchy: u32,
    /// Empty for the v2 unified hierarchy.
    pub controllers: Vec<String>,
    /// The process's cgroup, relative to the hierarchy's root.
    pub path: String,
}

/// Parse `/proc/PID/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<CgroupEntry>, Error> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bad = || Error::parse("/proc/self/cgroup", format!("malformed line {line:?}"));
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let hierarchy = id.parse().map_err(|_| bad())?;
            let controllers = ctrl
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Ok(CgroupEntry {
                hierarchy,
                controllers,
                path: path.to_string(),
            })
        })
        .collect()
}

/// A cgroup filesystem from `/proc/PID/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// `cgroup2` (unified) rather than `cgroup` (v1).
    pub v2: bool,
    /// The cgroup path mounted there (`/` on the host, the container's own cgroup inside one).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// v1: the controllers of this hierarchy (from the super options); empty for v2.
    pub controllers: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts listed in `/proc/PID/mountinfo`.
pub fn parse_mountinfo_cgroups(text: &str) -> Result<Vec<CgroupMount>, Error> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || Error::parse("/proc/self/mountinfo", format!("malformed line {line:?}"));
        // Fields: id parent maj:min root mount-point options [optional...] - fstype source super-options
        let (left, right) = line.split_once(" - ").ok_or_else(bad)?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.is_empty() {
            return Err(bad());
        }
        let v2 = match right[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            let known = [
                "cpu", "cpuacct", "memory", "cpuset", "pids", "blkio", "devices", "freezer",
            ];
            right
                .get(2)
                .map(|opts| {
                    opts.split(',')
                        .filter(|o| known.contains(o))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        mounts.push(CgroupMount {
            v2,
            root: unescape_octal(left[3]),
            mount_point: PathBuf::from(unescape_octal(left[4])),
            controllers,
        });
    }
    Ok(mounts)
}

/// A cgroup directory and the mount point above which limits are not ours to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The process's cgroup directory.
    pub dir: PathBuf,
    /// The mount point it is under: limits are read from `dir` up to here, not above.
    pub mount_point: PathBuf,
}

impl CgroupDir {
    fn new(mount: &CgroupMount, path: &str) -> CgroupDir {
        // Inside a container the mount's root is our own cgroup: the path relative to it is "".
        let rel = if mount.root == "/" {
            Some(path)
        } else {
            path.strip_prefix(mount.root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        let dir = match rel {
            Some(rel) => mount.mount_point.join(rel.trim_start_matches('/')),
            None => mount.mount_point.clone(),
        };
        // A path from another cgroup namespace may not exist here: the mount itself is ours.
        let dir = if dir.is_dir() {
            dir
        } else {
            mount.mount_point.clone()
        };
        CgroupDir {
            dir,
            mount_point: mount.mount_point.clone(),
        }
    }

    /// The directory and its ancestors up to the mount point: a parent's limit binds us too.
    pub fn ancestors(&self) -> impl Iterator<Item = &Path> {
        let mount = self.mount_point.clone();
        self.dir
            .ancestors()
            .take_while(move |p| p.starts_with(&mount))
    }
}

/// Where this process's cgroup limits live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroups {
    /// The unified (v2) hierarchy.
    pub v2: Option<CgroupDir>,
    /// The v1 `cpu` controller.
    pub v1_cpu: Option<CgroupDir>,
    /// The v1 `memory` controller.
    pub v1_memory: Option<CgroupDir>,
    /// The v1 `cpuset` controller.
    pub v1_cpuset: Option<CgroupDir>,
}

impl Cgroups {
    /// From the texts of `/proc/self/cgroup` and `/proc/self/mountinfo`.
    pub fn from_proc(cgroup: &str, mountinfo: &str) -> Result<Cgroups, Error> {
        let entries = parse_proc_cgroup(cgroup)?;
        let mounts = parse_mountinfo_cgroups(mountinfo)?;
        let v1 = |controller: &str| {
            let entry = entries
                .iter()
                .find(|e| e.controllers.iter().any(|c| c == controller))?;
            let mount = mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))?;
            Some(CgroupDir::new(mount, &entry.path))
        };
        let v2 = entries
            .iter()
            .find(|e| e.hierarchy == 0 && e.controllers.is_empty())
            .and_then(|e| Some(CgroupDir::new(mounts.iter().find(|m| m.v2)?, &e.path)));
        Ok(Cgroups {
            v2,
            v1_cpu: v1("cpu"),
            v1_memory: v1("memory"),
            v1_cpuset: v1("cpuset"),
        })
    }

    /// This process's cgroups.
    pub fn discover() -> Result<Cgroups, Error> {
        Cgroups::from_proc(
            &read_file("/proc/self/cgroup")?,
            &read_file("/proc/self/mountinfo")?,
        )
    }

    /// The tightest CPU quota on our cgroup path, v2 first, in CPUs (`1.5` = 150 ms per 100 ms).
    pub fn cpu_limit(&self) -> Result<Option<Limit<f64>>, Error> {
        if let Some(l) = tightest(self.v2.as_ref(), "cpu.max", |t, _| {
            Ok(parse_cpu_max(t)?.map(quota_cpus))
        })? {
            return Ok(Some(l));
        }
        tightest(self.v1_cpu.as_ref(), "cpu.cfs_quota_us", |quota, dir| {
            let period = read_file(dir.join("cpu.cfs_period_us"))?;
            Ok(parse_cfs(quota, &period)?.map(quota_cpus))
        })
    }

    /// CPUs in our cpuset: v2 `cpuset.cpus.effective` (what the kernel really grants), else v1
    /// `cpuset.cpus`; the smallest set on the path wins.
    pub fn cpuset_cpus(&self) -> Result<Option<Limit<usize>>, Error> {
        let count = |t: &str, _: &Path| parse_cpu_list(t).map(|n| (n > 0).then_some(n));
        if let Some(l) = tightest(self.v2.as_ref(), "cpuset.cpus.effective", count)? {
            return Ok(Some(l));
        }
        tightest(self.v1_cpuset.as_ref(), "cpuset.cpus", count)
    }

    /// The tightest memory limit on our cgroup path (v2 `memory.max`/`memory.high`, v1
    /// `memory.limit_in_bytes`), in bytes.
    pub fn memory_limit(&self) -> Result<Option<Limit<u64>>, Error> {
        let max = tightest(self.v2.as_ref(), "memory.max", |t, _| parse_memory_max(t))?;
        let high = tightest(self.v2.as_ref(), "memory.high", |t, _| parse_memory_max(t))?;
        let v2 = match (max, high) {
            (Some(m), Some(h)) => Some(if h.value < m.value { h } else { m }),
            (m, h) => m.or(h),
        };
        if v2.is_some() {
            return Ok(v2);
        }
        tightest(self.v1_memory.as_ref(), "memory.limit_in_bytes", |t, _| {
            parse_v1_memory_limit(t)
        })
    }
}

/// A limit and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit<T> {
    /// The limit, in the unit of the method that found it (CPUs, bytes).
    pub value: T,
    /// The file it was read from.
    pub file: PathBuf,
}

/// Read `file` in the cgroup directory and each ancestor; the smallest limit wins.
fn tightest<T: PartialOrd>(
    dir: Option<&CgroupDir>,
    file: &str,
    parse: impl Fn(&str, &Path) -> Result<Option<T>, Error>,
) -> Result<Option<Limit<T>>, Error> {
    let Some(dir) = dir else { return Ok(None) };
    let mut best: Option<Limit<T>> = None;
    for d in dir.ancestors() {
        let path = d.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // Missing in this directory (e.g. the v2 root has no cpu.max): no limit here.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::Read { path, cause: e }),
        };
        if let Some(value) = parse(&text, d).map_err(|e| e.in_file(&path))? {
            if best.as_ref().is_none_or(|b| value < b.value) {
                best = Some(Limit { value, file: path });
            }
        }
    }
    Ok(best)
}

fn quota_cpus((quota, period): (u64, u64)) -> f64 {
    quota as f64 / period as f64
}

/// cgroup v2 `cpu.max`: `max 100000` (no limit) or `QUOTA PERIOD` in microseconds.
pub fn parse_cpu_max(text: &str) -> Result<Option<(u64, u64)>, Error> {
    let mut it = text.split_whitespace();
    let (Some(quota), period) = (it.next(), it.next()) else {
        return Err(Error::parse("cpu.max", "empty"));
    };
    let period = match period {
        Some(p) => parse_u64("cpu.max period", p)?,
        None => 100_000,
    };
    if quota == "max" {
        return Ok(None);
    }
    let quota = parse_u64("cpu.max quota", quota)?;
    if period == 0 {
        return Err(Error::parse("cpu.max", "period is 0"));
    }
    Ok(Some((quota, period)))
}

/// cgroup v1 `cpu.cfs_quota_us` (`-1` = no limit) and `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Result<Option<(u64, u64)>, Error> {
    let quota = quota.trim();
    if quota == "-1" {
        return Ok(None);
    }
    let quota = parse_u64("cpu.cfs_quota_us", quota)?;
    let period = parse_u64("cpu.cfs_period_us", period)?;
    if period == 0 {
        return Err(Error::parse("cpu.cfs_period_us", "period is 0"));
    }
    Ok(Some((quota, period)))
}

/// cgroup v2 `memory.max` / `memory.high`: `max` or bytes.
pub fn parse_memory_max(text: &str) -> Result<Option<u64>, Error> {
    match text.trim() {
        "max" => Ok(None),
        t => parse_u64("memory.max", t).map(Some),
    }
}

/// A kernel CPU list (`cpuset.cpus`, `cpuset.cpus.effective`): `0-3,6,8-9` is 7 CPUs; empty
/// (no CPUs of its own, e.g. a v2 cgroup without the cpuset controller) is 0.
pub fn parse_cpu_list(text: &str) -> Result<usize, Error> {
    let mut count = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || Error::parse("cpuset.cpus", format!("bad CPU range {part:?}"));
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: usize = lo.trim().parse().map_err(|_| bad())?;
        let hi: usize = hi.trim().parse().map_err(|_| bad())?;
        if hi < lo {
            return Err(bad());
        }
        count += hi - lo + 1;
    }
    Ok(count)
}

/// Values this large in v1 `memory.limit_in_bytes` mean "unlimited" (the kernel writes
/// `LONG_MAX` rounded down to a page, e.g. 9223372036854771712).
const V1_UNLIMITED: u64 = 1 << 62;

/// cgroup v1 `memory.limit_in_bytes`.
pub fn parse_v1_memory_limit(text: &str) -> Result<Option<u64>, Error> {
    let v = parse_u64("memory.limit_in_bytes", text)?;
    Ok((v < V1_UNLIMITED).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_in_mountinfo_paths() {
        assert_eq!(unescape_octal(r"/mnt/my\040dir"), "/mnt/my dir");
        assert_eq!(unescape_octal(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_octal(r"/plain\04"), r"/plain\04");
    }
}
