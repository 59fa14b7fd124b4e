#!/usr/bin/env bash
# The --batch-usec sweep behind each engine's default: one shard pinned to core 0, uring-load
# pinned to core 1 at a fixed rate, engines and settings alternating run by run. Prints one line
# per run: server CPU (user+sys over the server's life, from /proc) per request answered, the
# load's p50/p99 (from each request's due time), and the server's syscalls per request.
#
#   scripts/batch-sweep.sh [--rate R] [--conns N] [--reps K] [--duration S] [--ports P]
#                          [--max-conns M] [CONFIG ...]
#   CONFIG is ENGINE:USEC, e.g. uring:0 uring:200 epoll:0 epoll:50 (the default set), or
#   uring:USEC:RINGS for `--rings-per-thread RINGS`: with --max-conns above what one ring's
#   table holds, the core's rings on one thread (0) against a thread per ring (1), e.g.
#   scripts/batch-sweep.sh --conns 100000 --max-conns 100000 --ports 40 --rate 40000 \
#       uring:200:0 uring:200:1 epoll:0
#
# Needs `cargo build --release` first; run on an otherwise quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=60000 conns=500 reps=3 dur=5 nports=1 max_conns=
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
        --rate) rate=$2 ;; --conns) conns=$2 ;; --reps) reps=$2 ;; --duration) dur=$2 ;;
        --ports) nports=$2 ;; --max-conns) max_conns=$2 ;;
        *) echo "usage: $0 [--rate R] [--conns N] [--reps K] [--duration S] [--ports P] [--max-conns M] [ENGINE:USEC[:RINGS] ...]" >&2; exit 2 ;;
    esac
    shift 2
done
configs=("$@")
((${#configs[@]})) || configs=(uring:0 uring:100 uring:200 uring:300 epoll:0 epoll:50)
bin=target/release
for b in uring-server epoll-server uring-load; do
    [[ -x $bin/$b ]] || { echo "$bin/$b missing: run cargo build --release" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "# batch sweep: $(date -u +%F) kernel $(uname -r) commit $(git rev-parse --short HEAD)$(git diff --quiet -- src || echo -dirty)"
echo "# $0 --rate $rate --conns $conns --reps $reps --duration $dur --ports $nports${max_conns:+ --max-conns $max_conns} ${configs[*]}"
port=$((7400 + RANDOM % 500))
for rep in $(seq 1 "$reps"); do
    for cfg in "${configs[@]}"; do
        IFS=: read -r eng usec rings <<<"$cfg"
        port=$((port + nports))
        ports=$port-$((port + nports - 1))
        extra=()
        [[ -n $max_conns ]] && extra+=(--max-conns "$max_conns")
        [[ -n $rings ]] && extra+=(--rings-per-thread "$rings")
        taskset -c 0 "$bin/$eng-server" --cores 1 --ports "$ports" --batch-usec "$usec" \
            "${extra[@]}" --stats-json "$tmp/server.json" >"$tmp/server.out" 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do grep -q listening "$tmp/server.out" && break; sleep 0.1; done
        grep -q listening "$tmp/server.out" || { cat "$tmp/server.out" >&2; kill "$pid"; exit 1; }
        load_rc=0
        taskset -c 1 "$bin/uring-load" --ports "$ports" --conns "$conns" --rate "$rate" \
            --duration "$dur" --warmup 1 --json "$tmp/load.json" >/dev/null 2>&1 || load_rc=$?
        kill -TERM "$pid"
        wait "$pid" || { echo "$eng-server exited with $?" >&2; exit 1; }
        python3 - "$eng" "$usec" "$tmp" "$load_rc" "$rings" <<'PY'
import json, sys
eng, usec, tmp, rc, rings = sys.argv[1:6]
load = json.load(open(f"{tmp}/load.json"))
srv = json.load(open(f"{tmp}/server.json"))
t = srv["totals"]
cpu = srv["cpu_user_s"] + srv["cpu_sys_s"]
reqs = t["bytes_out"] / load["size"]
lat = load["latency_us"]
print(f"{eng:5} batch {int(usec):4} us" + (f" rings/thread {rings}" if rings else "") + f"  req/s {load['throughput_rps']:8.0f}  "
      f"cpu {cpu * 1e6 / reqs:6.2f} us/req  p50 {lat['p50']:6} us  p99 {lat['p99']:6} us  "
      f"syscalls {t['syscalls'] / reqs:.3f}/req"
      + ("" if rc == "0" else f"  (uring-load exit {rc}: {load['errors']})"))
PY
    done
done
