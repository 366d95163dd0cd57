//! gunicorn's statsd metrics (`--statsd-host`, `--statsd-prefix`, `--dogstatsd-tags`), same
//! names and wire format, so existing dashboards work: per request `gunicorn.request.duration`
//! (ms), `gunicorn.requests` and `gunicorn.request.status.NNN`, from each worker; the
//! `gunicorn.workers` gauge from the master. One UDP datagram per metric; a lost one is lost.

use std::net::UdpSocket;

use ferrocorn_worker::Completed;

use crate::error::{Context, Result};

/// A connected UDP socket and what every metric line gets.
#[derive(Debug)]
pub struct Statsd {
    sock: UdpSocket,
    prefix: String,
    tags: String,
}

impl Statsd {
    /// `host` is `HOST:PORT` (gunicorn's default port 8125 when none is given).
    pub fn connect(host: &str, prefix: &str, tags: &str) -> Result<Statsd> {
        let addr = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:8125")
        };
        let bind = if addr.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let sock = UdpSocket::bind(bind)
            .and_then(|s| s.connect(&addr).map(|()| s))
            .with_context(|| format!("cannot reach the statsd host {host}"))?;
        sock.set_nonblocking(true)
            .context("setting the statsd socket non-blocking")?;
        Ok(Statsd {
            sock,
            prefix: metric_prefix(prefix),
            tags: tags.to_string(),
        })
    }

    /// The same socket for another owner (the master keeps one, each worker inherits one).
    pub fn try_clone(&self) -> Result<Statsd> {
        Ok(Statsd {
            sock: self
                .sock
                .try_clone()
                .context("duplicating the statsd socket")?,
            prefix: self.prefix.clone(),
            tags: self.tags.clone(),
        })
    }

    /// The metrics of one finished request.
    pub fn request(&self, done: &Completed<'_>) {
        let ms = done.duration.as_secs_f64() * 1000.0;
        self.send(&format!(
            "gunicorn.request.duration:{}|ms",
            python_float(ms)
        ));
        self.send("gunicorn.requests:1|c|@1.0");
        if let Some(status) = done.status {
            self.send(&format!("gunicorn.request.status.{status}:1|c|@1.0"));
        }
    }

    /// The number of workers running.
    pub fn workers(&self, count: usize) {
        self.send(&format!("gunicorn.workers:{count}|g"));
    }

    fn send(&self, metric: &str) {
        let mut line = format!("{}{metric}", self.prefix);
        if !self.tags.is_empty() {
            line.push_str("|#");
            line.push_str(&self.tags);
        }
        // A full socket buffer or an absent listener loses a metric, as UDP does in gunicorn.
        let _ = self.sock.send(line.as_bytes());
    }
}

/// gunicorn's prefix: a non-empty one ends in exactly one dot.
fn metric_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('.');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}.")
    }
}

/// A float as Python's `str` writes it (`12.0`, `0.125`).
fn python_float(x: f64) -> String {
    let text = x.to_string();
    if text.contains(['.', 'e', 'i', 'N']) {
        text
    } else {
        text + ".0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_in_one_dot() {
        assert_eq!(metric_prefix(""), "");
        assert_eq!(metric_prefix("app"), "app.");
        assert_eq!(metric_prefix("app.."), "app.");
    }

    #[test]
    fn floats_print_like_python() {
        assert_eq!(python_float(12.0), "12.0");
        assert_eq!(python_float(0.125), "0.125");
    }
}
