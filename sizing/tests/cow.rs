//! Copy-on-write sharing seen through PSS/USS. Alone in its test binary: a concurrent test
//! allocating while we fork would put its pages into the child too.

mod common;

use common::{me, touched_buffer, MIB};
use ferrocorn_sizing::process_memory;

#[test]
fn forked_child_shares_pages_so_pss_splits_and_uss_drops() {
    let buf = touched_buffer();
    let alone = process_memory(me()).unwrap();
    // SAFETY: the child only calls pause(2) (async-signal-safe) until it is killed.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
    let shared = process_memory(me()).unwrap();
    let child = process_memory(pid).unwrap();
    // SAFETY: killing and reaping the child we forked.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    // The 64 MiB are now copy-on-write shared with the child: no longer unique to us, and our
    // proportional share halves.
    assert!(
        shared.uss + 48 * MIB <= alone.uss,
        "USS {} -> {}",
        alone.uss,
        shared.uss
    );
    assert!(
        shared.pss + 24 * MIB <= alone.pss,
        "PSS {} -> {}",
        alone.pss,
        shared.pss
    );
    assert!(
        child.rss >= 60 * MIB,
        "the child maps the buffer too: {child:?}"
    );
    assert!(child.uss < 16 * MIB, "but owns little of it: {child:?}");
    drop(buf);
}
