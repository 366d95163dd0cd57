//! The listening sockets: inherited from a USR2 parent or systemd, or bound from the settings.

use ferrocorn_listener::{BindSpec, ListenOptions, Listener};
use log::{info, warn};

use crate::error::Result;
use crate::privileges::Owner;
use crate::Settings;

fn listen_options(settings: &Settings) -> ListenOptions {
    ListenOptions {
        backlog: settings.backlog,
        unix_mode: Some(unix_socket_mode(settings.umask)),
        reuse_port: settings.reuse_port,
    }
}

/// Sockets handed over by the master that re-executed us, else by systemd, else the configured
/// ones (default 127.0.0.1:8000, or 0.0.0.0:$PORT).
pub(crate) fn bind(settings: &Settings) -> Result<Vec<Listener>> {
    if let Some(listeners) = crate::reexec::inherited_listeners(&listen_options(settings))? {
        return Ok(listeners);
    }
    let systemd = ferrocorn_listener::systemd_listeners()?;
    if !systemd.is_empty() {
        return Ok(systemd);
    }
    let specs = if settings.binds.is_empty() {
        vec![BindSpec::default_for(
            std::env::var("PORT").ok().as_deref(),
        )?]
    } else {
        settings.binds.clone()
    };
    Ok(ferrocorn_listener::bind_all(
        &specs,
        &listen_options(settings),
    )?)
}

/// gunicorn binds unix sockets under `--umask` (default 0) and nothing else: the socket file is
/// `0o777 & !umask` whatever the process umask, so e.g. nginx as another user can connect.
fn unix_socket_mode(umask: Option<u32>) -> u32 {
    0o777 & !umask.unwrap_or(0)
}

/// Give unix socket files to the workers' user and group (as gunicorn), then say where we listen;
/// `Type=notify` systemd units wait for the READY that follows (gunicorn sends it at this point).
pub(crate) fn announce(listeners: &[Listener], owner: &Owner, threads: usize) -> Result<()> {
    for path in socket_files(listeners) {
        owner.chown(&path)?;
    }
    for listener in listeners {
        info!(
            "Listening at: {} ({})",
            listener.describe(),
            std::process::id()
        );
    }
    // gunicorn's names: its sync worker becomes gthread with more than one thread.
    let class = if threads > 1 { "gthread" } else { "sync" };
    info!("Using worker: {class}");
    if let Err(e) = ferrocorn_listener::sd_notify("READY=1\nSTATUS=ferrocorn arbiter booted") {
        warn!("{e}");
    }
    Ok(())
}

/// The unix socket files among `listeners` (ours to remove when we stop).
pub(crate) fn socket_files(listeners: &[Listener]) -> Vec<std::path::PathBuf> {
    listeners
        .iter()
        .filter_map(|l| match l {
            Listener::Unix {
                path: Some(path), ..
            } => Some(path.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_socket_mode_follows_umask_like_gunicorn() {
        assert_eq!(unix_socket_mode(None), 0o777);
        assert_eq!(unix_socket_mode(Some(0o007)), 0o770);
        assert_eq!(unix_socket_mode(Some(0o077)), 0o700);
    }
}
