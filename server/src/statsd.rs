//! gunicorn's statsd metrics (`--statsd-host`, `--statsd-prefix`, `--dogstatsd-tags`), same
//! names and wire format, so existing dashboards work: per request `gunicorn.request.duration`
//! (ms), `gunicorn.requests` and `gunicorn.request.status.NNN`, from each worker; the
//! `gunicorn.workers` gauge from the master. A request's metrics share one UDP datagram
//! (newline-separated, which statsd agents accept); a lost one is lost.

use std::fmt::Write as _;
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

    /// The metrics of one finished request, in one datagram (statsd and DogStatsD agents take
    /// several newline-separated metrics per packet): one `send` per request, not three.
    pub fn request(&self, done: &Completed<'_>) {
        let ms = millis(done.duration);
        let mut packet = String::with_capacity(200);
        self.push(
            &mut packet,
            format_args!("gunicorn.request.duration:{}|ms", python_float(ms)),
        );
        self.push(&mut packet, format_args!("gunicorn.requests:1|c|@1.0"));
        if let Some(status) = done.status {
            self.push(
                &mut packet,
                format_args!("gunicorn.request.status.{status}:1|c|@1.0"),
            );
        }
        self.send(&packet);
    }

    /// The number of workers running.
    pub fn workers(&self, count: usize) {
        let mut packet = String::new();
        self.push(&mut packet, format_args!("gunicorn.workers:{count}|g"));
        self.send(&packet);
    }

    /// Append one metric line (prefix, metric, tags) to `packet`.
    fn push(&self, packet: &mut String, metric: std::fmt::Arguments<'_>) {
        if !packet.is_empty() {
            packet.push('\n');
        }
        let _ = write!(packet, "{}{metric}", self.prefix);
        if !self.tags.is_empty() {
            packet.push_str("|#");
            packet.push_str(&self.tags);
        }
    }

    fn send(&self, packet: &str) {
        // A full socket buffer or an absent listener loses metrics, as UDP does in gunicorn.
        let _ = self.sock.send(packet.as_bytes());
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

/// gunicorn's arithmetic (whole microseconds), so the value prints as its does.
fn millis(d: std::time::Duration) -> f64 {
    d.as_secs() as f64 * 1000.0 + f64::from(d.subsec_micros()) / 1000.0
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
        // Python: 0 * 1000 + float(746183) / 10**3, and 1 * 1000 + 5000 / 10**3
        let micros = std::time::Duration::from_micros;
        assert_eq!(python_float(millis(micros(746_183))), "746.183");
        assert_eq!(python_float(millis(micros(1_005_000))), "1005.0");
    }
}
