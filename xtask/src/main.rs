//! `cargo xtask <task>`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `ci`: everything CI runs — the Python test environment, fmt, clippy, every test (the
//!   root-only ones too, when run as root).
//! - `bench`: side-by-side benchmarks (see `bench.rs`).
//! - `soak`: failed requests across reloads, scaling, stops and re-execs (see `soak.rs`).
//! - `fuzz`: run the cargo-fuzz targets for a while.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod baseline;
mod bench;
mod bench_threads;
mod servers;
mod sizing_truth;
mod slowloris;
mod soak;
#[cfg(test)]
mod tidy;
mod wrk;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("bench") => bench::bench(&root, &args[1..]),
        Some("soak") => soak::soak(&root, &args[1..]),
        Some("fuzz") => fuzz(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | bench [--quick] [--sizing-only] [--threads-only] | soak [--seconds S] | fuzz [SECONDS]>"
            );
            std::process::exit(2);
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Run a command, echoing it; fail with its name if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("PYO3_PYTHON", python());
    cmd
}

/// The interpreter ferrocorn embeds; pinned so every build links the same libpython.
fn python() -> String {
    std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3.11".into())
}

fn ci(root: &Path) -> Result<()> {
    run(Command::new(root.join("scripts/python-env.sh")).arg(root.join(".venv")))?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit, property and end-to-end tests (cli/tests run the real binary).
    run(cargo().args(["test", "--workspace", "--all-targets"]))?;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    root_only_tests(root)?;
    eprintln!("ci: all checks passed");
    Ok(())
}

/// Tests that need root (`--user`, chown, cgroups) are `#[ignore = "needs root: ..."]`, so a run as
/// another user lists them as ignored rather than passing them silently. No test is ignored for
/// any other reason (checked here), so as root CI runs every ignored test and demands that as many
/// passed as there are markers.
const ROOT_MARKER: &str = "#[ignore = \"needs root";
/// The same marker in a `harness = false` test's own case list (arbiter/tests/arbiter.rs).
const CUSTOM_HARNESS_ROOT_MARKER: &str = "ignore: Some(\"needs root";

fn root_only_tests(root: &Path) -> Result<()> {
    let marked = count_root_markers(root)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("ci: NOT RUN: {marked} root-only tests (run `cargo xtask ci` as root)");
        return Ok(());
    }
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--tests", "--", "--ignored"]);
    eprintln!("$ {cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!("root-only tests failed");
    }
    let passed: usize = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    if passed != marked {
        bail!("{marked} tests are marked root-only but {passed} ran and passed");
    }
    eprintln!("ci: {passed} root-only tests passed");
    Ok(())
}

/// Count the root-only markers in the workspace's tests, refusing any `#[ignore]` without one.
fn count_root_markers(root: &Path) -> Result<usize> {
    let mut marked = 0;
    for file in tracked_files(root, "*.rs")? {
        if file.starts_with("xtask/") {
            continue;
        }
        let text =
            std::fs::read_to_string(root.join(&file)).with_context(|| format!("reading {file}"))?;
        for line in text.lines().map(str::trim_start) {
            if line.starts_with(ROOT_MARKER) || line.starts_with(CUSTOM_HARNESS_ROOT_MARKER) {
                marked += 1;
            } else if line.starts_with("#[ignore") {
                bail!("{file}: {line}: only root-only tests may be ignored ({ROOT_MARKER}...)");
            }
        }
    }
    Ok(marked)
}

/// The files git tracks matching `pattern`, relative to `root`.
fn tracked_files(root: &Path, pattern: &str) -> Result<Vec<String>> {
    let out = Command::new("git")
        .args(["ls-files", pattern])
        .current_dir(root)
        .output()
        .context("listing the sources with git")?;
    if !out.status.success() {
        bail!(
            "git ls-files failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Run each cargo-fuzz target for `SECONDS` (default 60) on the stable toolchain (`-s none`),
/// seeding the corpora from gunicorn's request vectors first.
fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let seconds = args.first().map(String::as_str).unwrap_or("60");
    let installed = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    run(Command::new(python()).arg(root.join("fuzz/seeds.py")))?;
    for target in ["head_parser", "chunked_decoder"] {
        run(cargo()
            .args(["fuzz", "run", "-s", "none", "-a", target, "--"])
            .args([
                format!("-max_total_time={seconds}"),
                format!("-dict={}", root.join("fuzz/http.dict").display()),
            ]))?;
    }
    Ok(())
}
