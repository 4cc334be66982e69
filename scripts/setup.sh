#!/usr/bin/env bash
# Installs what ambit's tests, lab and benchmarks need on a fresh Debian machine.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nftables iproute2 curl iperf3 netcat-openbsd socat iputils-ping procps ca-certificates
  prometheus kubectl python3-pip dnsutils make gcc)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]} (run as root or with sudo)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The deploy check validates manifests against the Kubernetes schemas (PyPI package).
if ! command -v kubernetes-validate >/dev/null; then
  echo "setup: installing kubernetes-validate"
  pip3 install -q kubernetes-validate 2>/dev/null || pip3 install -q --break-system-packages kubernetes-validate
fi

# The toolchain pinned in rust-toolchain.toml, with rustfmt and clippy. Machines of this kind
# have one toolchain, installed as `stable`, and cannot download another: when `stable` is the
# pinned release it is registered under the pinned name (nothing fetched); otherwise rustup is
# asked to install it, which needs the network.
channel="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
if command -v rustup >/dev/null && ! rustup run "$channel" rustc --version >/dev/null 2>&1; then
  stable="$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}')"
  if [ "$stable" = "$channel" ]; then
    # `rustup toolchain link` refuses official release names, so the name is a symlink.
    echo "setup: registering the installed stable toolchain as $channel"
    host="$(rustup run stable rustc -vV | sed -n 's/^host: //p')"
    toolchains="${RUSTUP_HOME:-$HOME/.rustup}/toolchains"
    ln -sfn "$toolchains/stable-$host" "$toolchains/$channel-$host"
  else
    echo "setup: installing Rust $channel (stable here is ${stable:-missing})"
    rustup toolchain install "$channel" --profile minimal --component rustfmt,clippy
  fi
fi

# License, ban and source checks of the dependency graph (deny.toml); built from crates.io
# (about 4 minutes on 2 cores, once per machine).
if ! command -v cargo-deny >/dev/null; then
  echo "setup: installing cargo-deny"
  cargo install --locked --quiet cargo-deny --version "~0.20"
fi

for tool in nft ip curl iperf3 nc socat sysctl promtool prometheus kubectl kubernetes-validate dig cargo-deny; do
  command -v "$tool" >/dev/null || { echo "setup: $tool still missing after install" >&2; exit 1; }
done
echo "setup: ok"
