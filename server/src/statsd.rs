//! gunicorn's statsd metrics (`--statsd-host`, `--statsd-prefix`, `--dogstatsd-tags`), same
//! names and wire format, so existing dashboards work: per request `gunicorn.request.duration`
//! (ms), `gunicorn.requests` and `gunicorn.request.status.NNN`, from each worker; the
//! `gunicorn.workers` gauge from the master. A worker's metrics share UDP datagrams
//! (newline-separated, which statsd agents accept) of up to [`PACKET_LIMIT`] bytes, sent when
//! full or [`FLUSH_AFTER`](crate::batch::FLUSH_AFTER) old (see [`RequestMetrics`]); a lost one
//! is lost.

use std::fmt::Write as _;
use std::net::UdpSocket;

use ferrocorn_worker::Completed;

use crate::batch::Batch;
use crate::error::{Context, Result};

/// The largest datagram sent: fits an Ethernet frame with room for IP and UDP headers, the
/// size statsd clients use on a LAN.
pub const PACKET_LIMIT: usize = 1432;

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

    /// Append the metrics of one finished request to `packet`, a line each.
    fn push_request(&self, packet: &mut String, done: &Completed<'_>) {
        let ms = millis(done.duration);
        self.push(
            packet,
            format_args!("gunicorn.request.duration:{}|ms", python_float(ms)),
        );
        self.push(packet, format_args!("gunicorn.requests:1|c|@1.0"));
        if let Some(status) = done.status {
            self.push(
                packet,
                format_args!("gunicorn.request.status.{status}:1|c|@1.0"),
            );
        }
    }

    /// The number of workers running.
    pub fn workers(&self, count: usize) {
        let mut packet = String::new();
        self.push(&mut packet, format_args!("gunicorn.workers:{count}|g"));
        self.send(&packet);
    }

    /// Append one metric line (prefix, metric, tags, newline) to `packet`.
    fn push(&self, packet: &mut String, metric: std::fmt::Arguments<'_>) {
        let _ = write!(packet, "{}{metric}", self.prefix);
        if !self.tags.is_empty() {
            packet.push_str("|#");
            packet.push_str(&self.tags);
        }
        packet.push('\n');
    }

    /// Send metric lines as one datagram, without the last newline (as gunicorn's packets).
    fn send(&self, lines: &str) {
        let packet = lines.strip_suffix('\n').unwrap_or(lines);
        // A full socket buffer or an absent listener loses metrics, as UDP does in gunicorn.
        let _ = self.sock.send(packet.as_bytes());
    }
}

/// A worker's request metrics on their way to statsd, gathered into datagrams: one `send` per
/// request cost more than the rest of the request's metrics work.
#[derive(Debug)]
pub struct RequestMetrics<'a> {
    statsd: &'a Statsd,
    pending: Batch,
}

impl<'a> RequestMetrics<'a> {
    /// Nothing waiting yet.
    pub fn new(statsd: &'a Statsd) -> RequestMetrics<'a> {
        RequestMetrics {
            statsd,
            pending: Batch::new(PACKET_LIMIT),
        }
    }

    /// Add the metrics of one finished request; sent once they fill a datagram.
    pub fn request(&mut self, done: &Completed<'_>) {
        let statsd = self.statsd;
        self.pending.append(
            |packet| statsd.push_request(packet, done),
            |lines| statsd.send(lines),
        );
    }

    /// Send the waiting metrics if they have waited long enough (called at each heartbeat).
    pub fn flush_if_due(&mut self) {
        if self.pending.due() {
            self.flush();
        }
    }

    /// Send the waiting metrics now.
    pub fn flush(&mut self) {
        let statsd = self.statsd;
        self.pending.flush(|lines| statsd.send(lines));
    }
}

impl Drop for RequestMetrics<'_> {
    fn drop(&mut self) {
        self.flush();
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
