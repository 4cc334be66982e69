#!/usr/bin/env bash
# Profiles the two node proxies of one binary during a single-stream iperf3 HBONE flow
# (client on node 1 -> web-2 on node 2, examples/demo.yaml): `perf record -g` of both proxy
# processes for SECS seconds, then the share of samples in the kernel vs user space and the top
# symbols. Works for any ztunnel-compatible binary, so two proxies can be compared on the same
# flow.
#
#   bench/profile-pair.sh SECS BIN [OUT]
# Needs root, perf, iperf3 and a release ambit-lab (CARGO_TARGET_DIR or target/).
set -euo pipefail
secs=$1 bin=$2 out=${3:-/tmp/profile-pair.txt}
lab=${CARGO_TARGET_DIR:-target}/release/ambit-lab
topo=$(dirname "$0")/../examples/demo.yaml
tmp=$(mktemp -d)
up=""
cleanup() {
  [ -n "$up" ] && kill -INT "$up" 2>/dev/null && wait "$up" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

setsid "$lab" up "$topo" --proxy "$bin" >"$tmp/up.log" 2>&1 &
up=$!
for _ in $(seq 100); do grep -q "running;" "$tmp/up.log" && break; sleep 0.2; done
run=$(sed -n 's/.*--run \([^ ]*\) .*/\1/p' "$tmp/up.log" | head -1)
[ -n "$run" ] || { echo "lab did not come up: $(cat "$tmp/up.log")" >&2; exit 1; }
pids=$(pgrep -P "$up" | paste -sd, -)
"$lab" exec --run "$run" web-2 -- iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
sleep 0.5
"$lab" exec --run "$run" client -- iperf3 -c 10.244.2.2 -p 5201 -t "$((secs + 2))" -J >"$tmp/iperf.json" 2>&1 &
client=$!
sleep 1
perf record -q -F 999 -g -p "$pids" -o "$tmp/perf.data" -- sleep "$secs" 2>/dev/null
wait "$client" || true
{
  echo "binary: $bin"
  python3 - "$tmp/iperf.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["end"]["sum_received"]
print(f"iperf3: {r['bytes'] * 8 / r['seconds'] / 1e9:.2f} Gbit/s")
EOF
  perf report -i "$tmp/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
  echo "--- top symbols"
  perf report -i "$tmp/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40
} >"$out"
echo "wrote $out"
