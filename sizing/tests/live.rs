//! The real /proc and cgroup files of this machine, and real processes.

use std::io::Write;
use std::process::{Command, Stdio};

mod common;

use common::{me, touched_buffer, MIB};
use ferrocorn_sizing::*;

/// A `kB` field of `/proc/PID/status`, in bytes.
fn status_field(pid: i32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name}"));
    line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn own_memory_is_consistent_and_sees_allocations() {
    let before = process_memory(me()).unwrap();
    assert!(before.rss > 0);
    assert!(
        before.uss <= before.pss && before.pss <= before.rss,
        "{before:?}"
    );
    // RSS agrees with another kernel view of the same number (give or take what the test
    // harness allocates between the two reads).
    let vm_rss = status_field(me(), "VmRSS:");
    assert!(
        before.rss.abs_diff(vm_rss) < 8 * MIB,
        "smaps_rollup {} vs VmRSS {vm_rss}",
        before.rss
    );

    let buf = touched_buffer();
    let after = process_memory(me()).unwrap();
    assert!(
        after.uss >= before.uss + 60 * MIB,
        "64 MiB written, USS {} -> {}",
        before.uss,
        after.uss
    );
    assert!(after.pss >= before.pss + 60 * MIB);
    drop(buf);
}

#[test]
fn process_tree_includes_children_and_sums_them() {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("read line")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let cpid = child.id() as i32;
    let tree = process_tree(me()).unwrap();
    assert_eq!(tree[0], me());
    assert!(tree.contains(&cpid), "{tree:?} lacks {cpid}");
    let tm = tree_memory(me()).unwrap();
    assert_eq!(tm.processes[0].0, me());
    let child_mem = tm
        .processes
        .iter()
        .find(|(p, _)| *p == cpid)
        .expect("child measured")
        .1;
    assert!(child_mem.rss > 0);
    let sum: ProcessMemory = tm.processes.iter().map(|(_, m)| *m).sum();
    assert_eq!(tm.total, sum);
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());

    // A process with no children is a tree of one.
    assert_eq!(process_tree(cpid).map(|t| t.len()).unwrap_or(1), 1);
}

#[test]
fn missing_process_is_a_read_error() {
    // pid_max is at most 2^22, so this pid cannot exist.
    let err = process_memory(1 << 23).unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("/proc/{}/smaps_rollup", 1 << 23)),
        "{err}"
    );
}

/// CPUs in `Cpus_allowed_list` of /proc/self/status (e.g. `0-3,8`): the kernel's own rendering
/// of the affinity mask.
fn cpus_allowed() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[test]
fn cpu_budget_of_this_machine() {
    let b = cpu_budget().unwrap();
    assert_eq!(b.affinity, Some(cpus_allowed()));
    assert!(b.cpus > 0.0 && b.cpus <= cpus_allowed() as f64, "{b:?}");
    match b.quota {
        Some(q) if q < cpus_allowed() as f64 => assert_eq!(b.cpus, q),
        _ => {
            assert_eq!(b.cpus, cpus_allowed() as f64);
            assert_eq!(b.source, CpuSource::Affinity);
            // std agrees when no quota is in the way.
            assert_eq!(
                b.cores(),
                std::thread::available_parallelism().unwrap().get()
            );
        }
    }
}

#[test]
fn memory_budget_of_this_machine() {
    let b = memory_budget().unwrap();
    // MemTotal agrees with sysinfo(2).
    // SAFETY: sysinfo fills the zeroed struct we pass.
    let total = unsafe {
        let mut si: libc::sysinfo = std::mem::zeroed();
        assert_eq!(libc::sysinfo(&mut si), 0);
        si.totalram as u64 * si.mem_unit as u64
    };
    assert_eq!(b.mem_total, total);
    assert!(b.limit <= b.mem_total);
    assert!(b.mem_available.unwrap() <= b.mem_total);
    assert_eq!(b.cgroup_file.is_some(), b.limit < b.mem_total);
    if let Some(file) = &b.cgroup_file {
        assert!(file.exists());
    }
}

#[test]
fn cgroups_of_this_process_are_found() {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let cg = Cgroups::discover().unwrap();
    let listed = parse_proc_cgroup(&cgroup).unwrap();
    let has_v1_memory = listed
        .iter()
        .any(|e| e.controllers.iter().any(|c| c == "memory"));
    let mounted_v1_memory =
        parse_mountinfo_cgroups(&std::fs::read_to_string("/proc/self/mountinfo").unwrap())
            .unwrap()
            .iter()
            .any(|m| m.controllers.iter().any(|c| c == "memory"));
    assert_eq!(cg.v1_memory.is_some(), has_v1_memory && mounted_v1_memory);
    for dir in [&cg.v2, &cg.v1_cpu, &cg.v1_memory].into_iter().flatten() {
        assert!(dir.dir.is_dir(), "{dir:?}");
        assert!(dir.dir.starts_with(&dir.mount_point));
    }
    // Reading the limits of the real files works (whatever they are).
    cg.cpu_limit().unwrap();
    cg.memory_limit().unwrap();
}

#[test]
fn recommendation_for_this_machine_explains_itself() {
    let cpu = cpu_budget().unwrap();
    let memory = memory_budget().unwrap();
    let me = process_memory(me()).unwrap();
    let r = recommend(&cpu, &memory, &me, Some(&me));
    assert!(r.workers >= 1 && r.workers <= r.cpu_workers);
    assert_eq!(r.cpu_workers, 2 * cpu.cores() + 1);
    assert!(
        r.reason.starts_with(&format!("{} worker", r.workers)),
        "{}",
        r.reason
    );
    eprintln!("{}", r.reason);
}

#[test]
fn recommend_now_measures_a_real_worker() {
    let mut worker = Command::new("sh")
        .arg("-c")
        .arg("read line")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let r = recommend_now(me(), Some(worker.id() as i32)).unwrap();
    assert!(
        r.memory_workers.is_some(),
        "a measured worker gives a memory cap: {r:?}"
    );
    assert!(r.reason.contains("USS per worker"), "{}", r.reason);
    let unmeasured = recommend_now(me(), None).unwrap();
    assert_eq!(unmeasured.memory_workers, None);
    worker.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(worker.wait().unwrap().success());
    // The worker is gone now: measuring it is an error, not a guess.
    assert!(recommend_now(me(), Some(worker.id() as i32)).is_err());
}

#[test]
fn live_cpu_seconds_and_children() {
    let me = std::process::id() as i32;
    assert!(process_cpu_seconds(me).unwrap() >= 0.0);
    let (on_cpu, _) = process_schedstat(me).unwrap();
    assert!(on_cpu > 0.0, "this test has run on a CPU");
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let kids = child_pids(me).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(kids.contains(&(child.id() as i32)), "{kids:?}");
}
