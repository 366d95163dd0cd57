//! The source files of the modules the app imported, for `--reload` to watch.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The file of every module in `sys.modules` that has one (`__file__`), absolute. Empty when
/// Python has not been started in this process.
pub fn imported_files() -> Vec<PathBuf> {
    // SAFETY: Py_IsInitialized only reads the runtime's state and may be called at any time.
    if unsafe { pyo3::ffi::Py_IsInitialized() } == 0 {
        return Vec::new();
    }
    Python::attach(|py| module_files(py).unwrap_or_default())
}

fn module_files(py: Python<'_>) -> PyResult<Vec<PathBuf>> {
    let modules = py.import("sys")?.getattr("modules")?;
    // A snapshot: iterating `sys.modules` itself fails if an import happens meanwhile.
    let modules = modules.cast_into::<PyDict>()?.copy()?;
    let mut files = Vec::new();
    for (_, module) in modules.iter() {
        let Ok(file) = module.getattr("__file__") else {
            continue;
        };
        if let Ok(path) = file.extract::<PathBuf>() {
            if let Ok(path) = std::path::absolute(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}
