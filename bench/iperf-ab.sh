#!/usr/bin/env bash
# Focused A/B of HBONE single-stream throughput: alternates the given proxy binaries (A B B A ...)
# on a fresh `ambit-lab up` each, runs one iperf3 stream client -> web-2 (node 1 -> node 2) for
# SECS seconds, and prints Gbit/s and the node proxies' CPU seconds per GB (utime+stime from
# /proc). Longer and steadier than `ambit-bench --quick` for throughput-only changes.
#
#   bench/iperf-ab.sh ROUNDS SECS LABEL=BIN [LABEL=BIN ...]
# (BIN may be a wrapper script that sets environment and execs the proxy.)
# Needs root, iperf3, and a release build of ambit-lab (CARGO_TARGET_DIR or target/).
set -euo pipefail
rounds=$1 secs=$2
shift 2
lab=${CARGO_TARGET_DIR:-target}/release/ambit-lab
topo=$(dirname "$0")/../examples/demo.yaml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tick=$(getconf CLK_TCK)

cpu_ticks() { # sum of utime+stime of the given pids
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

one() { # label bin
  local label=$1 bin=$2 log="$tmp/up.log" run pids before after
  setsid "$lab" up "$topo" --proxy "$bin" >"$log" 2>&1 &
  local up=$!
  for _ in $(seq 100); do grep -q "running;" "$log" && break; sleep 0.2; done
  run=$(sed -n 's/.*--run \([^ ]*\) .*/\1/p' "$log" | head -1)
  pids=$(pgrep -P "$up" | tr "\n" " ")
  "$lab" exec --run "$run" web-2 -- iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  sleep 0.5
  before=$(cpu_ticks $pids)
  "$lab" exec --run "$run" client -- iperf3 -c 10.244.2.2 -p 5201 -t "$secs" -J >"$tmp/out.json" 2>&1 || true
  after=$(cpu_ticks $pids)
  kill -INT "$up"; wait "$up" || true
  python3 - "$tmp/out.json" "$label" "$((after - before))" "$tick" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
bytes_ = d["end"]["sum_received"]["bytes"]; secs = d["end"]["sum_received"]["seconds"]
cpu = int(sys.argv[3]) / int(sys.argv[4])
print(f"{sys.argv[2]:>10} {bytes_*8/secs/1e9:6.2f} Gbit/s  {cpu/(bytes_/1e9):5.2f} CPU s/GB")
EOF
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  subjects=("$@")
  if (( r % 2 == 0 )); then # reverse order on even rounds
    subjects=(); for ((i = $# ; i > 0 ; i--)); do subjects+=("${!i}"); done
  fi
  for s in "${subjects[@]}"; do one "${s%%=*}" "${s#*=}"; done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
