#!/usr/bin/env bash
# The main job: builds ambit and ambit-lab (release), then runs `ambit-lab demo`: a two-node
# ambient mesh in network namespaces (examples/demo.yaml), traffic along every kind of flow, and a
# report per flow (path, bytes, the address and identity the server side saw). Exits 0 only if
# every flow did what the mesh should. Extra arguments go to `ambit-lab demo` (e.g. --keep,
# --mode shared, --proxy /path/to/ztunnel-compatible-binary). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
echo "== building ambit and ambit-lab (release)"
cargo build -q --release -p ambit --bin ambit -p ambit-lab --bin ambit-lab
exec "${CARGO_TARGET_DIR:-target}/release/ambit-lab" demo "$@"
