//! UNIX signals for ferrocorn as typed commands.
//!
//! The arbiter installs [`MasterSignals`] before anything else (so an embedded Python never takes
//! SIGINT) and sleeps on it; each worker, right after fork, replaces those handlers with
//! [`WorkerSignals`].
//!
//! Both use signal-hook's low-level registry with tiny async-signal-safe actions: the master's
//! writes the signal number as one byte into a non-blocking self-pipe (so arrival order is kept
//! and no thread is needed), the worker's flips an atomic state and pokes its own wake pipe.
//!
//! A forked child inherits the master's actions. Each master action remembers the pid that
//! installed it and, when it runs in any other process, never touches the master's pipe: it
//! records the signal in a process-wide bitmask instead, which [`WorkerSignals::install_replacing`]
//! replays. So a TERM that reaches a worker between `fork` and `install_replacing` is neither lost
//! nor mistaken by the arbiter for its own.
#![warn(missing_docs)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libc::c_int;
use signal_hook::low_level;
use signal_hook::SigId;

/// What a signal asks the arbiter to do (gunicorn's meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// SIGHUP: reload configuration, replace workers.
    Reload,
    /// SIGTERM: graceful stop.
    GracefulStop,
    /// SIGINT / SIGQUIT: quick stop.
    QuickStop,
    /// SIGTTIN: one more worker.
    IncrementWorkers,
    /// SIGTTOU: one fewer worker.
    DecrementWorkers,
    /// SIGUSR1: reopen log files.
    ReopenLogs,
    /// SIGUSR2: re-exec the binary (upgrade on the fly).
    Reexec,
    /// SIGWINCH: stop all workers, keep the master (daemonized only).
    StopWorkers,
    /// SIGCHLD: a child changed state; reap.
    ChildExited,
}

/// The signals the master handles, in the order they are installed.
pub const MASTER_SIGNALS: [c_int; 10] = [
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

impl Command {
    /// The command a signal stands for in the master, if any.
    pub fn from_signal(sig: c_int) -> Option<Command> {
        Some(match sig {
            libc::SIGHUP => Command::Reload,
            libc::SIGTERM => Command::GracefulStop,
            libc::SIGINT | libc::SIGQUIT => Command::QuickStop,
            libc::SIGTTIN => Command::IncrementWorkers,
            libc::SIGTTOU => Command::DecrementWorkers,
            libc::SIGUSR1 => Command::ReopenLogs,
            libc::SIGUSR2 => Command::Reexec,
            libc::SIGWINCH => Command::StopWorkers,
            libc::SIGCHLD => Command::ChildExited,
            _ => return None,
        })
    }

    /// The signal that asks for this command (QuickStop: SIGQUIT, as gunicorn sends workers).
    pub fn signal(self) -> c_int {
        match self {
            Command::Reload => libc::SIGHUP,
            Command::GracefulStop => libc::SIGTERM,
            Command::QuickStop => libc::SIGQUIT,
            Command::IncrementWorkers => libc::SIGTTIN,
            Command::DecrementWorkers => libc::SIGTTOU,
            Command::ReopenLogs => libc::SIGUSR1,
            Command::Reexec => libc::SIGUSR2,
            Command::StopWorkers => libc::SIGWINCH,
            Command::ChildExited => libc::SIGCHLD,
        }
    }
}

/// A signal's name as gunicorn logs it: lower case, no `SIG` prefix (`"term"`, `"ttin"`).
pub fn signal_name(sig: c_int) -> &'static str {
    match sig {
        libc::SIGHUP => "hup",
        libc::SIGTERM => "term",
        libc::SIGINT => "int",
        libc::SIGQUIT => "quit",
        libc::SIGTTIN => "ttin",
        libc::SIGTTOU => "ttou",
        libc::SIGUSR1 => "usr1",
        libc::SIGUSR2 => "usr2",
        libc::SIGWINCH => "winch",
        libc::SIGCHLD => "chld",
        libc::SIGKILL => "kill",
        libc::SIGABRT => "abrt",
        _ => "unknown",
    }
}

/// The message names the OS error, so it is not also exposed as `source()` (a chain printer such
/// as anyhow's `{:#}` would repeat it); hence `From` by hand rather than `#[from]`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sigaction or the self-pipe failed.
    #[error("installing signal handlers: {0}")]
    Install(io::Error),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Install(e)
    }
}

/// Byte written by [`MasterSignals::wake`]: wakes `wait` without a command (no signal is 0).
const WAKE_BYTE: u8 = 0;

/// Signals that reached a forked child while it still ran the master's actions (bit = signal).
static EARLY_CHILD_SIGNALS: AtomicU64 = AtomicU64::new(0);

/// A close-on-exec, non-blocking pipe: (read end, write end).
fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` is a valid out-array of two ints, as pipe2 requires.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Write one byte, from a signal handler or not. A full pipe drops the byte: the reader has that
/// many wake-ups pending already (gunicorn caps its own signal queue at 5).
/// (signal-hook's handler saves and restores errno around our actions.)
fn write_byte(fd: RawFd, byte: u8) {
    // SAFETY: write(2) is async-signal-safe; one byte from a live stack variable.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// Read everything currently in a non-blocking pipe.
fn drain(fd: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: reads into a live buffer of the stated length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
            continue;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return out; // 0: cannot happen while we hold the write end; EAGAIN: empty.
    }
}

/// Wait until `fd` is readable or `timeout` passes (EINTR restarts with the time left).
fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        // Round up so a sub-millisecond timeout still sleeps rather than spinning.
        let ms = left.as_nanos().div_ceil(1_000_000).min(c_int::MAX as u128) as c_int;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 && deadline.is_some() {
            return false;
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions and is async-signal-safe.
    unsafe { libc::getpid() }
}

/// Set a signal's disposition to SIG_DFL or SIG_IGN.
fn set_disposition(sig: c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: a zeroed sigaction with SIG_DFL/SIG_IGN and an empty mask is a valid argument.
    let r = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(sig, &act, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make a signal interrupt blocking system calls (EINTR) instead of restarting them.
fn clear_sa_restart(sig: c_int) -> io::Result<()> {
    // SAFETY: reads the current action into a zeroed struct and writes it back with one flag
    // cleared; the handler and mask are kept as signal-hook installed them.
    let r = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut act) != 0 {
            return Err(io::Error::last_os_error());
        }
        act.sa_flags &= !libc::SA_RESTART;
        libc::sigaction(sig, &act, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Register a signal-hook action.
///
/// # Safety
/// `action` must be async-signal-safe (no allocation, no locks).
unsafe fn register(sig: c_int, action: impl Fn() + Send + Sync + 'static) -> io::Result<SigId> {
    // SAFETY: the caller guarantees the action is async-signal-safe.
    unsafe { low_level::register(sig, action) }
}

/// The master's handlers: every signal becomes a queued [`Command`], in arrival order.
#[derive(Debug)]
pub struct MasterSignals {
    ids: Vec<SigId>,
    read: OwnedFd,
    write: Arc<OwnedFd>,
}

/// Wakes a [`MasterSignals::wait`] from another thread.
#[derive(Debug, Clone)]
pub struct MasterWaker {
    write: Arc<OwnedFd>,
}

impl MasterWaker {
    /// Make the master's wait return now (async-signal-safe: one write to the self-pipe).
    pub fn wake(&self) {
        write_byte(self.write.as_raw_fd(), WAKE_BYTE);
    }
}

impl MasterSignals {
    /// Install the master's handlers for every signal it acts on; the first thing a master does.
    pub fn install() -> Result<Self, Error> {
        let (read, write) = nonblocking_pipe()?;
        let write = Arc::new(write);
        let mut this = MasterSignals {
            ids: Vec::with_capacity(MASTER_SIGNALS.len()),
            read,
            write,
        };
        let owner = getpid();
        for sig in MASTER_SIGNALS {
            let fd = this.write.as_raw_fd();
            let action = move || {
                if getpid() == owner {
                    write_byte(fd, sig as u8);
                } else {
                    // A forked child still running our action: keep off the master's pipe.
                    EARLY_CHILD_SIGNALS.fetch_or(1u64 << sig, Ordering::SeqCst);
                }
            };
            // SAFETY: the action only calls getpid, write and an atomic op, all async-signal-safe.
            // On error `this` is dropped, which unregisters what was installed so far.
            this.ids.push(unsafe { register(sig, action) }?);
        }
        log::debug!("master signal handlers installed");
        Ok(this)
    }

    /// Block until a command arrives or `timeout` passes; returns everything queued (maybe empty).
    pub fn wait(&mut self, timeout: Duration) -> Vec<Command> {
        self.wait_signals(timeout)
            .into_iter()
            .filter_map(Command::from_signal)
            .collect()
    }

    /// Like [`wait`](Self::wait), but the signal numbers themselves (one of [`MASTER_SIGNALS`] each),
    /// for callers that tell SIGINT from SIGQUIT, e.g. to log which one arrived.
    pub fn wait_signals(&mut self, timeout: Duration) -> Vec<c_int> {
        let mut bytes = drain(self.read.as_raw_fd());
        if bytes.is_empty() && poll_readable(self.read.as_raw_fd(), timeout) {
            bytes = drain(self.read.as_raw_fd());
        }
        bytes
            .into_iter()
            .map(c_int::from)
            .filter(|sig| Command::from_signal(*sig).is_some())
            .collect()
    }

    /// Everything queued now, without blocking.
    pub fn pending(&mut self) -> Vec<Command> {
        self.wait(Duration::ZERO)
    }

    /// Send a command to ourselves (e.g. tests, or the arbiter waking itself).
    ///
    /// Makes a pending or the next [`wait`](Self::wait) return at once, without a command.
    pub fn wake(&self) {
        write_byte(self.write.as_raw_fd(), WAKE_BYTE);
    }

    /// Queue `command` as if its signal had arrived.
    pub fn send(&self, command: Command) {
        write_byte(self.write.as_raw_fd(), command.signal() as u8);
    }

    /// A handle that can wake `wait` from another thread.
    pub fn waker(&self) -> MasterWaker {
        MasterWaker {
            write: Arc::clone(&self.write),
        }
    }

    /// The queue's read end, readable whenever a command or wake-up is pending (for callers
    /// that poll it beside other descriptors; then call [`pending`](Self::pending)).
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

impl Drop for MasterSignals {
    /// Removes our actions before the pipe closes. signal-hook leaves its handler installed, so
    /// these signals are ignored afterwards unless someone installs new handlers.
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            low_level::unregister(id);
        }
    }
}

/// A worker's handlers, installed in the child after fork, replacing the master's.
#[derive(Debug)]
pub struct WorkerSignals {
    ids: Vec<SigId>,
    shared: Arc<WorkerShared>,
    read: OwnedFd,
    write: OwnedFd,
}

#[derive(Debug)]
struct WorkerShared {
    state: AtomicU8,
    reopen_logs: AtomicBool,
}

/// What the worker should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// No stop asked: serve.
    Running,
    /// SIGTERM: finish the request in hand, then exit.
    Stopping,
    /// SIGINT / SIGQUIT: exit now.
    Exit,
}

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const EXIT: u8 = 2;

impl WorkerShared {
    /// Apply one signal; async-signal-safe (atomics only). States only escalate.
    fn on_signal(&self, sig: c_int) {
        match sig {
            libc::SIGTERM => {
                self.state.fetch_max(STOPPING, Ordering::SeqCst);
            }
            libc::SIGINT | libc::SIGQUIT => {
                self.state.fetch_max(EXIT, Ordering::SeqCst);
            }
            libc::SIGUSR1 => self.reopen_logs.store(true, Ordering::SeqCst),
            _ => {}
        }
    }
}

/// Signals a worker acts on; the rest of [`MASTER_SIGNALS`] get [`WORKER_DEFAULT`] / [`WORKER_IGNORED`].
pub const WORKER_HANDLED: [c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGUSR1];
/// Master-only signals that get their default action back in a worker (gunicorn's workers reset
/// these to SIG_DFL: HUP/USR2 terminate a worker sent them directly, CHLD is ignored by default).
pub const WORKER_DEFAULT: [c_int; 3] = [libc::SIGHUP, libc::SIGUSR2, libc::SIGCHLD];
/// Ignored in a worker: WINCH (as gunicorn), and TTIN/TTOU, whose default would stop the process.
pub const WORKER_IGNORED: [c_int; 3] = [libc::SIGWINCH, libc::SIGTTIN, libc::SIGTTOU];

impl WorkerSignals {
    /// Call in the child right after fork: drops the master's handlers and installs the worker's.
    /// Consumes the inherited `MasterSignals` so its pipe/fds are closed in the child.
    ///
    /// TERM -> [`WorkerState::Stopping`]; INT/QUIT -> [`WorkerState::Exit`] (these two also
    /// interrupt blocking system calls with EINTR so a stuck read notices); USR1 -> reopen logs;
    /// every one of them makes [`wake_fd`](Self::wake_fd) readable. Signals that arrived between
    /// fork and this call are applied now.
    pub fn install_replacing(master: MasterSignals) -> Result<Self, Error> {
        let (read, write) = nonblocking_pipe()?;
        let shared = Arc::new(WorkerShared {
            state: AtomicU8::new(RUNNING),
            reopen_logs: AtomicBool::new(false),
        });
        let mut this = WorkerSignals {
            ids: Vec::with_capacity(WORKER_HANDLED.len()),
            shared,
            read,
            write,
        };
        // Ours first, then drop the master's, so no signal finds neither installed.
        for sig in WORKER_HANDLED {
            let shared = Arc::clone(&this.shared);
            let fd = this.write.as_raw_fd();
            let action = move || {
                shared.on_signal(sig);
                write_byte(fd, 1);
            };
            // SAFETY: the action only does atomic operations and write(2), all async-signal-safe.
            this.ids.push(unsafe { register(sig, action) }?);
        }
        clear_sa_restart(libc::SIGINT)?;
        clear_sa_restart(libc::SIGQUIT)?;
        drop(master);
        for sig in WORKER_DEFAULT {
            set_disposition(sig, libc::SIG_DFL)?;
        }
        for sig in WORKER_IGNORED {
            set_disposition(sig, libc::SIG_IGN)?;
        }
        let early = EARLY_CHILD_SIGNALS.swap(0, Ordering::SeqCst);
        if early != 0 {
            for sig in WORKER_HANDLED
                .into_iter()
                .filter(|s| early & (1u64 << s) != 0)
            {
                this.shared.on_signal(sig);
            }
            write_byte(this.write.as_raw_fd(), 1);
        }
        Ok(this)
    }

    /// What the signals received so far ask the worker to do.
    pub fn state(&self) -> WorkerState {
        match self.shared.state.load(Ordering::SeqCst) {
            RUNNING => WorkerState::Running,
            STOPPING => WorkerState::Stopping,
            _ => WorkerState::Exit,
        }
    }

    /// True once per SIGUSR1 burst: the worker should reopen its log files.
    pub fn take_reopen_logs(&self) -> bool {
        self.shared.reopen_logs.swap(false, Ordering::SeqCst)
    }

    /// A file descriptor that becomes readable when a signal arrives, for `poll` beside listeners.
    pub fn wake_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Drain the wake fd after poll reported it readable.
    pub fn clear_wake(&self) {
        drain(self.read.as_raw_fd());
    }

    /// Block until a signal arrives or `timeout` passes; true if one arrived (does not drain).
    pub fn wait_wake(&self, timeout: Duration) -> bool {
        poll_readable(self.read.as_raw_fd(), timeout)
    }
}

impl Drop for WorkerSignals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            low_level::unregister(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_master_signal_maps_to_a_command_and_back() {
        for sig in MASTER_SIGNALS {
            let cmd =
                Command::from_signal(sig).unwrap_or_else(|| panic!("signal {sig} has no command"));
            assert_eq!(Command::from_signal(cmd.signal()), Some(cmd));
        }
        assert_eq!(Command::from_signal(libc::SIGINT), Some(Command::QuickStop));
        assert_eq!(Command::from_signal(libc::SIGALRM), None);
        assert_eq!(Command::from_signal(WAKE_BYTE as c_int), None);
    }

    #[test]
    fn master_signals_have_gunicorns_names() {
        let names: Vec<&str> = MASTER_SIGNALS.iter().map(|s| signal_name(*s)).collect();
        assert_eq!(
            names,
            ["hup", "term", "int", "quit", "ttin", "ttou", "usr1", "usr2", "winch", "chld"]
        );
    }

    #[test]
    fn worker_signal_sets_cover_the_master_signals_once() {
        let mut all: Vec<c_int> = WORKER_HANDLED
            .iter()
            .chain(&WORKER_DEFAULT)
            .chain(&WORKER_IGNORED)
            .copied()
            .collect();
        all.sort_unstable();
        let mut master = MASTER_SIGNALS.to_vec();
        master.sort_unstable();
        assert_eq!(all, master);
    }
}
