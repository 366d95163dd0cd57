//! `--daemon`: detach from the terminal as gunicorn does, before the pid file is written and the
//! sockets are bound, so the pid file holds the daemon's pid.

use nix::sys::stat::{umask, Mode};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, setsid, ForkResult};

use crate::error::{Context, Result};

/// Fork twice (the first child leads a new session, the second can never get a terminal back),
/// leaving only the grandchild to return; then std streams read and write `/dev/null` (a
/// `--log-file` takes fd 2 over later). The process that was started exits 0 at once.
pub(crate) fn daemonize() -> Result<()> {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        // As gunicorn: systemd (Type=notify) expects its main process to stay.
        log::warn!("--daemon under systemd: use Type=notify without --daemon instead");
    }
    leave_parent()?;
    setsid().context("setsid")?;
    leave_parent()?;
    // gunicorn's umask for the daemon (pid and log files are created after this).
    umask(Mode::from_bits_truncate(0o022));
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("cannot open /dev/null")?;
    dup2_stdin(&null)
        .and_then(|()| dup2_stdout(&null))
        .and_then(|()| dup2_stderr(&null))
        .context("cannot point std streams at /dev/null")?;
    Ok(())
}

/// Fork; the parent exits at once and the child goes on.
fn leave_parent() -> Result<()> {
    // SAFETY: the master is single-threaded here (before any worker or thread), so the child may
    // run any code.
    match unsafe { fork() }.context("cannot fork to daemonize")? {
        // Without running destructors or atexit handlers: the child owns everything now.
        ForkResult::Parent { .. } => exit_now(),
        ForkResult::Child => Ok(()),
    }
}

fn exit_now() -> ! {
    // SAFETY: _exit ends the process at once and is always safe to call.
    unsafe { nix::libc::_exit(0) }
}
