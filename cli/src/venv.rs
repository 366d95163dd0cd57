//! Which virtualenv the app runs in, found as gunicorn's is: `--virtualenv` first, then the
//! virtualenv this `ferrocorn` is installed in (a gunicorn in a venv runs there without
//! activation, e.g. a systemd unit calling `/srv/app/venv/bin/gunicorn`), then `$VIRTUAL_ENV`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The virtualenv of `VENV/bin/ferrocorn`, judged by how the program was started (`argv[0]`,
/// looked up in `$PATH` when it has no slash): `/proc/self/exe` would resolve a symlink into the
/// venv to the file it points to.
pub(crate) fn installed_in() -> Option<PathBuf> {
    let argv0 = PathBuf::from(std::env::args_os().next()?);
    let program = if argv0.components().count() > 1 {
        argv0
    } else {
        in_path(&argv0, std::env::var_os("PATH")?)?
    };
    venv_of(&std::path::absolute(program).ok()?)
}

/// `VENV` for `VENV/bin/NAME` when `VENV/pyvenv.cfg` exists.
fn venv_of(program: &Path) -> Option<PathBuf> {
    let venv = program.parent()?.parent()?;
    venv.join("pyvenv.cfg")
        .is_file()
        .then(|| venv.to_path_buf())
}

/// The first `DIR/name` in a `$PATH`-style list that is a file.
fn in_path(name: &Path, path: OsString) -> Option<PathBuf> {
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `$VIRTUAL_ENV` when set and not empty.
pub(crate) fn activated() -> Option<PathBuf> {
    std::env::var_os("VIRTUAL_ENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_in_a_venvs_bin_belongs_to_that_venv() {
        let root = std::env::temp_dir().join(format!("ferrocorn-venv-of-{}", std::process::id()));
        std::fs::create_dir_all(root.join("venv/bin")).unwrap();
        std::fs::write(root.join("venv/bin/ferrocorn"), "").unwrap();
        assert_eq!(
            venv_of(&root.join("venv/bin/ferrocorn")),
            None,
            "no pyvenv.cfg yet"
        );
        std::fs::write(root.join("venv/pyvenv.cfg"), "version = 3.11.7\n").unwrap();
        assert_eq!(
            venv_of(&root.join("venv/bin/ferrocorn")),
            Some(root.join("venv"))
        );
        let path = std::env::join_paths([root.join("nowhere"), root.join("venv/bin")]).unwrap();
        assert_eq!(
            in_path(Path::new("ferrocorn"), path),
            Some(root.join("venv/bin/ferrocorn"))
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
