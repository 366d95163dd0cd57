//! An earlier ferrocorn, built once from a commit, for rows that compare ferrocorn with its own
//! past (`Connection: close` hello must not get slower with the event-loop worker).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::servers::Env;
use crate::{cargo, run};

/// The last main with only the one-connection sync worker (before issue 12's event loop).
pub(crate) const SYNC_WORKER_REV: &str = "3b30e3a";

/// A release ferrocorn built from `rev`, kept as `<target>/bench-baseline/ferrocorn-<rev>`
/// next to the current build's target directory and reused by later runs.
pub(crate) fn baseline_ferrocorn(env: &Env, rev: &str) -> Result<PathBuf> {
    let dir = baseline_dir(env)?;
    let binary = dir.join(format!("ferrocorn-{rev}"));
    if binary.exists() {
        return Ok(binary);
    }
    let src = dir.join(format!("src-{rev}"));
    export_tree(&env.root, rev, &src)?;
    let target = dir.join("target");
    run(cargo()
        .args(["build", "--release", "-p", "ferrocorn-cli"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target))?;
    std::fs::copy(target.join("release/ferrocorn"), &binary)
        .with_context(|| format!("keeping the {rev} build as {}", binary.display()))?;
    Ok(binary)
}

/// `<target>/bench-baseline`, where `<target>` holds the current release build.
fn baseline_dir(env: &Env) -> Result<PathBuf> {
    let target = env
        .ferrocorn
        .parent()
        .and_then(Path::parent)
        .context("the release ferrocorn has no target directory")?;
    let dir = target.join("bench-baseline");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The tree of `rev` written out to `dest` (a fresh copy: `git archive | tar -x`).
fn export_tree(repo: &Path, rev: &str, dest: &Path) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    std::fs::create_dir_all(dest)?;
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["archive", "--format=tar", rev])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(archive.stdout.take().context("git archive's output")?)
        .status()
        .context("running tar")?;
    let git = archive.wait()?;
    if !git.success() || !tar.success() {
        bail!("exporting {rev} failed (git archive {git}, tar {tar})");
    }
    Ok(())
}
