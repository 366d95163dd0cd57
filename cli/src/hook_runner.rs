//! The master-side server hooks (`on_starting`, `when_ready`, `pre_fork`, `child_exit`, ...) run
//! in a small child of the master, since the master has no Python: forked before the listeners
//! are bound, it executes the config file and calls one hook per line the master writes to a
//! pipe. The master never waits for it (a full pipe drops the event, logged), except for
//! `on_starting` (done before the master binds) and `on_exit`, each for a bounded time.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use ferrocorn_server::{MasterEvent, MasterEvents};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde_json::json;

use crate::hooks::Hooks;

/// How long the master waits at exit for the runner to finish `on_exit` (and what came before).
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// How long the master waits for `on_starting` before it binds anyway.
const STARTING_WAIT: Duration = Duration::from_secs(30);

/// The master's end: the runner's pid and the pipe to it.
pub(crate) struct HookRunner {
    hooks: Option<Hooks>,
    virtualenv: Option<std::path::PathBuf>,
    pipe: Option<File>,
    pid: Option<Pid>,
}

impl HookRunner {
    pub(crate) fn new(hooks: Hooks, virtualenv: Option<std::path::PathBuf>) -> Self {
        HookRunner {
            hooks: Some(hooks),
            virtualenv,
            pipe: None,
            pid: None,
        }
    }

    /// Fork the runner; returns the read end of its "on_starting is done" pipe.
    fn spawn(&mut self) -> nix::Result<OwnedFd> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (started_read, started_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let master = nix::unistd::getpid().as_raw();
        // SAFETY: called from the master's only thread (before the reloader, the listeners and
        // any worker), so the child may run anything; it never returns to the caller.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(write);
                drop(started_read);
                let hooks = self.hooks.take().expect("spawned once");
                let child = Child {
                    virtualenv: self.virtualenv.as_deref(),
                    events: read,
                    started: File::from(started_write),
                    master,
                };
                child.run(hooks)
            }
            ForkResult::Parent { child } => {
                drop(read);
                drop(started_write);
                fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
                self.pipe = Some(File::from(write));
                self.pid = Some(child);
                Ok(started_read)
            }
        }
    }

    /// One event line. A line is shorter than PIPE_BUF, so it is written whole or not at all.
    fn send(&mut self, event: serde_json::Value) {
        let Some(pipe) = &mut self.pipe else { return };
        let mut line = event.to_string();
        line.push('\n');
        match pipe.write_all(line.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                log::error!("the hook runner has exited: master-side hooks no longer run");
                self.pipe = None;
            }
            Err(e) => log::warn!(
                "hook runner not keeping up ({e}): {} skipped",
                event["hook"]
            ),
        }
    }
}

impl MasterEvents for HookRunner {
    /// Start the runner and wait (at most [`STARTING_WAIT`]) for it to run `on_starting`, so
    /// that it is done before the listeners are bound, as in gunicorn.
    fn starting(&mut self) {
        let started = match self.spawn() {
            Ok(started) => started,
            Err(e) => {
                log::error!("cannot start the hook runner: {e}; master-side hooks will not run");
                return;
            }
        };
        self.send(json!({"hook": "on_starting"}));
        let mut fds = [PollFd::new(started.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(STARTING_WAIT).unwrap_or(PollTimeout::MAX);
        if !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            log::warn!("on_starting still running after {STARTING_WAIT:?}; starting anyway");
        }
    }

    fn event(&mut self, event: MasterEvent) {
        let line = match event {
            MasterEvent::Ready => json!({"hook": "when_ready"}),
            MasterEvent::Reload => json!({"hook": "on_reload"}),
            MasterEvent::PreFork { age } => json!({"hook": "pre_fork", "age": age}),
            MasterEvent::ChildExit { pid, age } => {
                json!({"hook": "child_exit", "pid": pid, "age": age})
            }
            MasterEvent::WorkersChanged { new, old } => {
                json!({"hook": "nworkers_changed", "new": new, "old": old, "num_workers": new})
            }
            MasterEvent::PreExec => json!({"hook": "pre_exec"}),
        };
        self.send(line);
    }

    /// `on_exit`, then close the pipe and give the runner [`EXIT_WAIT`] to finish.
    fn exiting(&mut self) {
        self.send(json!({"hook": "on_exit"}));
        self.pipe = None;
        let Some(pid) = self.pid.take() else { return };
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(WaitStatus::StillAlive) => {
                    log::warn!("hook runner still busy after {EXIT_WAIT:?}; not waiting longer");
                    return;
                }
                _ => return,
            }
        }
    }

    /// A worker holds no end of the pipe, so the runner sees the end when the master closes it.
    fn forked_child(&mut self) {
        self.pipe = None;
        self.pid = None;
    }
}

/// The runner's side of its pipes.
struct Child<'a> {
    virtualenv: Option<&'a std::path::Path>,
    events: OwnedFd,
    /// Closed once `on_starting` returned (or the runner failed).
    started: File,
    master: i32,
}

impl Child<'_> {
    /// The runner's life: execute the config file, call a hook per line until `on_exit` (or
    /// the master closes the pipe).
    fn run(self, mut hooks: Hooks) -> ! {
        ignore_master_signals();
        let runner = hooks
            .execute(self.virtualenv)
            .and_then(|()| hooks.for_master(self.master));
        let runner = match runner {
            Ok(runner) => runner,
            Err(e) => {
                log::error!("hook runner: {e}");
                std::process::exit(1);
            }
        };
        let mut started = Some(self.started);
        for line in BufReader::new(File::from(self.events)).lines() {
            let Ok(line) = line else { break };
            runner.dispatch(&line);
            // The first line is on_starting: the master may bind now.
            started = None;
            // The last event: processes forked from the master (the reloader) may hold the
            // pipe's write end, so its end is not awaited.
            if line.contains(r#""hook":"on_exit""#) {
                break;
            }
        }
        drop(started);
        ferrocorn_wsgi::before_exit();
        std::process::exit(0);
    }
}

/// The master's handlers write to its signal pipe, which this child shares: signals meant for
/// the master's process group (Ctrl-C) must not reach it from here, nor stop the runner before
/// `on_exit`. The runner ends when the master closes the pipe.
fn ignore_master_signals() {
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGWINCH,
    ] {
        // SAFETY: SIG_IGN installs no handler code; single-threaded child.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    // SAFETY: as above; hooks that run subprocesses need SIGCHLD's default to wait for them.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
}
