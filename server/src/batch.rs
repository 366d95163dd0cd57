//! Text a worker gathers over several requests and sends with one system call: the access log's
//! lines, the statsd metrics. A `write`/`send` per request costs more than everything else the
//! access log and statsd do for it; batched, a busy worker makes a few hundred a second.
//!
//! Lines wait at most [`FLUSH_AFTER`] while requests keep coming, and about a second when the
//! worker goes idle (its next heartbeat). The owner flushes before a reopen and at exit, so none
//! is lost then; a worker killed outright loses what was still waiting.

use std::time::{Duration, Instant};

/// How long text may wait while the worker is busy.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// Complete lines waiting to be sent, and since when.
#[derive(Debug)]
pub(crate) struct Batch {
    text: String,
    since: Option<Instant>,
    /// The most bytes one send carries (unless a single line is longer).
    limit: usize,
}

impl Batch {
    pub(crate) fn new(limit: usize) -> Batch {
        Batch {
            text: String::with_capacity(limit),
            since: None,
            limit,
        }
    }

    /// Add what `fill` writes (whole lines); `send` gets the earlier lines first when the new
    /// ones would take the batch past its limit, and the batch when it is full.
    pub(crate) fn append(&mut self, fill: impl FnOnce(&mut String), mut send: impl FnMut(&str)) {
        let before = self.text.len();
        fill(&mut self.text);
        if self.text.len() > self.limit && before > 0 {
            send(&self.text[..before]);
            self.text.drain(..before);
        }
        if self.text.len() >= self.limit {
            self.flush(send);
        } else if self.since.is_none() && !self.text.is_empty() {
            self.since = Some(Instant::now());
        }
    }

    /// Whether lines have waited [`FLUSH_AFTER`] (the clock is read only when some wait).
    pub(crate) fn due(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= FLUSH_AFTER)
    }

    /// Send whatever waits.
    pub(crate) fn flush(&mut self, mut send: impl FnMut(&str)) {
        if !self.text.is_empty() {
            send(&self.text);
            self.text.clear();
        }
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_whole_lines_within_the_limit() {
        let mut sent = Vec::new();
        let mut batch = Batch::new(10);
        for line in ["aaaa\n", "bbbb\n", "cc\n", "a very long line\n"] {
            batch.append(|t| t.push_str(line), |s| sent.push(s.to_string()));
        }
        assert_eq!(sent, ["aaaa\nbbbb\n", "cc\n", "a very long line\n"]);
        assert!(!batch.due());
        batch.append(|t| t.push_str("d\n"), |s| sent.push(s.to_string()));
        batch.flush(|s| sent.push(s.to_string()));
        assert_eq!(sent.last().unwrap(), "d\n");
        batch.flush(|s| sent.push(s.to_string()));
        assert_eq!(sent.len(), 4, "nothing more to send");
    }

    #[test]
    fn waiting_lines_become_due() {
        let mut batch = Batch::new(100);
        batch.append(|t| t.push_str("x\n"), |_| unreachable!());
        std::thread::sleep(FLUSH_AFTER);
        assert!(batch.due());
    }
}
