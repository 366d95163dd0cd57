//! Process titles, `ferrocorn: master [NAME]` and `ferrocorn: worker [NAME]`, as `ps`, `top` and
//! `htop` show them: the argv area is rewritten as `setproctitle` does, and `PR_SET_NAME` sets the
//! short name `top` shows.
//!
//! The argv strings and the environment strings that follow them share one area of the initial
//! stack, which the kernel reads for `/proc/PID/cmdline`. [`init`] copies both elsewhere first
//! (and points `argv`/`environ` at the copies, so `std::env::args` and `getenv` keep working),
//! so a title may use the whole area. It must run first thing in `main`, before any `setenv` (which
//! may move the `environ` array) and before Python starts.

use std::ffi::{c_char, CStr, CString};
use std::sync::OnceLock;

/// The writable area `(start, argv length, whole length)`, once [`init`] freed it.
static AREA: OnceLock<Option<Area>> = OnceLock::new();

#[derive(Debug, Clone, Copy)]
struct Area {
    start: usize,
    argv_len: usize,
    len: usize,
}

/// Free the argv area for titles (once; later calls do nothing). Without it, [`set`] only sets
/// the short name.
pub fn init() {
    AREA.get_or_init(|| {
        let area = stat_area()?;
        let argc = std::env::args_os().len();
        // SAFETY: called at start-up (see the module comment), before other threads exist, so
        // nothing else reads argv or environ while their pointers are replaced.
        unsafe { relocate(area, argc) }
    });
}

/// Set the title (and the short name, cut to the kernel's 15 bytes).
pub fn set(title: &str) {
    let short: Vec<u8> = title.bytes().filter(|&b| b != 0).take(15).collect();
    if let Ok(name) = CString::new(short) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    if let Some(Some(area)) = AREA.get() {
        write_title(*area, title.as_bytes());
    }
}

/// `arg_start`, `arg_end`, `env_start`, `env_end` from `/proc/self/stat` (fields 48 to 51).
fn stat_area() -> Option<Area> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its `)` start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    let (arg_start, arg_end) = (field(48)?, field(49)?);
    let (env_start, env_end) = (field(50)?, field(51)?);
    // The kernel lets a title run on into the environment area only when it follows at once.
    let end = if env_start == arg_end && env_end > env_start {
        env_end
    } else {
        arg_end
    };
    (arg_end > arg_start).then_some(Area {
        start: arg_start,
        argv_len: arg_end - arg_start,
        len: end - arg_start,
    })
}

extern "C" {
    static mut environ: *mut *mut c_char;
}

/// Copy the argv and environment strings out of `area` and repoint `argv` and `environ` at the
/// copies (leaked: they live as long as the process). `None` when argv is not where expected.
///
/// # Safety
/// No other thread may run, and nothing may hold pointers into the area's strings.
unsafe fn relocate(area: Area, argc: usize) -> Option<Area> {
    let inside = |p: *mut c_char| (area.start..area.start + area.len).contains(&(p as usize));
    // SAFETY: at start-up `environ` is the array the kernel laid out right after argv's NULL
    // terminator; argv is checked to be there (its first string at arg_start, NULL at argc)
    // before anything is written. Every pointer read is then within those two arrays, which are
    // NULL-terminated, and each string is NUL-terminated.
    unsafe {
        let env = environ;
        if env.is_null() {
            return None;
        }
        let argv = env.sub(argc + 1);
        if *argv as usize != area.start || !(*argv.add(argc)).is_null() {
            return None;
        }
        for i in 0..argc {
            *argv.add(i) = copy(*argv.add(i));
        }
        let mut i = 0;
        while !(*env.add(i)).is_null() {
            if inside(*env.add(i)) {
                *env.add(i) = copy(*env.add(i));
            }
            i += 1;
        }
    }
    Some(area)
}

/// A leaked heap copy of a C string.
///
/// # Safety
/// `s` points to a NUL-terminated string.
unsafe fn copy(s: *mut c_char) -> *mut c_char {
    // SAFETY: as the caller promises.
    CString::from(unsafe { CStr::from_ptr(s) }).into_raw()
}

/// Write `title` over the area, NUL-filled after it. When the title is shorter than the old
/// argv, its last byte is made non-NUL: the kernel then reads `/proc/PID/cmdline` up to the
/// title's NUL (as for `setproctitle`), instead of the whole argv length.
fn write_title(area: Area, title: &[u8]) {
    // SAFETY: `init` found this area in /proc/self/stat and moved every string out of it, so
    // nothing else refers to it; it is the process's own writable stack memory, and this
    // process has one thread when titles are set (the master, or a worker just forked).
    let bytes = unsafe { std::slice::from_raw_parts_mut(area.start as *mut u8, area.len) };
    bytes.fill(0);
    let n = title.len().min(area.len - 1);
    bytes[..n].copy_from_slice(&title[..n]);
    if n + 1 < area.argv_len {
        bytes[area.argv_len - 1] = b' ';
    }
}
