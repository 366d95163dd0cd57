//! Starting a worker: the I/O loop on the calling thread, the app threads, the watchdog.

use std::io;

use ferrocorn_listener::Listener;
use mio::Poll;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

use crate::app_thread::AppThread;
use crate::event::{Inline, IoLoop, WAKER};
use crate::pool::Pool;
use crate::watchdog::Watchdog;
use crate::{Control, Exit, Monitor, ServerAddr, ThreadApp, WorkerConfig};

/// After the loop: how long threads whose request was abandoned get to return before the
/// process exits without them.
const ABANDONED_RETURN: std::time::Duration = std::time::Duration::from_secs(1);

/// Run the I/O loop on this thread until the worker stops. With one app, the loop calls it
/// itself; with more, each gets a thread of its own.
pub(crate) fn serve(
    apps: &mut [ThreadApp],
    listeners: &[Listener],
    config: &WorkerConfig,
    control: &dyn Control,
    monitor: &dyn Monitor,
) -> io::Result<Exit> {
    let poll = Poll::new()?;
    let waker = mio::Waker::new(poll.registry(), WAKER)?;
    let pool = Pool::new(apps.len(), waker);
    let servers: Vec<ServerAddr> = listeners.iter().map(server_addr).collect();
    log::debug!(
        "worker serving {} with {} app thread(s)",
        listeners
            .iter()
            .map(Listener::describe)
            .collect::<Vec<_>>()
            .join(", "),
        apps.len()
    );
    let mut io_loop = IoLoop::new(poll, listeners, config, control, monitor, &pool)?;
    let shared = Shared {
        pool: &pool,
        config,
        monitor,
        control,
        servers: &servers,
    };
    std::thread::scope(|scope| {
        // Process-directed signals are for the I/O thread (the signal handlers' wake fd is
        // its); the threads inherit the mask at creation.
        let old_mask = block_async_signals();
        let started = start_threads(scope, apps, shared, &mut io_loop);
        restore_signal_mask(&old_mask);
        let exit = started.and_then(|()| io_loop.run());
        pool.close();
        // A thread given up on may just be slow: give it a moment to come back.
        pool.wait_for_abandoned(ABANDONED_RETURN);
        pool.finish();
        if pool.any_abandoned() {
            // Its thread is stuck in the app for good, and a process cannot wait for it.
            log::error!("Worker exiting with a request still stuck in the application");
            std::process::exit(0);
        }
        exit
    })
}

/// What every app thread is given.
#[derive(Clone, Copy)]
struct Shared<'r> {
    pool: &'r Pool,
    config: &'r WorkerConfig,
    monitor: &'r dyn Monitor,
    control: &'r dyn Control,
    servers: &'r [ServerAddr],
}

impl<'r> Shared<'r> {
    fn app_thread(self, index: usize, app: &'r mut (dyn crate::App + Send)) -> AppThread<'r> {
        AppThread {
            index,
            app,
            pool: self.pool,
            config: self.config,
            monitor: self.monitor,
            control: self.control,
            servers: self.servers,
        }
    }
}

/// The watchdog, and the app threads (or, with one app, the I/O loop's own app).
fn start_threads<'scope, 'r: 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    apps: &'r mut [ThreadApp],
    shared: Shared<'r>,
    io_loop: &mut IoLoop<'r>,
) -> io::Result<()> {
    let inline = apps.len() == 1;
    let watchdog = Watchdog {
        pool: shared.pool,
        config: shared.config,
        monitor: shared.monitor,
        inline,
    };
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn_scoped(scope, move || watchdog.run())?;
    if inline {
        let mut thread = shared.app_thread(0, &mut *apps[0]);
        thread.start();
        io_loop.set_inline(Inline::new(thread));
        return Ok(());
    }
    for (index, app) in apps.iter_mut().enumerate() {
        let thread = shared.app_thread(index, &mut **app);
        let spawned = std::thread::Builder::new()
            .name(format!("app-{index}"))
            .spawn_scoped(scope, move || thread.run());
        if let Err(e) = spawned {
            shared.pool.close();
            shared.pool.finish();
            return Err(e);
        }
    }
    Ok(())
}

/// The signals a worker has a disposition for (the master's, each handled, defaulted or
/// ignored in a worker by `ferrocorn-signals`), which only its I/O thread should receive.
fn async_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in ferrocorn_signals::MASTER_SIGNALS {
        if let Ok(signal) = Signal::try_from(signal) {
            set.add(signal);
        }
    }
    set
}

fn block_async_signals() -> SigSet {
    let mut old = SigSet::empty();
    if let Err(e) = pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&async_signals()),
        Some(&mut old),
    ) {
        log::warn!("blocking signals for the app threads failed: {e}");
    }
    old
}

fn restore_signal_mask(old: &SigSet) {
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old), None) {
        log::warn!("restoring the signal mask failed: {e}");
    }
}

fn server_addr(l: &Listener) -> ServerAddr {
    let (name, port) = l.server_name_port();
    ServerAddr {
        name,
        port,
        scheme: "http",
    }
}
