#!/usr/bin/env bash
# Runs every check CI runs: set-up, formatting, lints, all tests (unit and end-to-end).
# Needs root (the end-to-end tests create network namespaces). Works from a fresh clone.
#
# AMBIT_TEST_FEATURES selects the opt-in end-to-end suites of the proxy (Cargo features of the
# root package): "e2e-proxy" (drives the ambit binary), "e2e-proxy-api" (also its library APIs).
# Default: none until the proxy lands on main; then set the default below to e2e-proxy-api.
set -euo pipefail
cd "$(dirname "$0")/.."

features="${AMBIT_TEST_FEATURES:-}"
feature_args=()
if [ -n "$features" ]; then
  feature_args=(--features "$features")
fi

bash scripts/setup.sh

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets "${feature_args[@]}" -- -D warnings

echo "== cargo test"
# Leftovers of a crashed earlier run would not collide (names are unique) but waste memory.
cargo run -q -p ambit-lab -- cleanup
cargo test --workspace "${feature_args[@]}"
