#!/usr/bin/env bash
# C1000K: one million concurrent connections on this host, against the classic bar: the
# server holds 1,000,000 connections, answers more than 50,000 requests/s, its CPU stays
# under 60 % and memory under 80 %.
#
#   scripts/c1000k.sh [uring|epoll|both] [--conns N] [--rate R] [--duration S] [--batch-usec U]
#                     [--host-netns] [--ipv6] [--proto redis [--appendfsync P]]
#
# Builds the release binaries, tunes the host (scripts/tune-host.sh; put back at the end,
# whatever happens), starts the server on ports 6000-6049 planned for the connections, and
# runs uring-load with the heartbeat workload (--rate requests/s spread over every
# connection, open loop) for --duration seconds after all are up. Samples the server's CPU
# (of the cores it may use) and memory every second, prints a report with PASS or FAIL, and
# writes bench/results/c1000k-<date>-<engine>.json. Needs root (sysctls) and python3.
# Server and load run in a network namespace the script creates (and deletes), whose
# established-connection hash table is sized for both sides' sockets
# (net.ipv4.tcp_child_ehash_entries, Linux 6.1+): the host's own table is sized at boot, and
# at 2M loopback sockets its chains are long (262,144 buckets here: 8 sockets a chain).
# --host-netns runs in the host's namespace instead; it needs iproute2's `ip` otherwise.
# --batch-usec U (default 10000; 0: off) batches the waits of the server (either engine) and
# of uring-load: once an event is there, each shard waits up to U microseconds for more.
# At 1M connections each shard sees a few hundred events a second, so unbatched every
# request wakes a sleeping thread on each side. Measured here with io_uring at 25,000 req/s
# (interleaved, bench/results/c1000k-ab-2026-11-23.md): server CPU 39.5/38.6 % ->
# 32.7/34.1 %, client CPU -16 %, p50 latency 2 ms -> 15 ms.
# --ipv6 runs it over IPv6: the server on ::, uring-load to ::1 (instead of 0.0.0.0 and
# 127.0.0.1). The arithmetic is the same for both families: one source address reaches 50
# ports x the ephemeral range (IPv6 takes its ports from net.ipv4.ip_local_port_range too),
# 1.4M at the default 28,232 and 3.2M once widened, so no --sources are needed (beyond that,
# IPv4 loopback has all of 127.0.0.0/8, IPv6 only ::1).
# --proto redis runs the notes' whole bar: the server speaks Redis, each heartbeat is a SET
# of that connection's own key with a TTL (uring-load --ratio 1:0 --key-maximum CONNS
# --key-ttl 120), every reply checked, and the server writes an access log line per command
# and the append-only file (--appendfsync P, default everysec) to disk. epoll-server's worker
# processes cannot share memory: its keyspace, file and log are one more process's, the keyspace
# owner, to which the workers proxy their Redis connections (one thread there runs every
# command).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINES=both CONNS=1000000 RATE=55000 DURATION=60 BATCH=10000 PORTS=6000-6049 NETNS=1 LISTEN=0.0.0.0 HOST=127.0.0.1 PROTO=echo FSYNC=everysec
while [ $# -gt 0 ]; do
  case "$1" in
    uring|epoll|both) ENGINES=$1 ;;
    --conns) CONNS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --batch-usec) BATCH=$2; shift ;;
    --host-netns) NETNS=0 ;;
    --ipv6) LISTEN=:: HOST=::1 ;;
    --proto) PROTO=$2; shift ;;
    --appendfsync) FSYNC=$2; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "c1000k: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$ENGINES" = both ] && ENGINES="uring epoll"
case "$PROTO" in
  echo) SUFFIX="" ;;
  redis) SUFFIX=-redis ;;
  *) echo "c1000k: --proto is echo or redis" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "c1000k: needs root (the sysctls)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "c1000k: needs python3" >&2; exit 1; }
CHILD_EHASH=/proc/sys/net/ipv4/tcp_child_ehash_entries
if [ "$NETNS" = 1 ] && [ ! -e "$CHILD_EHASH" ]; then
  echo "c1000k: this kernel cannot size a namespace's connection hash ($CHILD_EHASH: Linux 6.1+); running in the host's namespace"
  NETNS=0
fi
if [ "$NETNS" = 1 ] && ! command -v ip >/dev/null; then
  echo "c1000k: needs iproute2's ip for its network namespace (or pass --host-netns)" >&2; exit 1
fi

TMP=$(mktemp -d /tmp/c1000k.XXXXXX)
export C1M_TUNE_SAVED=$TMP/tune.saved
SERVER_PID="" SAMPLER_PID="" LOAD_PID="" NS="" IN_NS=()
cleanup() {
  for p in $LOAD_PID $SAMPLER_PID $SERVER_PID; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$NS" ]; then ip netns del "$NS" || true; fi
  scripts/tune-host.sh --restore | sed 's/^/  /'
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "== building"
cargo build --release --bins -q
echo "== tuning the host (put back at the end)"
scripts/tune-host.sh | sed 's/^/  /'
HOST_EHASH=$(sysctl -n net.ipv4.tcp_ehash_entries 2>/dev/null || echo 0)
EHASH=$HOST_EHASH
if [ "$NETNS" = 1 ]; then
  # Both sides' sockets, a power of two, at most the kernel's 16M.
  EHASH=1
  while [ "$EHASH" -lt $((2 * CONNS)) ] && [ "$EHASH" -lt $((1 << 24)) ]; do EHASH=$((EHASH * 2)); done
  NS=c1m-$$
  child_before=$(cat "$CHILD_EHASH")
  echo "$EHASH" >"$CHILD_EHASH"
  ip netns add "$NS" || { echo "$child_before" >"$CHILD_EHASH"; NS=""; exit 1; }
  # Read only when a namespace is created: put back at once.
  echo "$child_before" >"$CHILD_EHASH"
  ip -n "$NS" link set lo up
  IN_NS=(ip netns exec "$NS")
  echo "== network namespace $NS: $(ip netns exec "$NS" sysctl -n net.ipv4.tcp_ehash_entries)-bucket established hash (the host's: $HOST_EHASH); its own sysctls:"
  # Its per-namespace sysctls start at the defaults; they go with it.
  "${IN_NS[@]}" env C1M_TUNE_SAVED="$TMP/tune-ns.saved" scripts/tune-host.sh \
    | grep -v "not in this network namespace\|originals of what\|^tune-host: RLIMIT\|^  " | sed 's/^/  /'
fi

DATE=$(date +%Y-%m-%d) KERNEL=$(uname -r) COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src scripts Cargo.toml Cargo.lock 2>/dev/null || COMMIT=$COMMIT-dirty
CORES=$(nproc)
mkdir -p bench/results
overall=0
for ENGINE in $ENGINES; do
  echo "== $ENGINE: server on $LISTEN ports $PORTS planned for $CONNS connections"
  SERVER_ARGS=(--host "$LISTEN" --ports "$PORTS" --max-conns "$CONNS" --batch-usec "$BATCH" --stats-json "$TMP/server.json")
  LOAD_ARGS=()
  if [ "$PROTO" = redis ]; then
    rm -f "$TMP/access.log" "$TMP/appendonly.aof"
    SERVER_ARGS+=(--proto redis --access-log "$TMP/access.log" --appendonly "$TMP/appendonly.aof" --appendfsync "$FSYNC")
    LOAD_ARGS=(--proto redis --ratio 1:0 --key-maximum "$CONNS" --key-ttl 120)
  fi
  "${IN_NS[@]}" target/release/$ENGINE-server "${SERVER_ARGS[@]}" >"$TMP/server.out" 2>"$TMP/server.err" &
  SERVER_PID=$!
  for _ in $(seq 600); do
    grep -q "^listening on" "$TMP/server.out" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/server.err" >&2; exit 1; }
    sleep 0.1
  done
  sed 's/^/  /' "$TMP/server.err"; head -1 "$TMP/server.out" | sed 's/^/  /'
  python3 scripts/c1000k-sample.py "$SERVER_PID" "$CORES" >"$TMP/samples.jsonl" &
  SAMPLER_PID=$!
  echo "== $ENGINE: uring-load --host $HOST --conns $CONNS --rate $RATE --duration $DURATION --batch-usec $BATCH ${LOAD_ARGS[*]}"
  set +e
  timeout 600 "${IN_NS[@]}" target/release/uring-load --host "$HOST" --ports "$PORTS" --conns "$CONNS" --rate "$RATE" \
    --duration "$DURATION" --batch-usec "$BATCH" --json "$TMP/load.json" --allow-partial "${LOAD_ARGS[@]}" 2>&1 | sed -u 's/^/  /'
  set -e
  kill -TERM "$SERVER_PID"
  for _ in $(seq 600); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  SERVER_PID="" SAMPLER_PID=""
  tail -1 "$TMP/server.out" | sed 's/^/  /'
  OUT=bench/results/c1000k-$DATE-$ENGINE$SUFFIX.json
  python3 - "$TMP" "$ENGINE" "$CONNS" "$RATE" "$DURATION" "$DATE" "$KERNEL" "$COMMIT" "$OUT" "$CORES" "$BATCH" "$NETNS" "$EHASH" "$HOST_EHASH" "$HOST" "$PROTO" "$FSYNC" <<'PY' || overall=1
import json, os, sys
tmp, engine, conns, rate, duration, date, kernel, commit, out, cores, batch, netns, ehash, host_ehash, host, proto, fsync = sys.argv[1:]
conns = int(conns)
load = json.load(open(f"{tmp}/load.json"))
samples = [json.loads(l) for l in open(f"{tmp}/samples.jsonl") if l.strip()]
# CPU is judged while the heartbeat runs: after every connection is up, before the close.
ramp = load["ramp_s"]
steady = [s for s in samples if ramp + 2 <= s["t"] <= ramp + float(duration)] or samples
cpu_max = max(s["cpu_pct"] for s in steady)
cpu_mean = round(sum(s["cpu_pct"] for s in steady) / len(steady), 1)
ramp_cpu_max = max((s["cpu_pct"] for s in samples if s["t"] < ramp + 2), default=0)
mem_max = max(s["mem_pct"] for s in samples)
rss_max = max(s["rss_kb"] for s in samples)
tcp_max = max(s["tcp_mem_kb"] for s in samples)
checks = {
    "conns_established": load["conns_established"] == conns,
    "conns_failed": load["conns_failed"] == 0,
    "errors": not load["errors"],
    "throughput_over_50000": load["throughput_rps"] > 50000,
    "cpu_under_60": cpu_max < 60,
    "mem_under_80": mem_max < 80,
}
disk = {}
if proto == "redis":
    # Every command answered has its access log line and its record in the append-only
    # file, on disk once the server has stopped.
    totals = json.load(open(f"{tmp}/server.json"))["totals"]
    log_lines = sum(1 for _ in open(f"{tmp}/access.log", "rb"))
    records = open(f"{tmp}/appendonly.aof", "rb").read().count(b"*5\r\n$3\r\nSET\r\n")
    disk = {"requests": totals["requests"], "log_lines": log_lines, "aof_records": records,
            "aof_bytes": os.path.getsize(f"{tmp}/appendonly.aof"), "aof_syncs": totals["aof_syncs"],
            "log_errors": totals["log_errors"], "aof_errors": totals["aof_errors"]}
    checks["a_log_line_per_command"] = log_lines == totals["requests"] and totals["log_errors"] == 0
    checks["an_aof_record_per_set"] = records == totals["requests"] and totals["aof_errors"] == 0
result = {
    "engine": engine, "date": date, "kernel": kernel, "commit": commit,
    "command": f"scripts/c1000k.sh {engine} --conns {conns} --rate {rate} --duration {duration} --batch-usec {batch}"
    + ("" if netns == "1" else " --host-netns") + (" --ipv6" if ":" in host else "")
    + (f" --proto redis --appendfsync {fsync}" if proto == "redis" else ""),
    "proto": proto, "disk": disk,
    "host": host, "own_netns": netns == "1", "ehash_buckets": int(ehash), "host_ehash_buckets": int(host_ehash),
    "conns_requested": conns, "conns_established": load["conns_established"],
    "conns_failed": load["conns_failed"], "errors": load["errors"],
    "time_to_establish_s": load["ramp_s"], "throughput_rps": load["throughput_rps"],
    "latency_us": load["latency_us"], "latency_uncorrected_us": load["latency_uncorrected_us"],
    "server_cpu_pct_max": cpu_max, "server_cpu_pct_mean": cpu_mean, "server_cpu_pct_max_during_ramp": ramp_cpu_max,
    "server_rss_mb_max": round(rss_max / 1024), "kernel_tcp_mem_mb_max": round(tcp_max / 1024),
    "mem_pct_max": mem_max, "checks": checks, "pass": all(checks.values()),
    "server_cpu_pct_samples": [s["cpu_pct"] for s in steady],
}
json.dump(result, open(out, "w"), indent=2)
l = load["latency_us"]
print(f"""
  C1000K {engine}{' (Redis: a SET, a log line and an AOF record per heartbeat)' if proto == 'redis' else ''}: {'PASS' if result['pass'] else 'FAIL'}
  namespace     {'its own, with' if netns == '1' else "the host's:"} a {int(ehash):,}-bucket established hash; over {host}
  connections   {load['conns_established']:,} of {conns:,} established in {load['ramp_s']:.1f}s, {load['conns_failed']} failed, errors {load['errors'] or 'none'}
  throughput    {load['throughput_rps']:,.0f} req/s over {duration}s (asked {int(rate):,})
  latency       p50 {l['p50']} us, p99 {l['p99']} us, p99.9 {l['p999']} us, max {l['max']} us
  server CPU    max {cpu_max}% of its {cores} cores while serving, mean {cpu_mean}% ({ramp_cpu_max}% max during the ramp)
  memory        max {mem_max}% of RAM in use; server RSS max {rss_max // 1024} MB; kernel TCP memory max {tcp_max // 1024} MB
  checks        {', '.join(k + ('' if v else ' FAILED') for k, v in checks.items())}{chr(10) + '  disk          ' + json.dumps(disk) if disk else ''}
  wrote {out}""")
sys.exit(0 if result["pass"] else 1)
PY
done
exit $overall
