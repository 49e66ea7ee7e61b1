//! Layering rules that the compiler does not check.
//!
//! The engine is sans-IO: it must not reach for an async runtime, sockets, the clock or an
//! unseeded random source, or its rules stop being testable on a virtual clock.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// Every (file, line number, forbidden word) in `dir`.
fn offences(dir: &Path, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(dir) {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            for word in forbidden {
                if line.contains(word) {
                    found.push(format!("{}:{}: {word}", file.display(), number + 1));
                }
            }
        }
    }
    found
}

const SANS_IO_FORBIDDEN: &[&str] = &[
    "tokio",
    "std::net::TcpStream",
    "std::net::UdpSocket",
    "std::net::TcpListener",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "std::thread",
    "std::fs",
];

#[test]
fn engine_is_sans_io() {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let found = offences(&engine, SANS_IO_FORBIDDEN);
    assert!(
        found.is_empty(),
        "the engine must stay sans-IO:\n{}",
        found.join("\n")
    );
}

/// The words of [`SANS_IO_FORBIDDEN`] in `file`'s code before its unit tests.
fn io_words_in(file: &str) -> Vec<&'static str> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).expect("readable");
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    SANS_IO_FORBIDDEN
        .iter()
        .copied()
        .filter(|word| code.contains(word))
        .collect()
}

#[test]
fn the_store_logic_is_sans_io() {
    let found = io_words_in("src/store/replica.rs");
    assert!(
        found.is_empty(),
        "src/store/replica.rs must stay sans-IO: {found:?}"
    );
}

#[test]
fn the_cluster_election_is_sans_io() {
    // Its unit tests make one instant to start from; the election itself never reads a clock.
    let found = io_words_in("src/cluster/election.rs");
    assert!(
        found.is_empty(),
        "src/cluster/election.rs must stay sans-IO: {found:?}"
    );
}

#[test]
fn engine_uses_no_socket_types_at_all() {
    // `std::net::IpAddr` is a plain value; anything else from std::net would be IO.
    let engine = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let found: Vec<String> = offences(&engine, &["std::net"])
        .into_iter()
        .filter(|hit| {
            let (file, rest) = hit.split_once(':').expect("file:line");
            let number: usize = rest
                .split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("line");
            let text = std::fs::read_to_string(file).expect("readable");
            let line = text.lines().nth(number - 1).unwrap_or_default();
            !line.trim().starts_with("use std::net::IpAddr;")
        })
        .collect();
    assert!(
        found.is_empty(),
        "std::net beyond IpAddr in the engine:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_itself_finds_offences() {
    // A guard that can never fail guards nothing: plant an offence and expect it found.
    let dir = std::env::temp_dir().join(format!("standby-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("bad.rs"),
        "fn f() { let _ = std::time::Instant::now(); }\n",
    )
    .expect("write");
    let found = offences(&dir, SANS_IO_FORBIDDEN);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(found.len(), 1, "{found:?}");
}
