#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60): the HTTP parser, the
# Proactor's connection state machine, the Redis protocol's session, the Reactor's link
# frames between Redis workers and the keyspace owner. CI runs
# `scripts/fuzz.sh 30`; the long run is `scripts/fuzz.sh 3600`. Corpora grow in
# fuzz/corpus/<target> (seeded from fuzz/seeds/); a finding is saved in
# fuzz/artifacts/<target>/ and the script exits non-zero.
#
# cargo-fuzz needs nightly compiler flags. With a nightly toolchain it is used; otherwise the
# stable compiler is told to accept them (RUSTC_BOOTSTRAP=1): the only toolchain a machine
# here may have is stable.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || ((secs < 1)); then
    echo "usage: scripts/fuzz.sh [SECONDS per target, default 60]" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in http_parser conn_events redis_parser link_frames; do
    mkdir -p "corpus/$target"
    echo "== fuzz $target for ${secs}s"
    status=0
    cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E "^(Done |stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
    if ((status != 0)); then
        tail -n 60 "$log" >&2
        echo "fuzz.sh: $target failed (exit $status); a failing input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
