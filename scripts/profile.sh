#!/usr/bin/env bash
# Where each engine's CPU per request goes: one shard pinned to core 0, `uring-load --rate R
# --conns N` pinned to core 1, `perf record -g` on the server for 5 s of steady load, engines
# alternating. Prints per run the server's CPU per request (user+sys over its life, perf
# running) and its perf samples in buckets (kernel TCP/IP, io_uring, epoll, scheduler,
# syscall entry, user space, other), each also in us per request.
#
#   scripts/profile.sh [--rate R] [--conns N] [--reps K]
#
# Needs perf and `cargo build --release` first; run on an otherwise quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=60000 conns=500 reps=2
while [[ $# -gt 0 ]]; do
    case $1 in
        --rate) rate=$2 ;; --conns) conns=$2 ;; --reps) reps=$2 ;;
        *) echo "usage: $0 [--rate R] [--conns N] [--reps K]" >&2; exit 2 ;;
    esac
    shift 2
done
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
bin=target/release
for b in uring-server epoll-server uring-load; do
    [[ -x $bin/$b ]] || { echo "$bin/$b missing: run cargo build --release" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "# profile: $(date -u +%F) kernel $(uname -r) commit $(git rev-parse --short HEAD)$(git diff --quiet -- src || echo -dirty)"
echo "# $0 --rate $rate --conns $conns --reps $reps"
port=$((7400 + RANDOM % 500))
for rep in $(seq 1 "$reps"); do
    for eng in uring epoll; do
        port=$((port + 1))
        taskset -c 0 "$bin/$eng-server" --cores 1 --ports "$port" \
            --stats-json "$tmp/server.json" >"$tmp/server.out" 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do grep -q listening "$tmp/server.out" && break; sleep 0.1; done
        grep -q listening "$tmp/server.out" || { cat "$tmp/server.out" >&2; kill "$pid"; exit 1; }
        taskset -c 1 "$bin/uring-load" --ports "$port" --conns "$conns" --rate "$rate" \
            --duration 8 --warmup 1 >/dev/null 2>&1 &
        load=$!
        sleep 2
        perf record -g -p "$pid" -o "$tmp/perf.data" -- sleep 5 >/dev/null 2>&1
        wait "$load"
        kill -TERM "$pid"
        wait "$pid" || { echo "$eng-server exited with $?" >&2; exit 1; }
        perf report -i "$tmp/perf.data" --no-children --sort dso,sym -g none 2>/dev/null \
            >"$tmp/report.txt"
        python3 - "$eng" "$tmp" <<'PY'
import json, re, sys
eng, tmp = sys.argv[1:3]
srv = json.load(open(f"{tmp}/server.json"))
cpu = (srv["cpu_user_s"] + srv["cpu_sys_s"]) * 1e6 / (srv["totals"]["bytes_out"] / 64)
buckets = [
    ("kernel TCP/IP, softirq, copies, skb alloc", r"(tcp|__tcp|ip_|__ip|inet|__inet|sk_|__sk|skb|__skb|sock_def|sock_rfree|sock_wfree|dev_|__dev|net_|__net|netif|__netif|bbr|loopback|napi|__napi|validate_xmit|eth_|lock_sock|release_sock|_copy_to_iter|_copy_from_iter|copy_|__check_object|__alloc_skb|kmem_cache|__kmalloc|kfree|__kfree|__local_bh|do_softirq|__do_softirq|handle_softirqs|process_backlog|ktime|read_tsc)"),
    ("io_uring", r"(io_|__io)"),
    ("epoll", r"(ep_|__ep|do_epoll|epoll)"),
    ("scheduler, wake-ups, timers", r"(finish_task_switch|__schedule|schedule|pick_|enqueue|dequeue|try_to_wake|ttwu|update_|select_task|psi_|__wake_up|wake_up|hrtimer|__hrtimer|switch_mm|__switch_to|prepare_task_switch|set_next|put_prev|raw_spin_rq|sched_)"),
    ("syscall entry, files", r"(do_syscall|entry_SYSCALL|syscall_|__x64_sys|ksys_|vfs_|fdget|fput|__fget|sock_read_iter|sock_write_iter|rw_verify|fsnotify|__fsnotify|security_|x64_sys_call|sock_recvmsg|sock_sendmsg|__sys_|__sock_|rcu_|exit_to_user|arch_exit|__rseq|rseq)"),
]
totals = {}
for line in open(f"{tmp}/report.txt"):
    m = re.match(r"\s+([\d.]+)%\s+\S+\s+\[(.)\]\s+(\S+)", line)
    if not m:
        continue
    pct, kind, sym = float(m[1]), m[2], m[3]
    name = "user space" if kind == "." else next(
        (n for n, rx in buckets if re.match(rx, sym)), "other (mostly the irq-restore of wake-ups)")
    totals[name] = totals.get(name, 0) + pct
print(f"{eng}: server CPU {cpu:.2f} us/req (perf running)")
for name, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f"  {pct:5.1f} %  {pct * cpu / 100:5.2f} us/req  {name}")
PY
    done
done
