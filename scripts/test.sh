#!/usr/bin/env bash
# Runs every check CI runs: set-up, formatting, lints, all tests (unit and end-to-end).
# Needs root (the end-to-end tests create network namespaces). Works from a fresh clone.

set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# A CI runner starts from a cold cache and builds each workspace crate once per profile:
# incremental compilation's bookkeeping only costs time there. Developers keep it.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
fi

echo "== deploy (chart renders to the plain manifests; Kubernetes schema validation)"
bash deploy/check.sh

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo deny (deny.toml: licenses, bans, sources; advisories only where GitHub answers)"
cargo deny check --hide-inclusion-graph licenses bans sources
if timeout 20 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  cargo deny check --hide-inclusion-graph advisories
else
  echo "cargo deny: advisories not checked: the RustSec database (github.com) is unreachable"
fi

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
