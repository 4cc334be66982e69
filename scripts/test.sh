#!/usr/bin/env bash
# Runs every check CI runs: set-up, formatting, lints, all tests (unit and end-to-end).
# Needs root (the end-to-end tests create network namespaces). Works from a fresh clone.

set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== deploy (chart renders to the plain manifests; Kubernetes schema validation)"
bash deploy/check.sh

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
# Leftovers of a crashed earlier run would not collide (names are unique) but waste memory.
cargo run -q -p ambit-lab -- cleanup
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"

echo "== benchmark smoke (ambit-bench --quick, against the debug ambit that cargo test built: a release build would double CI time)"
cargo run -q -p ambit-bench -- --quick --proxy-binary "${CARGO_TARGET_DIR:-target}/debug/ambit" --out "${CARGO_TARGET_DIR:-target}/bench-quick"

# One closing line for the whole run, summed over every test binary of `cargo test`.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$test_log"
