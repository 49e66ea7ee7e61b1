#!/usr/bin/env bash
# The whole test suite, as the README states and .ci/run calls it. Installs what the tests
# need first (Kamailio and dnsmasq, from Debian), then runs the lint gates and every test,
# benchmarks included in their quick test mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the tests need are installed here, never by hand: Kamailio (the registrar) and
# dnsmasq (NAPTR/SRV/A records) for the registrar tests.
command -v cargo >/dev/null || { echo "run-all: cargo is required" >&2; exit 1; }
if ! command -v kamailio >/dev/null || ! command -v dnsmasq >/dev/null; then
  echo "== installing kamailio and dnsmasq"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq kamailio dnsmasq-base >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

echo "== format"
cargo fmt --check
echo "== lint"
cargo clippy --all-targets --locked -- -D warnings
echo "== tests"
# --all-targets also runs each criterion benchmark once, so a broken bench fails here.
cargo test --all-targets --locked --no-fail-fast
