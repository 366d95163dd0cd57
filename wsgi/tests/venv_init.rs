//! Starting the interpreter inside a virtualenv (its own test binary: Python starts once per
//! process). The venv is made here with `python3.11 -m venv --without-pip`, so no network needed.

use std::path::PathBuf;
use std::process::Command;

use pyo3::prelude::*;

use ferrocorn_wsgi::{ensure_initialized, load, WsgiConfig};

fn python() -> String {
    std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3.11".into())
}

#[test]
fn interpreter_uses_the_virtualenv() {
    let venv = std::env::temp_dir().join(format!("ferrocorn-venv-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&venv);
    let status = Command::new(python())
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(status.success(), "creating a venv failed");
    // A module only the venv has.
    let site: PathBuf = venv.join(format!(
        "lib/python{}/site-packages",
        ferrocorn_wsgi::venv::BUILT_VERSION
    ));
    std::fs::write(
        site.join("ferrocorn_venv_probe.py"),
        "def app(environ, start_response):\n    pass\n",
    )
    .unwrap();

    let config = WsgiConfig {
        app: "ferrocorn_venv_probe:app".into(),
        virtualenv: Some(venv.clone()),
        ..WsgiConfig::default()
    };
    load(&config).expect("app from the venv's site-packages");
    Python::attach(|py| {
        let sys = py.import("sys").unwrap();
        let prefix: String = sys.getattr("prefix").unwrap().extract().unwrap();
        let base_prefix: String = sys.getattr("base_prefix").unwrap().extract().unwrap();
        assert_eq!(PathBuf::from(&prefix), venv, "sys.prefix is the venv");
        assert_ne!(prefix, base_prefix, "base_prefix is the real installation");
        let path: Vec<String> = sys.getattr("path").unwrap().extract().unwrap();
        assert!(
            path.iter().any(|p| std::path::Path::new(p) == site),
            "{path:?}"
        );
        // Isolated like the venv's own python: no other installation's packages.
        assert!(
            path.iter()
                .filter(|p| p.ends_with("-packages"))
                .all(|p| std::path::Path::new(p).starts_with(&venv)),
            "{path:?}"
        );
        // The venv's python is the interpreter's executable (what subprocesses of the app run).
        let executable: String = sys.getattr("executable").unwrap().extract().unwrap();
        assert_eq!(PathBuf::from(executable), venv.join("bin/python"));
        // The stdlib still comes from the base installation.
        py.import("json").unwrap();
    });
    // Python runs now: another virtualenv cannot be switched to.
    let err = ensure_initialized(Some(&std::env::temp_dir()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already running"), "{err}");
    std::fs::remove_dir_all(&venv).unwrap();
}
