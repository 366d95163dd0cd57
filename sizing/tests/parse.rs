//! Parsers on real-format samples, limit discovery on a fake cgroup tree, and the heuristic.

use std::path::{Path, PathBuf};

mod common;

use common::{TempDir, MIB};
use ferrocorn_sizing::*;

/// `/proc/self/smaps_rollup` as Linux 6.x writes it.
const SMAPS_ROLLUP: &str = "\
5609bd8a5000-7ffeb495a000 ---p 00000000 00:00 0                          [rollup]
Rss:                1636 kB
Pss:                 424 kB
Pss_Dirty:           112 kB
Pss_Anon:            112 kB
Pss_File:            312 kB
Pss_Shmem:             0 kB
Shared_Clean:       1448 kB
Shared_Dirty:          0 kB
Private_Clean:        76 kB
Private_Dirty:       112 kB
Referenced:         1636 kB
Anonymous:           112 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                 64 kB
SwapPss:              32 kB
Locked:                0 kB
";

/// Two mappings of `/proc/PID/smaps` (kernels before 4.14 have no rollup).
const SMAPS: &str = "\
55d0c1a00000-55d0c1a02000 r--p 00000000 08:01 1234                       /usr/bin/cat
Size:                  8 kB
KernelPageSize:        4 kB
Rss:                   8 kB
Pss:                   4 kB
Shared_Clean:          8 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Swap:                  0 kB
VmFlags: rd mr mw me sd
7ffd1e5e0000-7ffd1e601000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
Pss:                  16 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:        16 kB
Swap:                  4 kB
VmFlags: rd wr mr mw me gd ac
";

#[test]
fn smaps_rollup_sample() {
    let m = parse_smaps_rollup(SMAPS_ROLLUP).unwrap();
    assert_eq!(
        m,
        ProcessMemory {
            rss: 1636 * 1024,
            pss: 424 * 1024,
            uss: (76 + 112) * 1024,
            swap: 64 * 1024
        }
    );
}

#[test]
fn full_smaps_is_summed() {
    let m = parse_smaps_rollup(SMAPS).unwrap();
    assert_eq!(
        m,
        ProcessMemory {
            rss: 24 * 1024,
            pss: 20 * 1024,
            uss: 16 * 1024,
            swap: 4 * 1024
        }
    );
}

#[test]
fn smaps_rollup_of_a_zombie_is_empty() {
    assert_eq!(parse_smaps_rollup("").unwrap(), ProcessMemory::default());
}

#[test]
fn smaps_rollup_errors_name_the_problem() {
    let err = parse_smaps_rollup("Rss: 12 kB\nPss: 4 kB\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing Rss, Pss, Private_Clean or Private_Dirty"),
        "{err}"
    );
    let err = parse_smaps_rollup(&SMAPS_ROLLUP.replace("Pss:                 424 kB", "Pss: lots"))
        .unwrap_err();
    assert!(err.to_string().contains("\"Pss: lots\""), "{err}");
}

#[test]
fn process_memory_adds_up() {
    let a = ProcessMemory {
        rss: 10,
        pss: 6,
        uss: 4,
        swap: 1,
    };
    let b = ProcessMemory {
        rss: 20,
        pss: 12,
        uss: 8,
        swap: 0,
    };
    assert_eq!(
        [a, b].into_iter().sum::<ProcessMemory>(),
        ProcessMemory {
            rss: 30,
            pss: 18,
            uss: 12,
            swap: 1
        }
    );
}

const MEMINFO: &str = "\
MemTotal:       24684096 kB
MemFree:        22090032 kB
MemAvailable:   24002492 kB
Buffers:            9248 kB
Cached:          2061820 kB
SwapCached:            0 kB
HugePages_Total:       0
";

#[test]
fn meminfo_sample() {
    let m = parse_meminfo(MEMINFO).unwrap();
    assert_eq!(
        m,
        MemInfo {
            total: 24684096 * 1024,
            available: Some(24002492 * 1024)
        }
    );
    // Kernels before 3.14 have no MemAvailable.
    let old = parse_meminfo("MemTotal: 1024 kB\nMemFree: 512 kB\n").unwrap();
    assert_eq!(
        old,
        MemInfo {
            total: 1024 * 1024,
            available: None
        }
    );
    assert!(parse_meminfo("MemFree: 512 kB\n")
        .unwrap_err()
        .to_string()
        .contains("no MemTotal"));
    assert!(parse_meminfo("MemTotal: x kB\n")
        .unwrap_err()
        .to_string()
        .contains("\"x\" is not a number"));
}

#[test]
fn cpu_quota_files() {
    assert_eq!(parse_cpu_max("max 100000\n").unwrap(), None);
    assert_eq!(
        parse_cpu_max("150000 100000\n").unwrap(),
        Some((150000, 100000))
    );
    assert_eq!(parse_cpu_max("50000\n").unwrap(), Some((50000, 100000)));
    assert!(parse_cpu_max("\n").is_err());
    assert!(parse_cpu_max("lots 100000")
        .unwrap_err()
        .to_string()
        .contains("\"lots\" is not a number"));
    assert!(parse_cpu_max("1000 0")
        .unwrap_err()
        .to_string()
        .contains("period is 0"));
    assert_eq!(parse_cfs("-1\n", "100000\n").unwrap(), None);
    assert_eq!(
        parse_cfs("200000\n", "100000\n").unwrap(),
        Some((200000, 100000))
    );
    assert!(parse_cfs("2x", "100000").is_err());
}

#[test]
fn memory_limit_files() {
    assert_eq!(parse_memory_max("max\n").unwrap(), None);
    assert_eq!(parse_memory_max("536870912\n").unwrap(), Some(512 * MIB));
    assert_eq!(
        parse_v1_memory_limit("9223372036854771712\n").unwrap(),
        None
    );
    assert_eq!(
        parse_v1_memory_limit("268435456\n").unwrap(),
        Some(256 * MIB)
    );
    assert!(parse_memory_max("512M").is_err());
}

#[test]
fn proc_cgroup_samples() {
    let v2 = parse_proc_cgroup("0::/system.slice/app.service\n").unwrap();
    assert_eq!(
        v2,
        vec![CgroupEntry {
            hierarchy: 0,
            controllers: vec![],
            path: "/system.slice/app.service".into()
        }]
    );
    let hybrid = parse_proc_cgroup(
        "9:name=systemd:/\n4:memory:/process_api/eb2e\n2:cpu,cpuacct:/docker/abc\n0::/\n",
    )
    .unwrap();
    assert_eq!(hybrid.len(), 4);
    assert_eq!(hybrid[1].controllers, vec!["memory"]);
    assert_eq!(hybrid[1].path, "/process_api/eb2e");
    assert_eq!(hybrid[2].controllers, vec!["cpu", "cpuacct"]);
    assert_eq!(hybrid[3].hierarchy, 0);
    let err = parse_proc_cgroup("garbage\n").unwrap_err().to_string();
    assert!(err.contains("malformed line \"garbage\""), "{err}");
}

#[test]
fn mountinfo_samples() {
    let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/my\\040unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
    let m = parse_mountinfo_cgroups(text).unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(
        m[0].mount_point,
        PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
    );
    assert_eq!(m[0].controllers, vec!["cpu", "cpuacct"]);
    assert_eq!(m[1].root, "/docker/abc");
    assert!(m[2].controllers.is_empty());
    assert!(m[3].v2);
    assert_eq!(m[3].mount_point, PathBuf::from("/sys/fs/cgroup/my unified"));
    assert!(parse_mountinfo_cgroups("no separator here\n").is_err());
}

#[test]
fn stat_ppid_survives_odd_command_names() {
    assert_eq!(
        parse_stat_ppid("2173 (cat) R 2167 2167 3241 0 -1").unwrap(),
        2167
    );
    assert_eq!(parse_stat_ppid("42 (a) b (c)) S 7 42 42 0").unwrap(), 7);
    assert!(parse_stat_ppid("42 (cat").is_err());
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), text).unwrap();
}

#[test]
fn v2_limits_take_the_tightest_ancestor() {
    let t = TempDir::new("v2");
    let mount = t.0.join("unified");
    let slice = mount.join("app.slice");
    let service = slice.join("web.service");
    write(&mount, "cgroup.controllers", "cpu memory\n"); // the root has no cpu.max / memory.max
    write(&slice, "cpu.max", "150000 100000\n");
    write(&slice, "memory.max", "max\n");
    write(&slice, "memory.high", "402653184\n");
    write(&service, "cpu.max", "max 100000\n");
    write(&service, "memory.max", "536870912\n");
    write(&service, "memory.high", "max\n");
    let mountinfo = format!(
        "41 31 0:38 / {} rw,relatime - cgroup2 cgroup2 rw\n",
        mount.display()
    );
    let cg = Cgroups::from_proc("0::/app.slice/web.service\n", &mountinfo).unwrap();
    assert_eq!(cg.v2.as_ref().unwrap().dir, service);
    assert_eq!(cg.v1_cpu, None);

    let cpu = cg.cpu_limit().unwrap().unwrap();
    assert_eq!(cpu.value, 1.5);
    assert_eq!(cpu.file, slice.join("cpu.max"));
    let mem = cg.memory_limit().unwrap().unwrap();
    assert_eq!(mem.value, 384 * MIB);
    assert_eq!(mem.file, slice.join("memory.high"));

    // A malformed file is an error naming it.
    write(&service, "cpu.max", "fast\n");
    let err = cg.cpu_limit().unwrap_err().to_string();
    assert!(
        err.contains(&service.join("cpu.max").display().to_string()),
        "{err}"
    );
}

#[test]
fn v1_limits_in_a_container() {
    let t = TempDir::new("v1");
    let cpu = t.0.join("cpu,cpuacct");
    let memory = t.0.join("memory");
    write(&cpu, "cpu.cfs_quota_us", "50000\n");
    write(&cpu, "cpu.cfs_period_us", "100000\n");
    write(&memory, "memory.limit_in_bytes", "268435456\n");
    // Inside a container the mount's root is the container's own cgroup.
    let mountinfo = format!(
        "32 31 0:29 /docker/abc {} rw - cgroup cgroup rw,cpu,cpuacct\n\
         35 31 0:32 /docker/abc {} rw - cgroup cgroup rw,memory\n",
        cpu.display(),
        memory.display()
    );
    let cg = Cgroups::from_proc(
        "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n0::/\n",
        &mountinfo,
    )
    .unwrap();
    assert_eq!(cg.v2, None, "no cgroup2 mount");
    assert_eq!(cg.v1_cpu.as_ref().unwrap().dir, cpu);
    assert_eq!(cg.cpu_limit().unwrap().unwrap().value, 0.5);
    assert_eq!(
        cg.memory_limit().unwrap().unwrap(),
        Limit {
            value: 256 * MIB,
            file: memory.join("memory.limit_in_bytes")
        }
    );

    // No quota: -1, and an "unlimited" memory limit.
    write(&cpu, "cpu.cfs_quota_us", "-1\n");
    write(&memory, "memory.limit_in_bytes", "9223372036854771712\n");
    assert_eq!(cg.cpu_limit().unwrap(), None);
    assert_eq!(cg.memory_limit().unwrap(), None);
}

fn limit<T>(value: T) -> Option<Limit<T>> {
    Some(Limit {
        value,
        file: PathBuf::from("/sys/fs/cgroup/x"),
    })
}

#[test]
fn cpu_budget_takes_the_tighter_of_quota_and_affinity() {
    let b = combine_cpu(Some(4), limit(1.5), 8);
    assert_eq!(
        (b.cpus, b.cores(), b.affinity, b.quota),
        (1.5, 2, Some(4), Some(1.5))
    );
    assert_eq!(b.source, CpuSource::CgroupQuota("/sys/fs/cgroup/x".into()));
    let b = combine_cpu(Some(2), limit(3.0), 8);
    assert_eq!(
        (b.cpus, b.source.clone(), b.quota),
        (2.0, CpuSource::Affinity, Some(3.0))
    );
    let b = combine_cpu(None, None, 6);
    assert_eq!((b.cpus, b.source), (6.0, CpuSource::Online));
    assert_eq!(combine_cpu(Some(1), limit(0.1), 1).cores(), 1);
}

#[test]
fn memory_budget_takes_the_cgroup_limit_below_memtotal() {
    let info = MemInfo {
        total: 4096 * MIB,
        available: Some(3000 * MIB),
    };
    let b = combine_memory(info, limit(512 * MIB));
    assert_eq!((b.limit, b.cgroup_file.is_some()), (512 * MIB, true));
    assert_eq!(b.room(100 * MIB), 412 * MIB);
    let b = combine_memory(info, limit(8192 * MIB));
    assert_eq!((b.limit, &b.cgroup_file), (4096 * MIB, &None));
    // Without a cgroup, what is available now bounds the room.
    assert_eq!(b.room(100 * MIB), 3000 * MIB);
}

fn cpus(n: usize) -> CpuBudget {
    combine_cpu(Some(n), None, n)
}

fn mem(limit_mib: u64) -> MemoryBudget {
    MemoryBudget {
        limit: limit_mib * MIB,
        cgroup_file: None,
        mem_total: limit_mib * MIB,
        mem_available: None,
    }
}

fn rss(mib: u64) -> ProcessMemory {
    ProcessMemory {
        rss: mib * MIB,
        pss: mib * MIB,
        uss: mib * MIB,
        swap: 0,
    }
}

fn uss(mib: u64) -> ProcessMemory {
    ProcessMemory {
        rss: 3 * mib * MIB,
        pss: 2 * mib * MIB,
        uss: mib * MIB,
        swap: 0,
    }
}

#[test]
fn recommend_is_two_cores_plus_one_when_memory_allows() {
    let r = recommend(&cpus(2), &mem(8192), &rss(50), Some(&uss(60)));
    assert_eq!((r.workers, r.cpu_workers), (5, 5));
    // (8192 - 50) * 0.8 / 60 = 108.5
    assert_eq!(r.memory_workers, Some(108));
    assert!(
        r.reason.starts_with("5 workers: 2 x 2 cores + 1 = 5"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("memory fits 108"), "{}", r.reason);
}

#[test]
fn recommend_caps_by_memory_and_says_so() {
    // (512 - 40) * 0.8 / 60 = 6.29
    let r = recommend(&cpus(8), &mem(512), &rss(40), Some(&uss(60)));
    assert_eq!(
        (r.workers, r.cpu_workers, r.memory_workers),
        (6, 17, Some(6))
    );
    assert!(
        r.reason.starts_with("6 workers, capped by memory"),
        "{}",
        r.reason
    );
    for part in [
        "2 x 8 cores + 1 = 17",
        "60 MiB USS per worker",
        "40 MiB RSS",
        "20% headroom",
        "512 MiB (MemTotal)",
    ] {
        assert!(
            r.reason.contains(part),
            "{part:?} missing from {:?}",
            r.reason
        );
    }
    // Less headroom fits more: 472 * 0.9 / 60 = 7.08
    assert_eq!(
        recommend_with_headroom(&cpus(8), &mem(512), &rss(40), Some(&uss(60)), 0.1).workers,
        7
    );
}

#[test]
fn recommend_keeps_one_worker_when_none_fits() {
    let r = recommend(&cpus(4), &mem(256), &rss(200), Some(&uss(300)));
    assert_eq!((r.workers, r.memory_workers), (1, Some(0)));
    assert!(r.reason.contains("memory fits none"), "{}", r.reason);
}

#[test]
fn recommend_without_a_measured_worker_uses_cpu_only() {
    let r = recommend(&cpus(3), &mem(64), &rss(60), None);
    assert_eq!((r.workers, r.memory_workers), (7, None));
    assert!(
        r.reason.contains("worker memory not measured"),
        "{}",
        r.reason
    );
    let quota = combine_cpu(Some(8), limit(1.5), 8);
    let r = recommend(&quota, &mem(64), &rss(60), Some(&ProcessMemory::default()));
    assert_eq!(r.workers, 5, "1.5 CPUs count as 2 cores");
    assert!(
        r.reason
            .contains("1.5 CPUs (cgroup quota in /sys/fs/cgroup/x)"),
        "{}",
        r.reason
    );
}

#[test]
fn human_bytes_reads_well() {
    assert_eq!(human_bytes(512 * MIB), "512 MiB");
    assert_eq!(human_bytes(1536 * MIB), "1.5 GiB");
    assert_eq!(human_bytes(MIB / 2), "0.5 MiB");
}

#[test]
fn cpu_list_samples() {
    assert_eq!(parse_cpu_list("0-3\n").unwrap(), 4);
    assert_eq!(parse_cpu_list("0-3,6,8-9\n").unwrap(), 7);
    assert_eq!(parse_cpu_list("5").unwrap(), 1);
    // A v2 cgroup without the cpuset controller writes an empty line.
    assert_eq!(parse_cpu_list("\n").unwrap(), 0);
    let err = parse_cpu_list("3-1").unwrap_err().to_string();
    assert!(err.contains("cpuset.cpus") && err.contains("3-1"), "{err}");
    assert!(parse_cpu_list("0-x").is_err());
}

#[test]
fn v2_cpuset_effective_takes_the_smallest_set() {
    let t = TempDir::new("v2-cpuset");
    let mount = t.0.join("unified");
    let slice = mount.join("app.slice");
    let service = slice.join("web.service");
    write(&mount, "cpuset.cpus.effective", "0-7\n");
    write(&slice, "cpuset.cpus.effective", "0-3\n");
    write(&service, "cpuset.cpus.effective", "2,3\n");
    let mountinfo = format!(
        "41 31 0:38 / {} rw,relatime - cgroup2 cgroup2 rw\n",
        mount.display()
    );
    let cg = Cgroups::from_proc("0::/app.slice/web.service\n", &mountinfo).unwrap();
    assert_eq!(
        cg.cpuset_cpus().unwrap(),
        Some(Limit {
            value: 2,
            file: service.join("cpuset.cpus.effective")
        })
    );
}

#[test]
fn v1_cpuset_in_a_container() {
    let t = TempDir::new("v1-cpuset");
    let cpuset = t.0.join("cpuset");
    write(&cpuset, "cpuset.cpus", "0-2\n");
    let mountinfo = format!(
        "33 31 0:30 /docker/abc {} rw - cgroup cgroup rw,cpuset\n",
        cpuset.display()
    );
    let cg = Cgroups::from_proc("5:cpuset:/docker/abc\n0::/\n", &mountinfo).unwrap();
    assert_eq!(cg.v1_cpuset.as_ref().unwrap().dir, cpuset);
    assert_eq!(cg.cpuset_cpus().unwrap().unwrap().value, 3);
    // No cpuset controller mounted: no cpuset limit.
    let cg = Cgroups::from_proc("0::/\n", "").unwrap();
    assert_eq!(cg.cpuset_cpus().unwrap(), None);
}

#[test]
fn stat_cpu_ticks_and_schedstat_samples() {
    // /proc/PID/stat of a worker whose name holds spaces and a parenthesis; utime 1234, stime 56.
    let stat = "4242 (ferro corn) w) S 4200 4200 4200 0 -1 4194560 2861 0 0 0 1234 56 0 0 20 0 \
                1 0 1735 24576000 1519 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
    assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 1290);
    assert_eq!(parse_stat_ppid(stat).unwrap(), 4200);
    assert!(parse_stat_cpu_ticks("4242 (x) S 1").is_err());

    let (on_cpu, waiting) = parse_schedstat("1500000000 250000000 42\n").unwrap();
    assert_eq!((on_cpu, waiting), (1.5, 0.25));
    assert!(parse_schedstat("12\n").is_err());
    assert!(parse_schedstat("a b c\n").is_err());
}

#[test]
fn sizes_take_k_m_g_suffixes() {
    assert_eq!(parse_size("600M").unwrap(), 600 * MIB);
    assert_eq!(parse_size("1.5G").unwrap(), 1536 * MIB);
    assert_eq!(parse_size("512k").unwrap(), 512 * 1024);
    assert_eq!(parse_size("2GiB").unwrap(), 2048 * MIB);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    for bad in ["", "M", "600X", "-5M", "0"] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
    let err = parse_size("600X").unwrap_err().to_string();
    assert!(err.contains("600X") && err.contains("K, M or G"), "{err}");
}
