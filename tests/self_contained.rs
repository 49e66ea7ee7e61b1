//! The repository stands alone: nothing in its sources, tests, benchmarks, fuzzing or CI
//! reads a path outside it.
//!
//! CI clones the repository next to the reference folder it was written from, so a test that
//! reads `../something` passes there and fails for everyone else. This test looks for such
//! paths in the files; `tests/run-all.sh` also runs the tests that read test data from a copy
//! of the repository with nothing beside it, which no path in a string can fool.

use std::path::{Component, Path, PathBuf};

/// The folders (and files) whose contents are code, scripts or build instructions.
const CHECKED: &[&str] = &[
    "src",
    "tests",
    "bench",
    "fuzz",
    ".ci",
    "config",
    "Cargo.toml",
    "clippy.toml",
];

/// Folders under those that hold data or build output, not code.
const SKIPPED: &[&str] = &[
    "tests/data",
    "fuzz/target",
    "fuzz/corpus",
    "fuzz/artifacts",
    "fuzz/seeds",
    "fuzz/regressions",
    "config/state",
    // This file: its own test plants offences in strings.
    "tests/self_contained.rs",
];

/// Rust's ways of naming a file relative to the file that names it.
const FILE_RELATIVE: &[&str] = &["include!(", "include_str!(", "include_bytes!(", "#[path"];

/// Absolute places that exist on a developer's or CI machine but not in a clone.
const FOREIGN_ABSOLUTE: &[&str] = &["/work/", "/root/", "/home/"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(root: &Path, relative: &Path, found: &mut Vec<PathBuf>) {
    if SKIPPED.iter().any(|skip| relative == Path::new(skip)) {
        return;
    }
    let path = root.join(relative);
    if path.is_file() {
        found.push(relative.to_owned());
        return;
    }
    let Ok(entries) = std::fs::read_dir(&path) else {
        return;
    };
    for entry in entries.flatten() {
        files(root, &relative.join(entry.file_name()), found);
    }
}

/// Whether `path`, taken relative to `base` (both inside the repository), leaves it.
fn leaves(base: &Path, path: &str) -> bool {
    let mut depth: i64 = base.components().count() as i64;
    for component in Path::new(path).components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// The path-like word around byte `at` of `line`.
fn word_at(line: &str, at: usize) -> &str {
    let is_path = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-');
    let start = line[..at].rfind(|c: char| !is_path(c)).map_or(0, |i| i + 1);
    let end = line[at..]
        .find(|c: char| !is_path(c))
        .map_or(line.len(), |i| at + i);
    &line[start..end]
}

/// Every `file:line: path` in `root` that reaches outside it.
fn offences(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut checked = Vec::new();
    for top in CHECKED {
        files(root, Path::new(top), &mut checked);
    }
    for relative in checked {
        let Ok(text) = std::fs::read_to_string(root.join(&relative)) else {
            continue; // binary data
        };
        let folder = relative.parent().unwrap_or(Path::new(""));
        for (number, line) in text.lines().enumerate() {
            let mut report = |what: &str| {
                found.push(format!("{}:{}: {what}", relative.display(), number + 1));
            };
            for (at, _) in line.match_indices("../") {
                let word = word_at(line, at);
                // include!/#[path] name a file from the including file's folder; every other
                // path (tests, scripts, CARGO_MANIFEST_DIR) is taken from the repository root.
                let base = if FILE_RELATIVE.iter().any(|m| line.contains(m)) {
                    folder
                } else {
                    Path::new("")
                };
                if leaves(base, word) {
                    report(word);
                }
            }
            for absolute in FOREIGN_ABSOLUTE {
                if let Some(at) = line.find(absolute) {
                    report(word_at(line, at));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn no_source_reads_outside_the_repository() {
    let found = offences(&repo());
    assert!(
        found.is_empty(),
        "paths leaving the repository (copy what the tests need into it):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_paths_that_leave() {
    // A guard that can never fail guards nothing: plant offences and expect each one found.
    let root = std::env::temp_dir().join(format!("standby-contained-{}", std::process::id()));
    let tests = root.join("tests");
    std::fs::create_dir_all(tests.join("data")).expect("temp dir");
    // The planted path is put together here, so this file itself names no such path.
    let outside = ["..", "shared", "testdata", "rfc4475"].join("/");
    std::fs::write(
        tests.join("reads.rs"),
        format!(
            "let a = root.join(\"{outside}\");\n{}",
            concat!(
                "let b = \"/work/shared/seeds\";\n",
                "#[path = \"../fuzz/checks.rs\"] mod inside;\n",
                "let c = \"a/../b\";\n",
                "include!(\"../../outside.rs\");\n",
            )
        ),
    )
    .expect("write");
    // Data folders are not code: a path in them is not read by anything.
    std::fs::write(tests.join("data/x.txt"), "../../elsewhere\n").expect("write");
    let found = offences(&root);
    std::fs::remove_dir_all(&root).ok();
    assert_eq!(
        found,
        [
            format!("tests/reads.rs:1: {outside}").as_str(),
            "tests/reads.rs:2: /work/shared/seeds",
            "tests/reads.rs:5: ../../outside.rs",
        ]
    );
}
