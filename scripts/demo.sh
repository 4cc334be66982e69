#!/usr/bin/env bash
# The main job on the embedded default: two pod namespaces, one dedicated-mode ambit in each with
# the built-in CA and a local config, curl in the client pod fetching from a server in the other
# pod through outbound capture -> HBONE (mTLS, HTTP/2 CONNECT) -> inbound. Prints the path, the
# bytes, and the identity and source address the server side saw; removes everything on exit.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
echo "== building ambit and ambit-lab"
cargo build -q --bin ambit -p ambit --bin ambit-lab -p ambit-lab
target="${CARGO_TARGET_DIR:-target}/debug"
ambit="$target/ambit"
lab="$target/ambit-lab"

run="ambit-lab-$$-demo"
client="$run-client"
server="$run-server"
work="$(mktemp -d /tmp/ambit-demo.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$client" 2>/dev/null || true
  ip netns del "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== pods: $client (10.1.0.2, fd00:1::2) <-veth-> $server (10.1.0.3, fd00:1::3)"
ip netns add "$client"
ip netns add "$server"
for ns in "$client" "$server"; do ip -n "$ns" link set lo up; done
ip -n "$client" link add eth0 type veth peer name eth0 netns "$server"
ip -n "$client" addr add 10.1.0.2/24 dev eth0
ip -n "$client" -6 addr add fd00:1::2/64 dev eth0 nodad
ip -n "$server" addr add 10.1.0.3/24 dev eth0
ip -n "$server" -6 addr add fd00:1::3/64 dev eth0 nodad
ip -n "$client" link set eth0 up
ip -n "$server" link set eth0 up

# Redirection: capture in the client pod, original-source return path in the server pod.
"$lab" rules capture | ip netns exec "$client" nft -f -
"$lab" rules return-path | ip netns exec "$server" nft -f -
for fam in -4 -6; do ip -n "$server" "$fam" rule add fwmark 0x111 lookup 100; done
ip -n "$server" -4 route add local 0.0.0.0/0 dev lo table 100
ip -n "$server" -6 route add local ::/0 dev lo table 100
for k in all default lo; do ip netns exec "$server" sysctl -qw "net.ipv4.conf.$k.rp_filter=0"; done

cat >"$work/local.yaml" <<'YAML'
workloads:
- uid: cluster1//v1/Pod/a/client
  name: client
  namespace: a
  serviceAccount: client
  workloadIps: ["10.1.0.2", "fd00:1::2"]
  protocol: HBONE
- uid: cluster1//v1/Pod/b/server
  name: server
  namespace: b
  serviceAccount: server
  workloadIps: ["10.1.0.3", "fd00:1::3"]
  protocol: HBONE
YAML

start_ambit() { # ns workload-info log
  ip netns exec "$1" env PROXY_MODE=dedicated PROXY_WORKLOAD_INFO="$2" FAKE_CA=true CA_ADDRESS= \
    XDS_ADDRESS= LOCAL_XDS_PATH="$work/local.yaml" AMBIT_CA_DIR="$work/ca" PACKET_MARK=1337 \
    RUST_LOG=info "$ambit" >"$3" 2>&1 &
  pids+=($!)
}
wait_ready() { # ns log pid
  for _ in $(seq 100); do
    if ! kill -0 "$3" 2>/dev/null; then
      echo "demo: ambit in $1 exited before it was ready; its log:" >&2
      tail -n 20 "$2" >&2
      exit 1
    fi
    if ip netns exec "$1" curl -s -o /dev/null -m 1 -w '%{http_code}' http://127.0.0.1:15021/healthz/ready | grep -q 200; then
      return 0
    fi
    sleep 0.1
  done
  echo "demo: ambit in $1 not ready after 10 s; its log:" >&2
  tail -n 20 "$2" >&2
  exit 1
}

echo "== starting ambit (dedicated mode, built-in CA) in both pods"
start_ambit "$server" b/server/server "$work/server-ambit.log"
server_pid=$!
start_ambit "$client" a/client/client "$work/client-ambit.log"
client_pid=$!
wait_ready "$server" "$work/server-ambit.log" "$server_pid"
wait_ready "$client" "$work/client-ambit.log" "$client_pid"

# The app: reads the request line, answers with the source address it saw (socat sets
# SOCAT_PEERADDR). One listener per family, so each address is printed in its own form.
cat >"$work/app.sh" <<'APP'
#!/bin/sh
read -r request
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from the server pod; you are %s\n' "$SOCAT_PEERADDR"
APP
ip netns exec "$server" socat TCP4-LISTEN:8080,bind=10.1.0.3,fork,reuseaddr \
  EXEC:"sh $work/app.sh" >"$work/app4.log" 2>&1 &
pids+=($!)
ip netns exec "$server" socat TCP6-LISTEN:8080,bind=[fd00:1::3],ipv6only=1,fork,reuseaddr \
  EXEC:"sh $work/app.sh" >"$work/app6.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  [ "$(ip netns exec "$server" ss -Hltn 'sport = :8080' | wc -l)" -ge 2 ] && break
  sleep 0.1
done

for url in http://10.1.0.3:8080/ "http://[fd00:1::3]:8080/"; do
  echo
  echo "== curl $url in the client pod"
  body="$(ip netns exec "$client" curl -sS -m 10 -w '\n(%{size_download} bytes downloaded, %{size_upload} uploaded)' "$url")"
  echo "$body"
done

echo
echo "== path: client pod -> nftables redirect -> ambit :15001 -> HBONE mTLS to server :15008 -> app :8080"
echo "== the server-side ambit's access log (identity it saw):"
grep -E 'access' "$work/server-ambit.log" | tail -n 4 || echo "(no access log lines)"
echo "== HBONE metrics"
ip netns exec "$client" curl -s -m 5 http://127.0.0.1:15020/metrics | grep -E '^ambit_hbone_connections_opened_total' || true
ip netns exec "$server" curl -s -m 5 http://127.0.0.1:15020/metrics | grep -E '^ambit_hbone_inbound_handshakes_total' || true
