//! `start_response`, the `write()` callable and `wsgi.file_wrapper`.

use std::fs::File;
use std::thread::ThreadId;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use ferrocorn_worker::{AppError, Headers, Response};

/// The worker's response with its lifetime erased so a Python object can hold it; same rules as
/// [`crate::stream::BodyPtr`]: cleared before the borrow ends, used only on the serving thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SinkPtr(*mut Response<'static>);

// SAFETY: only dereferenced on the thread that created it (checked against `Responder::owner`)
// while the borrow it came from is alive.
unsafe impl Send for SinkPtr {}
// SAFETY: as for Send.
unsafe impl Sync for SinkPtr {}

impl SinkPtr {
    pub(crate) fn new(sink: &mut Response<'_>) -> SinkPtr {
        let ptr: *mut Response<'_> = sink;
        // SAFETY: only the lifetime parameter changes (same type, same layout); the pointer is
        // cleared by `Responder::detach` before that lifetime ends.
        SinkPtr(unsafe { std::mem::transmute::<*mut Response<'_>, *mut Response<'static>>(ptr) })
    }

    /// # Safety
    /// The caller is on the serving thread, the request is still being served and no other
    /// reference to the sink is in use.
    unsafe fn get<'a>(self) -> &'a mut Response<'static> {
        // SAFETY: guaranteed by the caller, see above.
        unsafe { &mut *self.0 }
    }
}

/// Run `f` on `sink` without the GIL: it writes to the client, which may block.
pub(crate) fn detached<T: Send>(
    py: Python<'_>,
    sink: &mut Response<'_>,
    f: impl FnOnce(&mut Response<'_>) -> T + Send,
) -> T {
    let ptr = SinkPtr::new(sink);
    py.detach(move || {
        // SAFETY: `ptr` is the `sink` borrowed mutably for this whole call, used on this thread
        // (detach runs the closure here) and by nothing else meanwhile.
        f(unsafe { ptr.get() })
    })
}

/// The `start_response` callable of one request; its `write` method is the `write()` callable.
#[pyclass(module = "ferrocorn", name = "StartResponse")]
#[derive(Debug)]
pub struct Responder {
    sink: Option<SinkPtr>,
    owner: ThreadId,
    status: Option<(u16, String)>,
    headers: Headers,
    /// `Content-Length` the app declared.
    pub(crate) content_length: Option<u64>,
    head_sent: bool,
    /// Why the app's response is invalid (the app's fault, reported as BadResponse).
    pub(crate) bad: Option<String>,
    /// A failure of the sink (client gone, ...): reported over anything the app raised after it.
    pub(crate) failed: Option<AppError>,
}

/// Parse `"200 OK"`: three digits, then a space and a reason of visible ASCII (or nothing).
pub fn parse_status(status: &str) -> Result<(u16, String), String> {
    let bad = || format!("invalid status line {status:?}: expected e.g. \"200 OK\"");
    let (code, reason) = match status.split_once(' ') {
        Some((code, reason)) => (code, reason),
        None => (status, ""),
    };
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !reason
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        || !reason.is_ascii()
    {
        return Err(bad());
    }
    let code: u16 = code.parse().map_err(|_| bad())?;
    if code < 100 {
        return Err(bad());
    }
    Ok((code, reason.to_string()))
}

/// The Python type name of `obj`, for messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// A native string as latin-1 bytes, or why it is not one.
fn latin1_bytes(s: &Bound<'_, PyAny>, what: &str) -> Result<Vec<u8>, String> {
    let s = s
        .cast::<PyString>()
        .map_err(|_| format!("{what} must be str, not {}", type_name(s)))?;
    let s = s.to_cow().map_err(|e| format!("{what}: {e}"))?;
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| format!("{what} {s:?} is not latin-1")))
        .collect()
}

/// Validate `[(name, value), ...]` into header bytes.
fn parse_headers(headers: &Bound<'_, PyAny>) -> Result<Headers, String> {
    if !headers.is_instance_of::<pyo3::types::PyList>() {
        return Err(format!(
            "response headers must be a list, not {}",
            type_name(headers)
        ));
    }
    let mut out = Headers::new();
    for item in headers.try_iter().map_err(|e| e.to_string())? {
        let item = item.map_err(|e| e.to_string())?;
        let pair = item
            .cast::<PyTuple>()
            .map_err(|_| "each response header must be a (name, value) tuple".to_string())?;
        if pair.len() != 2 {
            return Err("each response header must be a (name, value) tuple".into());
        }
        let name = latin1_bytes(&pair.get_item(0).map_err(|e| e.to_string())?, "header name")?;
        let value = latin1_bytes(
            &pair.get_item(1).map_err(|e| e.to_string())?,
            "header value",
        )?;
        if !ferrocorn_http::is_token(&name) {
            return Err(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(&name)
            ));
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!(
                "header {:?} has a control character (CR, LF or NUL) in its value",
                String::from_utf8_lossy(&name)
            ));
        }
        out.push(name, value.trim_ascii());
    }
    Ok(out)
}

impl Responder {
    pub(crate) fn new(sink: SinkPtr) -> Responder {
        Responder {
            sink: Some(sink),
            owner: std::thread::current().id(),
            status: None,
            headers: Headers::new(),
            content_length: None,
            head_sent: false,
            bad: None,
            failed: None,
        }
    }

    pub(crate) fn detach(&mut self) {
        self.sink = None;
    }

    pub(crate) fn started(&self) -> bool {
        self.status.is_some()
    }

    fn sink(&self) -> PyResult<SinkPtr> {
        if std::thread::current().id() != self.owner {
            return Err(PyRuntimeError::new_err(
                "start_response/write used outside the thread serving the request",
            ));
        }
        self.sink
            .ok_or_else(|| PyValueError::new_err("the response is already finished"))
    }

    fn mark_bad(&mut self, reason: String) -> PyErr {
        let err = PyValueError::new_err(reason.clone());
        self.bad.get_or_insert(reason);
        err
    }

    /// Hand status and headers to the sink (once, before the first body bytes or at the end).
    fn start_sink(&mut self, sink: &mut Response<'_>) -> Result<(), AppError> {
        let (code, reason) = self.status.clone().ok_or_else(|| {
            AppError::BadResponse(
                "the application wrote body data before calling start_response".into(),
            )
        })?;
        sink.start(code, &reason, std::mem::take(&mut self.headers))
    }

    /// Send body bytes (the head first when these are the first). Empty data sends nothing, as
    /// PEP 3333 asks: the head waits for the first non-empty bytes or the end.
    pub(crate) fn send(&mut self, py: Python<'_>, data: &[u8]) -> Result<(), AppError> {
        if data.is_empty() {
            return Ok(());
        }
        self.send_body(py, move |sink| sink.write(data))
    }

    /// Send part of a regular file with sendfile(2), without the GIL.
    pub(crate) fn send_file(
        &mut self,
        py: Python<'_>,
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<(), AppError> {
        self.send_body(py, move |sink| sink.sendfile(file, offset, Some(len)))
    }

    /// Send the head if it has not gone yet, then run `send` on the sink without the GIL.
    fn send_body(
        &mut self,
        py: Python<'_>,
        send: impl FnOnce(&mut Response<'_>) -> Result<(), AppError> + Send,
    ) -> Result<(), AppError> {
        let ptr = self.sink().map_err(|e| AppError::Failed(e.to_string()))?;
        // SAFETY: sink() checked the thread and that the request is still being served; this
        // &mut self borrow is the only user of the sink while it lasts.
        let sink = unsafe { ptr.get() };
        if !self.head_sent {
            self.start_sink(sink)?;
        }
        self.head_sent = true;
        detached(py, sink, send)
    }

    /// The app is done: send the head if no body bytes did.
    pub(crate) fn finish(&mut self) -> Result<(), AppError> {
        if self.status.is_none() {
            return Err(AppError::BadResponse(
                "the application did not call start_response".into(),
            ));
        }
        if self.head_sent {
            return Ok(());
        }
        let ptr = self.sink().map_err(|e| AppError::Failed(e.to_string()))?;
        // SAFETY: as in send().
        let sink = unsafe { ptr.get() };
        self.head_sent = true;
        self.start_sink(sink)
    }
}

#[pymethods]
impl Responder {
    /// `start_response(status, response_headers, exc_info=None)` -> `write`.
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        {
            let mut this = slf.borrow_mut();
            this.sink()?;
            let exc_info = exc_info.filter(|e| !e.is_none());
            match exc_info {
                Some(info) if this.head_sent => {
                    // Too late to change the response: re-raise the app's error (PEP 3333).
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                None if this.status.is_some() => {
                    return Err(this
                        .mark_bad("start_response called a second time without exc_info".into()));
                }
                _ => {}
            }
            let status = match status.cast::<PyString>() {
                Ok(s) => s.to_cow()?.into_owned(),
                Err(_) => {
                    let msg = format!("status must be str, not {}", type_name(status));
                    this.bad.get_or_insert(msg.clone());
                    return Err(PyTypeError::new_err(msg));
                }
            };
            let (code, reason) = parse_status(&status).map_err(|m| this.mark_bad(m))?;
            let headers = parse_headers(headers).map_err(|m| this.mark_bad(m))?;
            let mut content_length = None;
            for (name, value) in headers.iter() {
                if name.eq_ignore_ascii_case(b"content-length") {
                    let parsed = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok());
                    match parsed {
                        Some(n) if content_length.is_some_and(|seen| seen != n) => {
                            return Err(this.mark_bad(format!(
                                "conflicting Content-Length headers ({} and {n})",
                                content_length.unwrap_or_default()
                            )))
                        }
                        Some(n) => content_length = Some(n),
                        None => {
                            return Err(this.mark_bad(format!(
                                "invalid Content-Length {:?}",
                                String::from_utf8_lossy(value)
                            )))
                        }
                    }
                }
            }
            this.status = Some((code, reason));
            this.headers = headers;
            this.content_length = content_length;
        }
        slf.getattr("write")
    }

    /// The `write()` callable: send bytes now.
    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data.cast::<PyBytes>().map_err(|_| {
            let msg = format!("write() takes bytes, not {}", type_name(data));
            self.bad.get_or_insert(msg.clone());
            PyTypeError::new_err(msg)
        })?;
        if self.status.is_none() {
            return Err(self.mark_bad("write() called before start_response".into()));
        }
        match self.send(py, bytes.as_bytes()) {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = PyOSError::new_err(e.to_string());
                match e {
                    AppError::BadResponse(m) => {
                        self.bad.get_or_insert(m);
                    }
                    other => {
                        self.failed.get_or_insert(other);
                    }
                }
                Err(err)
            }
        }
    }
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterates the file in blocks; the server sends a
/// regular file with sendfile(2) instead when the app returns the wrapper itself.
#[pyclass(module = "ferrocorn", name = "FileWrapper")]
#[derive(Debug)]
pub struct FileWrapper {
    pub(crate) filelike: Py<PyAny>,
    blksize: isize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = 8192))]
    fn new(filelike: Py<PyAny>, blksize: isize) -> PyResult<FileWrapper> {
        if blksize <= 0 {
            return Err(PyValueError::new_err("blksize must be positive"));
        }
        Ok(FileWrapper { filelike, blksize })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        Ok(if data.is_truthy()? { Some(data) } else { None })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}
