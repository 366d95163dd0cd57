//! Virtualenv checks that run before Python starts (no interpreter needed).

use std::fs;

use ferrocorn_wsgi::venv::{check, declared_version, BUILT_VERSION};
use ferrocorn_wsgi::LoadError;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrocorn-venv-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn declared_version_reads_venv_and_virtualenv_formats() {
    assert_eq!(
        declared_version("home = /usr/bin\nversion = 3.11.7\n").as_deref(),
        Some("3.11")
    );
    assert_eq!(
        declared_version("home = /usr\nversion_info = 3.12.1.final.0\n").as_deref(),
        Some("3.12")
    );
    // venv's `version` wins over virtualenv's `version_info` whatever the order.
    assert_eq!(
        declared_version("version_info = 3.9.0.final.0\nversion = 3.10.2\n").as_deref(),
        Some("3.10")
    );
    assert_eq!(
        declared_version("home = /usr/bin\ninclude-system-site-packages = false\n"),
        None
    );
    assert_eq!(declared_version("version = banana\n"), None);
}

#[test]
fn venv_of_another_minor_version_is_refused_naming_both() {
    let dir = temp_dir("other");
    let other = if BUILT_VERSION == "3.12" {
        "3.13.0"
    } else {
        "3.12.4"
    };
    fs::write(
        dir.join("pyvenv.cfg"),
        format!("home = /usr/bin\nversion = {other}\n"),
    )
    .unwrap();
    let err = check(&dir).unwrap_err();
    assert!(matches!(err, LoadError::VenvVersion { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&other[..4]), "{msg}");
    assert!(msg.contains(BUILT_VERSION), "{msg}");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
}

#[test]
fn venv_of_the_built_version_is_accepted() {
    let dir = temp_dir("same");
    fs::write(
        dir.join("pyvenv.cfg"),
        format!("home = /usr/bin\nversion = {BUILT_VERSION}.1\n"),
    )
    .unwrap();
    let venv = check(&dir).unwrap();
    assert_eq!(venv.executable, dir.join("bin/python"));
}

#[test]
fn directory_without_pyvenv_cfg_is_not_a_venv() {
    let dir = temp_dir("none");
    let msg = check(&dir).unwrap_err().to_string();
    assert!(msg.contains("pyvenv.cfg"), "{msg}");
    assert!(msg.contains("not a usable virtualenv"), "{msg}");
}
