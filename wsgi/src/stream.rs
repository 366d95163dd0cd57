//! `wsgi.input` (a streaming reader over the request body) and `wsgi.errors` (the error log).

use std::io::{self, Read, Write};
use std::thread::ThreadId;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// How much is asked of the socket per read when the caller gave no size.
const CHUNK: usize = 64 * 1024;

/// The request body reader, with its lifetime erased so a Python object can hold it.
///
/// Only dereferenced while the request is being served: [`InputStream::detach`] clears it before
/// the borrow it came from ends, and every use first checks it is on the serving thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyPtr(*mut (dyn Read + 'static));

// SAFETY: the pointer is only dereferenced on the thread that created it (checked against
// `InputStream::owner` before every use) and only while the borrow it came from is alive.
unsafe impl Send for BodyPtr {}
// SAFETY: as for Send; shared references never dereference it.
unsafe impl Sync for BodyPtr {}

impl BodyPtr {
    pub(crate) fn new(body: &mut dyn Read) -> BodyPtr {
        let ptr: *mut (dyn Read + '_) = body;
        // SAFETY: only the lifetime bound of the trait object changes (same fat-pointer layout);
        // the pointer is cleared before that lifetime ends (see the type's docs).
        BodyPtr(unsafe {
            std::mem::transmute::<*mut (dyn Read + '_), *mut (dyn Read + 'static)>(ptr)
        })
    }

    /// # Safety
    /// The caller is on the serving thread, the request is still being served and no other
    /// reference to the reader is in use.
    unsafe fn get<'a>(self) -> &'a mut dyn Read {
        // SAFETY: guaranteed by the caller, see above.
        unsafe { &mut *self.0 }
    }

    /// Read without holding the GIL.
    fn read(self, py: Python<'_>, buf: &mut [u8]) -> io::Result<usize> {
        py.detach(move || {
            // SAFETY: the caller checked the thread and that the request is still being served
            // (InputStream::reader), and its &mut borrow makes this the only use of the reader.
            let body = unsafe { self.get() };
            loop {
                match body.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            }
        })
    }
}

/// `wsgi.input`: reads the body on demand (never past its end), buffering only what `readline`
/// looked at beyond the line it returned.
#[pyclass(module = "ferrocorn", name = "InputStream")]
#[derive(Debug)]
pub struct InputStream {
    body: Option<BodyPtr>,
    owner: ThreadId,
    /// Read from the socket but not yet returned: `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// The first read error (e.g. the client went away): the request cannot be answered.
    pub(crate) error: Option<io::Error>,
}

impl InputStream {
    pub(crate) fn new(body: BodyPtr) -> InputStream {
        InputStream {
            body: Some(body),
            owner: std::thread::current().id(),
            buf: Vec::new(),
            pos: 0,
            eof: false,
            error: None,
        }
    }

    /// The request is over: later reads raise instead of touching the reader.
    pub(crate) fn detach(&mut self) {
        self.body = None;
    }

    fn reader(&self) -> PyResult<BodyPtr> {
        if std::thread::current().id() != self.owner {
            return Err(PyRuntimeError::new_err(
                "wsgi.input used outside the thread serving the request",
            ));
        }
        self.body
            .ok_or_else(|| PyValueError::new_err("wsgi.input read after the request finished"))
    }

    fn avail(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Read up to `want` more bytes from the socket onto `out`; 0 at the end of the body.
    fn fill_into(&mut self, py: Python<'_>, out: &mut Vec<u8>, want: usize) -> PyResult<usize> {
        if self.eof || want == 0 {
            return Ok(0);
        }
        if let Some(e) = &self.error {
            return Err(PyOSError::new_err(format!(
                "error reading request body: {e}"
            )));
        }
        let reader = self.reader()?;
        let start = out.len();
        out.resize(start + want, 0);
        let result = reader.read(py, &mut out[start..]);
        match result {
            Ok(n) => {
                out.truncate(start + n);
                if n == 0 {
                    self.eof = true;
                }
                Ok(n)
            }
            Err(e) => {
                out.truncate(start);
                let err = PyOSError::new_err(format!("error reading request body: {e}"));
                self.error = Some(e);
                Err(err)
            }
        }
    }

    /// Take `n` buffered bytes.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        out
    }

    fn read_bytes(&mut self, py: Python<'_>, size: Option<usize>) -> PyResult<Vec<u8>> {
        self.reader()?;
        let avail = self.avail();
        let mut out = self.take(size.map_or(avail, |s| s.min(avail)));
        match size {
            None => while self.fill_into(py, &mut out, CHUNK)? > 0 {},
            Some(size) => {
                while out.len() < size {
                    let want = (size - out.len()).min(CHUNK * 16);
                    if self.fill_into(py, &mut out, want)? == 0 {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn readline_bytes(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<Vec<u8>> {
        self.reader()?;
        let mut scanned = 0;
        loop {
            let pending = &self.buf[self.pos..];
            if let Some(i) = pending[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i + 1;
                return Ok(self.take(limit.map_or(end, |l| l.min(end))));
            }
            scanned = pending.len();
            if limit.is_some_and(|l| scanned >= l) || self.eof {
                let n = limit.map_or(scanned, |l| l.min(scanned));
                return Ok(self.take(n));
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let want = limit.map_or(8192, |l| (l - scanned).min(8192));
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.fill_into(py, &mut buf, want);
            self.buf = buf;
            r?;
        }
    }
}

/// Python's "negative or None means no limit".
fn limit(size: Option<isize>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

#[pymethods]
impl InputStream {
    /// Read `size` bytes (fewer only at the end of the body), or everything left.
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.read_bytes(py, limit(size))?;
        Ok(PyBytes::new(py, &data))
    }

    /// One line including its `\n` (at most `size` bytes).
    #[pyo3(signature = (size = None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.readline_bytes(py, limit(size))?;
        Ok(PyBytes::new(py, &data))
    }

    /// Lines until the end, or until they add up to at least `hint` bytes.
    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<isize>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let hint = limit(hint).filter(|&h| h > 0);
        let mut lines = Vec::new();
        let mut total = 0;
        loop {
            let line = self.readline_bytes(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            lines.push(PyBytes::new(py, &line));
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.readline_bytes(py, None)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }
}

/// `wsgi.errors`: text written here goes to the server's error log (stderr).
#[pyclass(module = "ferrocorn", name = "ErrorStream", frozen)]
#[derive(Debug)]
pub struct ErrorStream;

#[pymethods]
impl ErrorStream {
    fn write(&self, py: Python<'_>, s: &str) -> usize {
        write_stderr(py, s.as_bytes());
        s.chars().count()
    }

    fn writelines(&self, py: Python<'_>, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut text = String::new();
        for line in lines.try_iter()? {
            text.push_str(line?.extract::<&str>()?);
        }
        write_stderr(py, text.as_bytes());
        Ok(())
    }

    fn flush(&self, py: Python<'_>) {
        py.detach(|| {
            let _ = io::stderr().flush();
        });
    }
}

/// Write to the error log without the GIL (a full pipe must not stop the other app threads).
fn write_stderr(py: Python<'_>, bytes: &[u8]) {
    py.detach(|| {
        // A failing stderr has nowhere to be reported.
        let _ = io::stderr().lock().write_all(bytes);
    });
}
