//! gunicorn's access log: `--access-logfile FILE|-` and `--access-logformat`, with gunicorn's
//! atoms (`h l u t r m U q H s B b f a T M D L p`, `{header}i`, `{header}o`, `{var}e`), default
//! format and escaping (`"` in a value becomes `\"`; an unknown atom is `-`).
//!
//! The format is compiled once; each worker opens the file itself (`O_APPEND`) and formats its
//! lines into one reused buffer, written with one `write` of whole lines (at most `PIPE_BUF`
//! bytes, so lines of several workers never interleave, in a file or a pipe) once it is full or
//! [`FLUSH_AFTER`](crate::batch::FLUSH_AFTER) old, at the next heartbeat when idle, and before a
//! reopen or exit, so none is lost when a worker stops. SIGUSR1 reopens it (the master
//! re-creates it and hands it to `--user` first).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ferrocorn_worker::{Completed, PeerAddr};

use crate::batch::Batch;
use crate::error::{Context, Result};

/// gunicorn's default `access_log_format`.
pub const DEFAULT_FORMAT: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// One piece of a compiled format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A one-letter (or unknown) atom, by name.
    Atom(String),
    /// `{name}i`, name lowercased.
    RequestHeader(String),
    /// `{name}o`, name lowercased.
    ResponseHeader(String),
    /// `{name}e`, as given (environ keys are upper case).
    Environ(String),
}

/// A parsed `--access-logformat` (Python `%`-formatting with named atoms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFormat {
    pieces: Vec<Piece>,
}

impl AccessFormat {
    /// Parse gunicorn's format: `%(NAME)s` atoms (other conversion letters and widths are
    /// accepted and print the value as text), `%%` for `%`, anything else literal.
    pub fn parse(format: &str) -> AccessFormat {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = format;
        while let Some(at) = rest.find('%') {
            text.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                text.push('%');
                rest = tail;
                continue;
            }
            match named_atom(after) {
                Some((name, tail)) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece_for(name));
                    rest = tail;
                }
                None => {
                    text.push('%');
                    rest = after;
                }
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        AccessFormat { pieces }
    }

    /// Whether the format needs values only the app knows (`{var}e`, and `U`: a WSGI app's
    /// `PATH_INFO`, decoded and without `SCRIPT_NAME`).
    pub fn uses_environ(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Environ(_)) || *p == Piece::Atom("U".into()))
    }

    /// Append the log line for `done` (with its newline) to `out`, as gunicorn would write it;
    /// `time` is the request's `[...]` time ([`clf_time`]).
    pub fn push_line(&self, out: &mut String, done: &Completed<'_>, pid: u32, time: &str) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Atom(name) => push_atom(out, name, done, pid, time),
                Piece::RequestHeader(name) => match last_header(done.head.headers(), name) {
                    Some(value) => push_latin1_escaped(out, value),
                    None => out.push('-'),
                },
                Piece::ResponseHeader(name) => {
                    let headers = done
                        .response_headers
                        .iter()
                        .map(|(n, v)| (n.as_slice(), v.as_slice()));
                    match last_header(headers, name) {
                        Some(value) => push_latin1_escaped(out, value),
                        None => out.push('-'),
                    }
                }
                Piece::Environ(name) => {
                    let value = environ(name, done);
                    push_escaped(out, value.as_deref().unwrap_or("-"));
                }
            }
        }
        out.push('\n');
    }
}

/// `(NAME)` and a conversion (`s`, `d`, with optional flags and width) at the start of `s`;
/// returns the name and what follows.
fn named_atom(s: &str) -> Option<(&str, &str)> {
    let inner = s.strip_prefix('(')?;
    let close = inner.find(')')?;
    let name = &inner[..close];
    let spec = &inner[close + 1..];
    let conv = spec.find(|c: char| !matches!(c, '-' | '+' | ' ' | '#' | '.' | '0'..='9'))?;
    let letter = spec[conv..].chars().next()?;
    letter
        .is_ascii_alphabetic()
        .then(|| (name, &spec[conv + letter.len_utf8()..]))
}

fn piece_for(name: &str) -> Piece {
    let braced = |suffix: char| {
        name.strip_prefix('{')
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.strip_suffix('}'))
    };
    if let Some(header) = braced('i') {
        Piece::RequestHeader(header.to_ascii_lowercase())
    } else if let Some(header) = braced('o') {
        Piece::ResponseHeader(header.to_ascii_lowercase())
    } else if let Some(var) = braced('e') {
        Piece::Environ(var.to_string())
    } else {
        Piece::Atom(name.to_string())
    }
}

/// Write a one-letter atom's value; `-` for an unknown one, as gunicorn's. Values that cannot
/// hold a `"` (numbers, the method, the version, an address) are written as they are.
fn push_atom(out: &mut String, name: &str, done: &Completed<'_>, pid: u32, time: &str) {
    let head = done.head;
    match name {
        "h" => push_remote_addr(out, done.peer),
        "u" => push_escaped(out, basic_auth_user(done).as_deref().unwrap_or("-")),
        "t" => out.push_str(time),
        "r" => {
            out.push_str(head.method());
            out.push(' ');
            push_escaped(out, head.target());
            out.push(' ');
            out.push_str(head.version().as_str());
        }
        "s" => match done.status {
            Some(status) => push_number(out, u128::from(status)),
            None => out.push('-'),
        },
        "m" => out.push_str(head.method()),
        "U" => match done.log_var("PATH_INFO") {
            Some(path) => push_escaped(out, &path),
            None => push_escaped(out, head.path()),
        },
        "q" => push_escaped(out, head.query()),
        "H" => out.push_str(head.version().as_str()),
        "b" | "B" => push_number(out, u128::from(done.body_bytes)),
        "f" | "a" => {
            let header = if name == "f" { "referer" } else { "user-agent" };
            match last_header(head.headers(), header) {
                Some(value) => push_latin1_escaped(out, value),
                None => out.push('-'),
            }
        }
        "T" | "D" | "M" | "L" | "p" => push_timing(out, name, done, pid),
        _ => out.push('-'),
    }
}

/// The request time atoms (`T` seconds, `D` microseconds, `M` milliseconds, `L` decimal
/// seconds) and `p`, the worker's pid.
fn push_timing(out: &mut String, name: &str, done: &Completed<'_>, pid: u32) {
    let micros = done.duration.as_micros();
    let _ = match name {
        "T" => write!(out, "{}", micros / 1_000_000),
        "D" => write!(out, "{micros}"),
        "M" => write!(out, "{}", micros / 1000),
        "L" => write!(out, "{}.{:06}", micros / 1_000_000, micros % 1_000_000),
        _ => write!(out, "<{pid}>"),
    };
}

fn push_number(out: &mut String, n: u128) {
    let _ = write!(out, "{n}");
}

/// gunicorn's `REMOTE_ADDR`: the peer's IP, empty for a unix socket.
fn remote_addr(peer: &PeerAddr) -> String {
    let mut out = String::new();
    push_remote_addr(&mut out, peer);
    out
}

fn push_remote_addr(out: &mut String, peer: &PeerAddr) {
    if let PeerAddr::Tcp(addr) = peer {
        let _ = write!(out, "{}", addr.ip());
    }
}

/// A `{var}e` value: the app's own (a WSGI environ), else the CGI variables any request has.
fn environ(name: &str, done: &Completed<'_>) -> Option<String> {
    if let Some(value) = done.log_var(name) {
        return Some(value);
    }
    let head = done.head;
    Some(match name {
        "REQUEST_METHOD" => head.method().to_string(),
        "RAW_URI" => head.target().to_string(),
        "QUERY_STRING" => head.query().to_string(),
        "SERVER_PROTOCOL" => head.version().as_str().to_string(),
        "REMOTE_ADDR" => remote_addr(done.peer),
        _ => return None,
    })
}

/// The last value of header `name` (lowercase), as gunicorn's dict of atoms keeps the last.
fn last_header<'h, N: AsRef<[u8]>>(
    headers: impl Iterator<Item = (N, &'h [u8])>,
    name: &str,
) -> Option<&'h [u8]> {
    headers
        .filter(|(n, _)| n.as_ref().eq_ignore_ascii_case(name.as_bytes()))
        .last()
        .map(|(_, v)| v)
}

/// Header bytes as WSGI sees them (latin-1), escaped.
fn push_latin1_escaped(out: &mut String, value: &[u8]) {
    for &b in value {
        if b == b'"' {
            out.push('\\');
        }
        out.push(b as char);
    }
}

/// Header bytes as text the way WSGI sees them (latin-1).
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// The user name of `Authorization: Basic ...`, like gunicorn's `u` atom.
fn basic_auth_user(done: &Completed<'_>) -> Option<String> {
    let auth = latin1(last_header(done.head.headers(), "authorization")?);
    if !auth.to_ascii_lowercase().starts_with("basic") {
        return None;
    }
    let (_, encoded) = auth.split_once(' ')?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let user = decoded.split(|&b| b == b':').next()?;
    String::from_utf8(user.to_vec()).ok()
}

fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// [`clf_time`] made once a second.
#[derive(Debug, Default)]
struct ClfClock {
    second: u64,
    text: String,
}

impl ClfClock {
    fn format(&mut self, at: SystemTime) -> &str {
        let second = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = clf_time(at);
        }
        &self.text
    }
}

/// Apache's common log format time, `[10/Oct/2000:13:55:36 -0700]`, in local time as gunicorn's
/// `time.strftime`.
pub fn clf_time(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (t, offset) = local_time(secs);
    let sign = if offset < 0 { '-' } else { '+' };
    let offset = offset.unsigned_abs() / 60;
    let mut out = String::with_capacity(28);
    let _ = write!(
        out,
        "[{:02}/{}/{:04}:{:02}:{:02}:{:02} {sign}{:02}{:02}]",
        t.tm_mday,
        MONTHS[t.tm_mon.clamp(0, 11) as usize],
        t.tm_year + 1900,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
        offset / 60,
        offset % 60
    );
    out
}

/// The broken-down local time of `secs` and its offset from UTC in seconds.
fn local_time(secs: i64) -> (libc::tm, i64) {
    let time: libc::time_t = secs;
    // SAFETY: `tm` is plain data, fully written by localtime_r (all-zero is a valid value in case
    // it fails); both pointers are valid for the call and localtime_r keeps neither.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&time, &mut tm);
        tm
    };
    let offset = tm.tm_gmtoff;
    (tm, offset)
}

/// Where the lines go: `-` is stdout, as in gunicorn.
#[derive(Debug)]
pub struct AccessLog {
    format: AccessFormat,
    clock: ClfClock,
    path: Option<PathBuf>,
    file: Option<File>,
    pending: Batch,
    /// The `p` atom: the worker's pid, read when it opens the log.
    pid: u32,
}

/// The most bytes of one write: what a pipe takes in one piece (a longer line goes alone).
const WRITE_LIMIT: usize = libc::PIPE_BUF;

impl AccessLog {
    /// Opens nothing yet: each worker calls [`AccessLog::open`] after dropping privileges.
    pub fn new(path: &Path, format: AccessFormat) -> AccessLog {
        AccessLog {
            format,
            clock: ClfClock::default(),
            path: (path != Path::new("-")).then(|| path.to_path_buf()),
            file: None,
            pending: Batch::new(WRITE_LIMIT),
            pid: std::process::id(),
        }
    }

    /// The file, unless the log goes to stdout.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Create the file if it is missing (in the master, before it is handed to `--user`).
    pub fn create(&self) -> Result<()> {
        match &self.path {
            Some(path) => create(path),
            None => Ok(()),
        }
    }

    /// (Re)open the file for appending; the lines still waiting go to the file they were
    /// logged to first.
    pub fn open(&mut self) -> Result<()> {
        self.flush();
        self.pid = std::process::id();
        if let Some(path) = &self.path {
            self.file = Some(open_append(path)?);
        }
        Ok(())
    }

    /// Add `done`'s line to those waiting; written once they fill a write.
    pub fn log(&mut self, done: &Completed<'_>) {
        let time = self.clock.format(done.started_at);
        let (format, file, to_stdout) = (&self.format, &mut self.file, self.path.is_none());
        let pid = self.pid;
        self.pending.append(
            |out| format.push_line(out, done, pid, time),
            |lines| write_lines(file, to_stdout, lines),
        );
    }

    /// Write the waiting lines if they have waited long enough (called at each heartbeat).
    pub fn flush_if_due(&mut self) {
        if self.pending.due() {
            self.flush();
        }
    }

    /// Write the waiting lines now.
    pub fn flush(&mut self) {
        let (file, to_stdout) = (&mut self.file, self.path.is_none());
        self.pending
            .flush(|lines| write_lines(file, to_stdout, lines));
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One `write` of whole lines, to the file or to stdout (`-`).
fn write_lines(file: &mut Option<File>, to_stdout: bool, lines: &str) {
    let written = match file {
        Some(file) => file.write_all(lines.as_bytes()),
        None if to_stdout => std::io::stdout().lock().write_all(lines.as_bytes()),
        None => Ok(()),
    };
    if let Err(e) = written {
        log::error!("cannot write the access log: {e}");
    }
}

/// Create the access log file at `path` if it is missing.
pub(crate) fn create(path: &Path) -> Result<()> {
    open_append(path).map(drop)
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open access log file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_format_compiles_to_gunicorns_atoms() {
        let f = AccessFormat::parse(DEFAULT_FORMAT);
        let atoms: Vec<&Piece> = f
            .pieces
            .iter()
            .filter(|p| !matches!(p, Piece::Text(_)))
            .collect();
        assert_eq!(atoms.len(), 9);
        assert_eq!(f.pieces[0], Piece::Atom("h".into()));
        assert_eq!(f.pieces[1], Piece::Text(" ".into()));
    }

    #[test]
    fn braced_atoms_percent_signs_and_stray_percents() {
        let f = AccessFormat::parse(
            "%(X-Real)s %({X-Forwarded-For}i)s %({Server}o)s %({REMOTE_USER}e)s 100%% %z %(D)d",
        );
        assert_eq!(
            f.pieces,
            [
                Piece::Atom("X-Real".into()),
                Piece::Text(" ".into()),
                Piece::RequestHeader("x-forwarded-for".into()),
                Piece::Text(" ".into()),
                Piece::ResponseHeader("server".into()),
                Piece::Text(" ".into()),
                Piece::Environ("REMOTE_USER".into()),
                Piece::Text(" 100% %z ".into()),
                Piece::Atom("D".into()),
            ]
        );
        assert!(f.uses_environ());
    }

    #[test]
    fn clf_time_in_utc() {
        // localtime_r follows the machine's zone: only the shape is asserted here (the e2e test
        // compares with the local time).
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        let s = clf_time(t);
        assert_eq!(s.len(), 28, "{s}");
        assert!(s.starts_with('[') && s.ends_with(']'), "{s}");
        assert!(s.contains("/Feb/2024:") || s.contains("/Mar/2024:"), "{s}");
    }
}
