//! One WSGI call: environ, the app, its iterable (or file wrapper), `close()`, error mapping.

use std::fs::File;
use std::io::Read;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use ferrocorn_worker::{AppError, Headers, Response};

use crate::environ::{build_environ, EnvironConfig, EnvironError, RequestInfo};
use std::sync::Mutex;

use crate::format_traceback;
use crate::response::{detached, type_name, FileWrapper, Responder, SinkPtr};
use crate::stream::{BodyPtr, InputStream};

/// What each request's environ is made from, and where it is kept after the request (when the
/// access log asks for environ values).
pub struct EnvironSource<'a, 'py> {
    pub base: &'a Bound<'py, PyDict>,
    pub config: &'a EnvironConfig,
    pub keep: Option<&'a Mutex<Option<Py<PyDict>>>>,
}

/// Serve one request with `app`. Logs what went wrong (tracebacks, invalid responses) itself.
pub fn serve(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    source: &EnvironSource<'_, '_>,
    info: &RequestInfo<'_>,
    body: &mut dyn Read,
    sink: &mut Response<'_>,
) -> Result<(), AppError> {
    let Some(environ) = request_environ(py, source, info, sink)? else {
        return Ok(());
    };
    if let Some(kept) = source.keep {
        *kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(environ.clone().unbind());
    }
    let input =
        Py::new(py, InputStream::new(BodyPtr::new(body))).map_err(|e| failed(py, info, &e))?;
    let responder = match Py::new(py, Responder::new(SinkPtr::new(sink))) {
        Ok(r) => r,
        Err(e) => {
            input.borrow_mut(py).detach();
            return Err(failed(py, info, &e));
        }
    };
    let outcome = environ
        .set_item("wsgi.input", input.bind(py))
        .map_err(Outcome::Python)
        .and_then(|()| run_app(py, app, &environ, responder.bind(py)));
    let leftovers = detach(py, &input, &responder);
    let Err(outcome) = outcome else { return Ok(()) };
    Err(request_error(py, info, outcome, leftovers))
}

/// This request's environ; `None` when the request was already answered (400: its proxy's
/// scheme headers contradict each other).
fn request_environ<'py>(
    py: Python<'py>,
    source: &EnvironSource<'_, 'py>,
    info: &RequestInfo<'_>,
    sink: &mut Response<'_>,
) -> Result<Option<Bound<'py, PyDict>>, AppError> {
    match build_environ(py, source.base, info, source.config) {
        Ok(Ok(env)) => Ok(Some(env)),
        Ok(Err(EnvironError::ContradictoryScheme)) => {
            // The request's fault (its proxy's), not the app's or the deployment's.
            log::warn!(
                "Bad request {}: {}",
                info.target,
                EnvironError::ContradictoryScheme
            );
            let headers = Headers::new().content_type("text/plain");
            // Writes to the client: without the GIL, as every socket operation.
            detached(py, sink, |sink| {
                sink.respond(400, headers, b"Contradictory scheme headers\n")
            })
            .map(|()| None)
        }
        Ok(Err(EnvironError::ScriptName(mismatch))) => {
            log::error!("Error handling request {}: {mismatch}", info.target);
            Err(AppError::Failed(mismatch.to_string()))
        }
        Err(e) => Err(failed(py, info, &e)),
    }
}

/// What the input stream and the responder recorded during the app call.
struct Leftovers {
    /// Reading the request body failed.
    input_error: Option<std::io::Error>,
    /// Why the response was invalid.
    bad: Option<String>,
    /// Writing to the client failed.
    sink_failure: Option<AppError>,
}

/// The request is over for Python: cut the input stream and the responder off the reader and the
/// sink (the app may keep references to them), and take what they recorded.
fn detach(py: Python<'_>, input: &Py<InputStream>, responder: &Py<Responder>) -> Leftovers {
    let input_error = {
        let mut input = input.borrow_mut(py);
        input.detach();
        input.error.take()
    };
    let mut r = responder.borrow_mut(py);
    r.detach();
    Leftovers {
        input_error,
        bad: r.bad.take(),
        sink_failure: r.failed.take(),
    }
}

/// The error for a failed app call, logged where it is the app's (a traceback) or the response's.
fn request_error(
    py: Python<'_>,
    info: &RequestInfo<'_>,
    outcome: Outcome,
    leftovers: Leftovers,
) -> AppError {
    let Leftovers {
        input_error,
        bad,
        sink_failure,
    } = leftovers;
    // The connection failed under the app: nobody to answer, and not the app's fault.
    if let Some(e) = sink_failure {
        return e;
    }
    if let Some(e) = input_error {
        log::debug!("reading the body of {} failed: {e}", info.target);
        return AppError::Io(e);
    }
    match outcome {
        Outcome::App(AppError::BadResponse(m)) => bad_response(info, bad.unwrap_or(m)),
        Outcome::App(e) => e,
        Outcome::Python(e) if crate::abort::is_abort(py, &e) => crate::abort::aborted(),
        // The app raised because its response was invalid (our TypeError/ValueError), or the
        // app swallowed that error and raised something else: the response is at fault.
        Outcome::Python(_) if bad.is_some() => bad_response(info, bad.unwrap_or_default()),
        Outcome::Python(e) => failed(py, info, &e),
    }
}

enum Outcome {
    /// The app (or its iterable, or close()) raised.
    Python(PyErr),
    /// Our side: invalid response, sink failure.
    App(AppError),
}

fn failed(py: Python<'_>, info: &RequestInfo<'_>, e: &PyErr) -> AppError {
    let tb = format_traceback(py, e);
    log::error!("Error handling request {}\n{}", info.target, tb.trim_end());
    AppError::Failed(e.to_string())
}

fn bad_response(info: &RequestInfo<'_>, reason: String) -> AppError {
    // The worker logs BadResponse as an error (the app's fault) with the request; once is enough.
    log::debug!(
        "invalid response from the application for {}: {reason}",
        info.target
    );
    AppError::BadResponse(reason)
}

fn run_app(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    environ: &Bound<'_, PyDict>,
    responder: &Bound<'_, Responder>,
) -> Result<(), Outcome> {
    let result = app.call1((environ, responder)).map_err(Outcome::Python)?;
    let sent = send_result(py, &result, responder);
    // PEP 3333: close() is called whatever happened, including a client that went away.
    let closed = match close_of(&result) {
        Ok(Some(close)) => close.call0().map(drop).map_err(Outcome::Python),
        Ok(None) => Ok(()),
        Err(e) => Err(Outcome::Python(e)),
    };
    sent?;
    closed?;
    responder.borrow_mut().finish().map_err(Outcome::App)
}

/// The iterable's `close`, if it has one. A plain list or tuple (what small apps and every
/// hello-world return) has none; looking it up would raise an AttributeError, format its
/// message and throw it away, on every request.
fn close_of<'py>(result: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
        return Ok(None);
    }
    result.getattr_opt(intern!(result.py(), "close"))
}

fn send_result(
    py: Python<'_>,
    result: &Bound<'_, PyAny>,
    responder: &Bound<'_, Responder>,
) -> Result<(), Outcome> {
    if let Ok(wrapper) = result.cast::<FileWrapper>() {
        if responder.borrow().started() && try_sendfile(py, wrapper, responder)? {
            return Ok(());
        }
    }
    for item in result.try_iter().map_err(Outcome::Python)? {
        let item = item.map_err(Outcome::Python)?;
        let Ok(bytes) = item.cast::<PyBytes>() else {
            let kind = type_name(&item);
            return Err(Outcome::App(AppError::BadResponse(format!(
                "the response iterable yielded {kind}, not bytes"
            ))));
        };
        if !responder.borrow().started() && !bytes.as_bytes().is_empty() {
            return Err(Outcome::App(AppError::BadResponse(
                "the response iterable yielded data before start_response was called".into(),
            )));
        }
        responder
            .borrow_mut()
            .send(py, bytes.as_bytes())
            .map_err(Outcome::App)?;
    }
    Ok(())
}

/// Send a file wrapper's file with sendfile(2) when it is a regular file; `false` when it is not
/// (the caller then iterates the wrapper).
fn try_sendfile(
    py: Python<'_>,
    wrapper: &Bound<'_, FileWrapper>,
    responder: &Bound<'_, Responder>,
) -> Result<bool, Outcome> {
    let filelike = wrapper.borrow().filelike.clone_ref(py).into_bound(py);
    let Ok(fd) = filelike
        .call_method0(intern!(py, "fileno"))
        .and_then(|f| f.extract::<i32>())
    else {
        return Ok(false);
    };
    if fd < 0 {
        return Ok(false);
    }
    // SAFETY: `fd` is the descriptor of the file object, which stays alive (we hold a reference)
    // for the whole use below, and ManuallyDrop keeps this File from closing it. Should the
    // object lie about its descriptor, we only fstat and read it, and EBADF ends that.
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let Ok(meta) = file.metadata() else {
        return Ok(false);
    };
    if !meta.is_file() {
        return Ok(false);
    }
    // The Python object's position (it may have read ahead into its buffer).
    let offset = match filelike
        .call_method0(intern!(py, "tell"))
        .and_then(|t| t.extract::<u64>())
    {
        Ok(o) => o,
        Err(_) => return Ok(false),
    };
    let mut len = meta.len().saturating_sub(offset);
    if let Some(declared) = responder.borrow().content_length {
        len = len.min(declared);
    }
    if len > 0 {
        responder
            .borrow_mut()
            .send_file(py, &file, offset, len)
            .map_err(Outcome::App)?;
    }
    // Leave the file where a read-based transfer would have.
    let _ = filelike.call_method1(intern!(py, "seek"), (offset + len,));
    Ok(true)
}
