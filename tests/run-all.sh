#!/usr/bin/env bash
# The whole test suite, as the README states and .ci/run calls it. Installs what the tests
# need first (nothing beyond the Rust toolchain yet; later suites add sipp, kamailio, ...),
# then runs the lint gates and every test, benchmarks included in their quick test mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the tests need are installed here, never by hand (none yet beyond cargo).
command -v cargo >/dev/null || { echo "run-all: cargo is required" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

echo "== format"
cargo fmt --check
echo "== lint"
cargo clippy --all-targets --locked -- -D warnings
echo "== tests"
# --all-targets also runs each criterion benchmark once, so a broken bench fails here.
cargo test --all-targets --locked --no-fail-fast
