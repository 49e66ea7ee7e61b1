//! Every input that once made a fuzz target fail, kept in fuzz/regressions/<target>/, runs
//! through the same checks as the fuzzer (fuzz/checks.rs), as do the fuzzers' seeds: the
//! RFC 4475 torture messages and the seeds in fuzz/seeds/<target>.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            path.is_file() && name != "README.md" && !name.starts_with('.')
        })
        .collect();
    files.sort();
    files
}

fn run(dir: &Path, check: fn(&[u8])) -> usize {
    let files = files(dir);
    for path in &files {
        let data = std::fs::read(path).expect("readable");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails again", path.display());
    }
    files.len()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn sip_front_regressions_and_rfc4475_seeds_pass() {
    run(
        &root().join("fuzz/regressions/sip_front"),
        checks::sip_front,
    );
    let seeds = run(&root().join("tests/data/rfc4475"), checks::sip_front);
    assert!(seeds >= 50, "the RFC 4475 corpus is missing");
}

#[test]
fn peer_frame_regressions_and_seeds_pass() {
    run(
        &root().join("fuzz/regressions/peer_frame"),
        checks::peer_frame,
    );
    let seeds = run(&root().join("fuzz/seeds/peer_frame"), checks::peer_frame);
    assert!(seeds >= 3);
}

#[test]
fn sip_stream_regressions_seeds_and_rfc4475_pass() {
    run(
        &root().join("fuzz/regressions/sip_stream"),
        checks::sip_stream,
    );
    let seeds = run(&root().join("fuzz/seeds/sip_stream"), checks::sip_stream);
    let corpus = run(&root().join("tests/data/rfc4475"), checks::sip_stream);
    assert!(seeds >= 2 && corpus >= 50);
}

#[test]
fn prober_stream_regressions_and_rfc4475_seeds_pass() {
    run(
        &root().join("fuzz/regressions/prober_stream"),
        checks::prober_stream,
    );
    run(&root().join("fuzz/seeds/sip_stream"), checks::prober_stream);
    let corpus = run(&root().join("tests/data/rfc4475"), checks::prober_stream);
    assert!(corpus >= 50);
}
