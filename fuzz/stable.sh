#!/usr/bin/env bash
# Coverage-guided libFuzzer on the stable toolchain, without cargo-fuzz or nightly: the
# instrumentation cargo-fuzz asks for is plain `-C` codegen flags; only AddressSanitizer needs
# nightly, and safe Rust does not need it to find panics. `--target` keeps the flags off build
# scripts and proc macros.
#
#   bash fuzz/stable.sh <target> [seconds]     e.g. bash fuzz/stable.sh socks5 300
#
# New inputs go to target/fuzz-stable/corpus/<target> (copy the interesting ones into
# fuzz/corpus/<target>/); a crash is saved under target/fuzz-stable/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
target="${1:?usage: fuzz/stable.sh <target> [seconds]}"
seconds="${2:-60}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
out=../target/fuzz-stable
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions \
-Coverflow-checks -Copt-level=1"
CARGO_TARGET_DIR="$out" cargo build --target "$triple" --bin "$target"
mkdir -p "$out/corpus/$target" "$out/artifacts/$target"
exec "$out/$triple/debug/$target" "$out/corpus/$target" "corpus/$target" \
    -max_total_time="$seconds" -artifact_prefix="$out/artifacts/$target/" -print_final_stats=1
