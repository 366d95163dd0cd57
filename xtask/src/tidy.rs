//! Tidy checks, run as tests (`cargo test -p xtask`, part of `cargo xtask ci`): cheap rules over
//! the sources that review would otherwise have to remember.

use std::path::Path;

use crate::{count_root_markers, repo_root, tracked_files};

/// The tracked files ending in `ext`, with their text.
fn sources(ext: &str) -> Vec<(String, String)> {
    let root = repo_root();
    tracked_files(&root, &format!("*.{ext}"))
        .unwrap()
        .into_iter()
        .filter(|file| !file.starts_with("fuzz/"))
        .map(|file| {
            let text = std::fs::read_to_string(root.join(&file)).unwrap();
            (file, text)
        })
        .collect()
}

fn assert_no_offenders(rule: &str, offenders: &[String]) {
    assert!(
        offenders.is_empty(),
        "{rule}:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn every_crate_root_starts_with_an_overview() {
    let offenders: Vec<String> = sources("rs")
        .into_iter()
        .filter(|(file, _)| {
            file.ends_with("src/lib.rs")
                || file.ends_with("src/main.rs")
                || file.contains("/src/bin/")
        })
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(file, _)| file)
        .collect();
    assert_no_offenders("crate roots without a //! overview", &offenders);
}

/// clippy's `undocumented_unsafe_blocks` covers `unsafe {}` and `unsafe impl`; an `unsafe fn`
/// needs its contract written down too (`# Safety` in its docs, or a `// SAFETY:` comment).
#[test]
fn every_unsafe_fn_states_its_contract() {
    let mut offenders = Vec::new();
    for (file, text) in sources("rs") {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            let declares = ["unsafe fn ", "pub unsafe fn ", "pub(crate) unsafe fn "]
                .iter()
                .any(|p| code.starts_with(p));
            if !declares {
                continue;
            }
            let above = &lines[i.saturating_sub(12)..i];
            let documented = above
                .iter()
                .any(|l| l.contains("# Safety") || l.contains("SAFETY:"));
            if !documented {
                offenders.push(format!("{file}:{}: {code}", i + 1));
            }
        }
    }
    assert_no_offenders("unsafe fns without a # Safety / SAFETY: note", &offenders);
}

/// A skip that passes is a defect: tests that need root are `#[ignore = "needs root: ..."]`, which
/// `cargo xtask ci` runs when root and counts.
#[test]
fn no_test_skips_silently() {
    count_root_markers(&repo_root()).expect("every #[ignore] says it needs root");
    let mut offenders = Vec::new();
    for (file, text) in sources("rs") {
        if !file.contains("/tests/") {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            if lower.contains("println!(\"skip") || lower.contains("eprintln!(\"skip") {
                offenders.push(format!("{file}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert_no_offenders("tests that print a skip and pass", &offenders);
}

/// The end-to-end tests share testkit's one polling loop and one response parser rather than
/// growing their own. A clock that bounds load or watches a window (something must *not* happen
/// for a while) is no wait: its line says so with `// tidy: not a wait`.
#[test]
fn tests_on_the_testkit_use_its_wait_loop_and_parser() {
    let dirs = ["cli/tests/", "examples/rust/tests/", "worker/tests/"];
    let banned = [
        (
            "Instant::now() +",
            "a deadline loop (use testkit::poll / wait_until)",
        ),
        (
            "fn parse_response",
            "an HTTP response parser (use testkit's)",
        ),
        (
            "fn read_response(&mut self",
            "an HTTP response reader (use testkit::Client)",
        ),
        (
            "temp_dir().join(",
            "a temp path (use testkit::TempDir / unique_temp_path)",
        ),
    ];
    let mut offenders = Vec::new();
    for (file, text) in sources("rs") {
        if !dirs.iter().any(|d| file.starts_with(d)) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            if line.contains("// tidy: not a wait") {
                continue;
            }
            for (needle, what) in banned {
                if line.contains(needle) {
                    offenders.push(format!("{file}:{}: {what}: {}", i + 1, line.trim()));
                }
            }
        }
    }
    assert_no_offenders("test-local copies of testkit helpers", &offenders);
}

/// Only ferrocorn-wsgi links Python; the master and the Rust examples must never pull it in.
#[test]
fn only_the_wsgi_crate_depends_on_pyo3_and_examples_never_on_wsgi() {
    let mut offenders = Vec::new();
    for (file, text) in sources("toml") {
        if !file.ends_with("Cargo.toml") || file == "Cargo.toml" {
            continue;
        }
        let deps = |name: &str| text.lines().any(|l| l.trim_start().starts_with(name));
        if deps("pyo3") && file != "wsgi/Cargo.toml" {
            offenders.push(format!("{file}: depends on pyo3"));
        }
        let may_link_python = ["wsgi/Cargo.toml", "cli/Cargo.toml"].contains(&file.as_str());
        if deps("ferrocorn-wsgi") && !may_link_python {
            offenders.push(format!("{file}: depends on ferrocorn-wsgi"));
        }
    }
    assert_no_offenders("crates that would link libpython", &offenders);
}

#[test]
fn the_architecture_map_names_every_crate() {
    let root = repo_root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let offenders: Vec<String> = sources("toml")
        .into_iter()
        .filter(|(file, _)| file.ends_with("/Cargo.toml"))
        .map(|(file, _)| file.trim_end_matches("Cargo.toml").to_string())
        .filter(|dir| Path::new(dir).components().count() > 0 && !map.contains(&format!("`{dir}`")))
        .collect();
    assert_no_offenders(
        "crate folders ARCHITECTURE.md does not describe",
        &offenders,
    );
}
