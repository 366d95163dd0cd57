//! CPU time a process has used, from `/proc/PID/stat`.

use std::path::PathBuf;

use crate::Error;

/// User and system CPU clock ticks (`utime`, `stime`) from the text of `/proc/PID/stat`.
/// Fields are counted after the command name's last `)` (the name may hold either).
pub fn parse_stat_cpu_ticks(text: &str) -> Result<u64, Error> {
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| Error::parse("stat", "no ')'"))?;
    // After the name: state is field 3, utime 14 and stime 15 (proc(5)).
    let mut fields = after.split_whitespace().skip(11);
    let mut tick = |name: &str| -> Result<u64, Error> {
        let field = fields
            .next()
            .ok_or_else(|| Error::parse("stat", "too few fields"))?;
        field
            .parse::<u64>()
            .map_err(|_| Error::parse("stat", format!("bad {name} {field:?}")))
    };
    Ok(tick("utime")? + tick("stime")?)
}

/// Seconds of CPU (user + system) process `pid` has used.
pub fn process_cpu_seconds(pid: i32) -> Result<f64, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = std::fs::read_to_string(&path).map_err(|cause| Error::Read {
        path: path.clone(),
        cause,
    })?;
    let ticks = parse_stat_cpu_ticks(&text).map_err(|e| e.in_file(&path))?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

fn clock_ticks_per_second() -> i64 {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_counted_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    17 5 0 0 20 0 1 0 123456 12345678 1234 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 22);
        assert!(parse_stat_cpu_ticks("4242 (x) S 1 2").is_err());
    }

    #[test]
    fn this_process_has_used_some_cpu_after_spinning() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let used = process_cpu_seconds(std::process::id() as i32).unwrap();
        assert!(used > 0.0 && x > 0, "{used}");
    }
}
