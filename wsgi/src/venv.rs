//! Virtualenv checks done before the interpreter starts: the directory must be a virtualenv
//! (`pyvenv.cfg`) of the Python minor version ferrocorn was built against, since the extension
//! modules in its site-packages are compiled for that ABI.

use std::path::{Path, PathBuf};

use crate::LoadError;

/// `X.Y` of the libpython this crate links (from the build script).
pub const BUILT_VERSION: &str = env!("FERROCORN_PYTHON_VERSION");

/// A virtualenv that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Venv {
    /// The virtualenv directory, absolute.
    pub dir: PathBuf,
    /// `<dir>/bin/python`: given to the interpreter as its executable so that its path
    /// configuration finds `pyvenv.cfg` and sets `sys.prefix` to the venv, as the venv's own
    /// `python` would.
    pub executable: PathBuf,
}

/// The `X.Y` version a `pyvenv.cfg` declares (`version = 3.11.7` from venv, `version_info =
/// 3.11.7.final.0` from virtualenv), if any.
pub fn declared_version(pyvenv_cfg: &str) -> Option<String> {
    let mut found = None;
    for line in pyvenv_cfg.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key == "version" || key == "version_info" {
            let mut parts = value.trim().split('.');
            let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
                continue;
            };
            if major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok() {
                found = Some(format!("{major}.{minor}"));
                // `version` (venv) is authoritative; keep looking only if this was version_info.
                if key == "version" {
                    break;
                }
            }
        }
    }
    found
}

/// Check that `dir` is a virtualenv made for [`BUILT_VERSION`].
pub fn check(dir: &Path) -> Result<Venv, LoadError> {
    let dir = std::path::absolute(dir)
        .map_err(|e| LoadError::Init(format!("virtualenv {}: {e}", dir.display())))?;
    let cfg_path = dir.join("pyvenv.cfg");
    let cfg = std::fs::read_to_string(&cfg_path).map_err(|e| {
        LoadError::Init(format!(
            "{} is not a usable virtualenv: cannot read {}: {e}",
            dir.display(),
            cfg_path.display()
        ))
    })?;
    if let Some(version) = declared_version(&cfg) {
        if version != BUILT_VERSION {
            return Err(LoadError::VenvVersion {
                venv: dir,
                venv_version: version,
                built_version: BUILT_VERSION.to_string(),
            });
        }
    } else {
        log::warn!(
            "{} declares no Python version; assuming it is for Python {BUILT_VERSION}",
            cfg_path.display()
        );
    }
    let executable = dir.join("bin").join("python");
    Ok(Venv { dir, executable })
}
