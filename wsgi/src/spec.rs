//! Parsing and importing the APP spec: `module`, `module:name`, `module:a.b.c`,
//! `module:factory(args)` with literal arguments only (`ast.literal_eval`, never `eval`).

use std::ffi::CString;

use pyo3::exceptions::PyModuleNotFoundError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyTuple};

use crate::{format_traceback, LoadError};

const SPEC_PY: &str = include_str!("spec.py");

/// Factory call arguments: positional and keyword.
type CallArgs = (Py<PyTuple>, Py<PyDict>);

/// A parsed APP spec.
#[derive(Debug)]
pub struct AppSpec {
    pub module: String,
    /// Attribute path inside the module (`["app"]`, `["api", "wsgi"]`).
    pub attrs: Vec<String>,
    /// Factory call arguments when the spec ends in `(...)`.
    pub call: Option<CallArgs>,
}

fn helper(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || {
            let code = CString::new(SPEC_PY).expect("spec.py has no NUL");
            PyModule::from_code(py, &code, c"<ferrocorn spec>", c"_ferrocorn_spec")
                .map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

/// Parse `spec` (Python must be running).
pub fn parse(py: Python<'_>, spec: &str) -> Result<AppSpec, LoadError> {
    let bad = |reason: String| LoadError::BadSpec {
        spec: spec.to_string(),
        reason,
    };
    let module = helper(py).map_err(|e| LoadError::Init(format_traceback(py, &e)))?;
    let parsed = match module.call_method1("parse", (spec,)) {
        Ok(parsed) => parsed,
        Err(e) => {
            let spec_error = module
                .getattr("SpecError")
                .map_err(|e| LoadError::Init(e.to_string()))?;
            if e.is_instance(py, &spec_error) {
                return Err(bad(e.value(py).to_string()));
            }
            return Err(bad(format_traceback(py, &e)));
        }
    };
    let (module, attrs, call): (String, Vec<String>, Option<CallArgs>) =
        parsed.extract().map_err(|e: PyErr| bad(e.to_string()))?;
    Ok(AppSpec {
        module,
        attrs,
        call,
    })
}

/// Whether a `ModuleNotFoundError` is about `module` itself (or a package on its path) rather than
/// something the module imports.
fn is_missing_module(py: Python<'_>, err: &PyErr, module: &str) -> bool {
    if !err.is_instance_of::<PyModuleNotFoundError>(py) {
        return false;
    }
    let Ok(name) = err
        .value(py)
        .getattr("name")
        .and_then(|n| n.extract::<String>())
    else {
        return false;
    };
    module == name || module.starts_with(&format!("{name}."))
}

/// Import the module, resolve the attribute path, call the factory, check the result is callable.
pub fn import_app<'py>(py: Python<'py>, spec_str: &str) -> Result<Bound<'py, PyAny>, LoadError> {
    let spec = parse(py, spec_str)?;
    let module = match py.import(spec.module.as_str()) {
        Ok(m) => m,
        Err(e) => return Err(import_error(py, &e, spec.module)),
    };
    let mut obj = resolve_attrs(py, module.into_any(), spec.module, &spec.attrs)?;
    if let Some(call) = &spec.call {
        obj = call_factory(py, &obj, call, spec_str)?;
    }
    if !obj.is_callable() {
        return Err(LoadError::NotCallable {
            spec: spec_str.to_string(),
        });
    }
    Ok(obj)
}

/// Why importing `module` failed: the module is not there (with a hint when it was given as a
/// file name), or it raised while being imported.
fn import_error(py: Python<'_>, e: &PyErr, module: String) -> LoadError {
    if !is_missing_module(py, e, &module) {
        return LoadError::ImportFailed {
            module,
            traceback: format_traceback(py, e),
        };
    }
    let mut reason = e.value(py).to_string();
    if let Some(stem) = module.strip_suffix(".py") {
        reason.push_str(&format!(
            " (did you mean '{stem}:...'? APP is a module name, not a file)"
        ));
    }
    LoadError::ModuleNotFound { module, reason }
}

/// Follow the attribute path (`api.wsgi`) from the imported `obj`; `module` names it in errors.
fn resolve_attrs<'py>(
    py: Python<'py>,
    mut obj: Bound<'py, PyAny>,
    module: String,
    attrs: &[String],
) -> Result<Bound<'py, PyAny>, LoadError> {
    for (i, name) in attrs.iter().enumerate() {
        obj = match obj.getattr(name.as_str()) {
            Ok(o) => o,
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => {
                return Err(LoadError::AttributeMissing {
                    module,
                    name: attrs[..=i].join("."),
                })
            }
            Err(e) => {
                return Err(LoadError::ImportFailed {
                    module,
                    traceback: format_traceback(py, &e),
                })
            }
        };
    }
    Ok(obj)
}

/// Call the app factory `obj` with the spec's literal arguments, and return what it made.
fn call_factory<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    (args, kwargs): &CallArgs,
    spec_str: &str,
) -> Result<Bound<'py, PyAny>, LoadError> {
    if !obj.is_callable() {
        return Err(LoadError::NotCallable {
            spec: spec_str.to_string(),
        });
    }
    obj.call(args.bind(py), Some(kwargs.bind(py)))
        .map_err(|e| LoadError::FactoryFailed {
            spec: spec_str.to_string(),
            traceback: format_traceback(py, &e),
        })
}
