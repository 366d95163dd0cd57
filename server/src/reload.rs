//! `--reload`: a small child of the master watches the files the workers' app imported (and
//! `--reload-extra-file`) and sends the master SIGHUP when one changes.
//!
//! The watcher (inotify through `notify`) runs threads, so it lives in its own process, forked
//! before any worker: the master stays single-threaded and free of Python. The workers know what
//! the app imported; after loading it each writes its list of files into a private directory the
//! master made, which the reloader watches too.

use std::collections::BTreeSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, ForkResult, Pid};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::error::{Context, Result};
use crate::privileges::Owner;

/// Editors save in several steps (truncate, write, rename): changes this close together are one.
const SETTLE: Duration = Duration::from_millis(200);

/// The directory the workers write their lists of imported files into (one file per worker pid).
#[derive(Debug, Clone)]
pub(crate) struct FileLists {
    dir: PathBuf,
}

impl FileLists {
    /// A new private directory, owned by the workers' user so they can write into it.
    pub(crate) fn create(owner: &Owner) -> Result<FileLists> {
        let dir = std::env::temp_dir().join(format!("ferrocorn-reload-{}", std::process::id()));
        // A leftover of an earlier master with our pid: ours now.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        owner.chown(&dir)?;
        Ok(FileLists { dir })
    }

    /// In a worker: record the files its app imported.
    pub(crate) fn write(&self, files: &[PathBuf]) {
        let pid = std::process::id();
        let text: String = files
            .iter()
            .filter_map(|f| f.to_str())
            .map(|f| format!("{f}\n"))
            .collect();
        // Written aside then renamed, so the reloader never reads half a list.
        let partial = self.dir.join(format!(".{pid}"));
        let done = self.dir.join(pid.to_string());
        if let Err(e) =
            std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, &done))
        {
            warn!("cannot record the app's files for --reload: {e}");
        }
    }

    /// Every file any live worker listed; lists of workers gone are removed.
    fn read(&self) -> BTreeSet<PathBuf> {
        let mut files = BTreeSet::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return files;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(pid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if kill(Pid::from_raw(pid), None).is_err() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&path) {
                files.extend(text.lines().map(PathBuf::from));
            }
        }
        files
    }

    /// At the master's exit.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fork the reloader: it watches `extra` and what the workers list in `lists`, and sends SIGHUP
/// to this process on a change. It ends with the master.
pub(crate) fn spawn_reloader(lists: &FileLists, extra: &[PathBuf]) -> Result<()> {
    let master = Pid::this();
    // SAFETY: called before any worker is forked or thread started, so the child is a copy of a
    // single-threaded process and may run any code.
    match unsafe { fork() }.context("cannot fork the reloader")? {
        ForkResult::Parent { child } => {
            info!("Reloader watching for changes (pid: {child})");
            Ok(())
        }
        ForkResult::Child => {
            reloader_signals();
            if nix::unistd::getppid() != master {
                std::process::exit(0);
            }
            let code = match watch(lists, extra, master) {
                Ok(()) => 0,
                Err(e) => {
                    error!("Reloader stopped: {e}");
                    1
                }
            };
            std::process::exit(code)
        }
    }
}

/// The reloader inherited the master's signal handlers. Stop signals (and the master's death,
/// through PR_SET_PDEATHSIG) end it; the master's other signals, which a `pkill -HUP ferrocorn`
/// also delivers here, are ignored rather than fatal.
fn reloader_signals() {
    use nix::sys::signal::{signal, SigHandler};
    let ending = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ];
    let ignored = [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGWINCH,
    ];
    let actions = ending
        .map(|sig| (sig, SigHandler::SigDfl))
        .into_iter()
        .chain(ignored.map(|sig| (sig, SigHandler::SigIgn)));
    for (sig, action) in actions {
        // SAFETY: a default or ignore disposition runs no code of ours; the process is
        // single-threaded here.
        let _ = unsafe { signal(sig, action) };
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        warn!("reloader: cannot ask to be stopped with the master: {e}");
    }
}

/// The set of watched files, and the directories watched to see them (an editor's save often
/// replaces the file, which a watch on the file itself would not survive).
struct Watched {
    watcher: RecommendedWatcher,
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl Watched {
    fn add(&mut self, files: impl IntoIterator<Item = PathBuf>) {
        for file in files {
            if let Some(dir) = file.parent() {
                if !self.dirs.contains(dir) {
                    match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                        Ok(()) => {
                            self.dirs.insert(dir.to_path_buf());
                        }
                        Err(e) => warn!("cannot watch {}: {e}", dir.display()),
                    }
                }
            }
            self.files.insert(file);
        }
    }
}

fn watch(lists: &FileLists, extra: &[PathBuf], master: Pid) -> Result<()> {
    let (tx, rx) = channel();
    let watcher = notify::recommended_watcher(tx).context("cannot start the file watcher")?;
    let mut watched = Watched {
        watcher,
        files: BTreeSet::new(),
        dirs: BTreeSet::new(),
    };
    watched
        .watcher
        .watch(&lists.dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", lists.dir.display()))?;
    let extra: Vec<PathBuf> = extra
        .iter()
        .filter_map(|f| std::path::absolute(f).ok())
        .collect();
    watched.add(extra);
    watched.add(lists.read());
    debug!("Reloader: watching {} files", watched.files.len());
    let mut pending = Pending::default();
    loop {
        let Ok(event) = rx.recv() else {
            return Ok(());
        };
        pending.note(event, lists, &watched);
        if pending.is_empty() {
            // Other processes opening files in a watched directory: no news.
            continue;
        }
        // Take in what follows within SETTLE of the first change.
        let deadline = Instant::now() + SETTLE;
        while let Ok(event) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            pending.note(event, lists, &watched);
        }
        let Pending {
            changed,
            lists_changed,
        } = std::mem::take(&mut pending);
        if lists_changed {
            watched.add(lists.read());
            debug!("Reloader: watching {} files", watched.files.len());
        }
        if let Some(path) = changed {
            info!("Worker reloading: {} modified", path.display());
            if kill(master, Signal::SIGHUP).is_err() {
                return Ok(());
            }
        }
    }
}

/// What a burst of events said.
#[derive(Default)]
struct Pending {
    /// The first watched file that changed.
    changed: Option<PathBuf>,
    /// A worker wrote its list of files.
    lists_changed: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.changed.is_none() && !self.lists_changed
    }

    fn note(&mut self, event: notify::Result<Event>, lists: &FileLists, watched: &Watched) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!("file watcher: {e}");
                return;
            }
        };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        for path in event.paths {
            if path.parent() == Some(lists.dir.as_path()) {
                self.lists_changed = true;
            } else if self.changed.is_none() && watched.files.contains(&path) {
                self.changed = Some(path);
            }
        }
    }
}
