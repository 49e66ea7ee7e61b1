#!/usr/bin/env bash
# The whole test suite, as the README states and .ci/run calls it. Installs what the tests
# need first (Kamailio with its TLS module, dnsmasq, promtool, Chromium, sipp, openssl, curl, nftables: Debian
# packages; websockets, h2: PyPI), then runs the lint
# gates and every test,
# benchmarks included in their quick test mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the tests need are installed here, never by hand: Kamailio (the registrar) and
# dnsmasq (NAPTR/SRV/A records) for the registrar tests, promtool (Debian's prometheus) for
# the metrics, headless Chromium for the status page.
command -v cargo >/dev/null || { echo "run-all: cargo is required" >&2; exit 1; }
missing=()
command -v kamailio >/dev/null || missing+=(kamailio)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v promtool >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v sipp >/dev/null || missing+=(sip-tester)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
# nftables drops the peer link's packets (lost SYNs, half-open connections) inside a network
# namespace of the test's own; iproute2 brings that namespace's loopback up.
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
# tests/package.rs: lintian checks the Debian package (it brings dpkg-dev for dpkg-shlibdeps,
# binutils for strip, and man-db).
command -v lintian >/dev/null || missing+=(lintian)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
# tests/cluster.rs: a 3-member etcd (Debian's etcd-server 3.4); the etcd client's gRPC code is
# generated with protoc at build time (cargo feature etcd).
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# Kamailio's TLS module: the OpenSSL-based SIP client of tests/tls.rs.
[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ] || missing+=(kamailio-tls-modules)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The front-end tests' node services and WebSocket client (tests/tools) use Python's websockets.
python3 -c 'import websockets.sync.server' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'websockets>=13'
# tests/tools/h2_hostile.py, the hostile HTTP/2 client, speaks HTTP/2 frames through Python's h2.
python3 -c 'import h2.connection' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'h2>=4'
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

echo "== format"
cargo fmt --check
echo "== lint"
# Both builds: the plain one (README command 1) and the one with cluster mode.
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features etcd -- -D warnings
echo "== tests"
# --all-targets also runs each criterion benchmark once, so a broken bench fails here.
cargo test --all-targets --locked --no-fail-fast --features etcd
echo "== the repository alone"
# CI clones the repository beside the folder it was written from; a test that reads outside
# the repository would pass there and fail for everyone else. Run the tests that read test
# data from a copy of the tracked files with nothing beside it. The copy shares the build
# folder, so only this crate is compiled again.
alone="$(mktemp -d)"
# The copy's build replaces this folder's in the shared build folder, and cargo does not hash
# a path crate's location: without a newer source file here, the next run would reuse test
# binaries whose CARGO_MANIFEST_DIR is the deleted copy. Touch the crate root on the way out.
here="$(pwd)"
trap 'rm -rf "$alone"; touch "$here/src/lib.rs"' EXIT
mkdir "$alone/repo"
# -m: the copy gets fresh timestamps, so cargo compiles this crate from the copy (with its
# own CARGO_MANIFEST_DIR) instead of reusing what was built from this folder.
git ls-files -z | tar --null -T - -cf - | tar -xmf - -C "$alone/repo"
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
(
  cd "$alone/repo"
  export CARGO_TARGET_DIR="$target"
  # One build for all four; the filters pick the tests that read tests/data/rfc4475 and the
  # check for paths that leave the repository.
  cargo test --locked --lib --test self_contained --test fuzz_regressions --test pair \
    -- rfc4475 no_source_reads_outside_the_repository 2>&1 | tee "$alone/log"
)
# Eight tests must have run (the 3 unit tests, the 3 fuzz regression tests that read the
# corpus, the pair's torture test, the path check): a renamed test must not silently drop
# out of this step.
ran="$(grep -o '^test result: ok. [0-9]*' "$alone/log" | awk '{s += $4} END {print s}')"
[ "$ran" -eq 8 ] || { echo "run-all: the copy ran $ran tests instead of 8" >&2; exit 1; }
