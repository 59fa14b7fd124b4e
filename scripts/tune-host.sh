#!/usr/bin/env bash
# Tunes this host's sysctls for a million loopback connections, printing each value before
# and after; `--restore` puts back exactly what an earlier run changed. Idempotent: running
# it twice changes nothing more, and the originals are saved only once.
#
#   sudo scripts/tune-host.sh            # tune
#   sudo scripts/tune-host.sh --restore  # put back
#
# Values only ever go up: a host already above a value keeps its own. The net.ipv4 TCP keys
# (ports, memory, backlogs, TIME_WAIT, the connection hash) govern TCP over IPv6 as well.
set -euo pipefail

SAVED=${C1M_TUNE_SAVED:-/var/tmp/c1m-tune-host.saved}

# key, wanted value, why
SETTINGS=(
  "net.core.somaxconn|65535|caps every listen backlog; an overflow costs the client a 1 s SYN retransmit"
  "net.ipv4.tcp_max_syn_backlog|65535|half-open connections per listener during the connect ramp"
  "net.core.netdev_max_backlog|65536|loopback packets queue here per CPU; a SYN burst over it is dropped"
  "net.ipv4.tcp_mem|1500000 2000000 3000000|pages of TCP buffers; the default entered memory pressure at 1M pairs"
  "fs.file-max|4000000|every socket is a file: 1M pairs are 2M"
  "net.ipv4.ip_local_port_range|1024 65535|ephemeral ports per (source, destination) pair"
  "net.ipv4.tcp_max_tw_buckets|2000000|TIME_WAIT sockets after the client closes 1M connections"
  "net.ipv4.tcp_max_orphans|1000000|closing sockets no process holds any more"
)

die() { echo "tune-host: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (sysctl -w)"

# Whether $2 is below $1 where it matters: the last number (tcp_mem's max, the range's top),
# and for a range also the first (a lower bottom is a wider range).
wants_raise() {
  local key=$1 want=$2 have=$3
  read -r -a w <<<"$want"; read -r -a h <<<"$have"
  if [ "$key" = net.ipv4.ip_local_port_range ]; then
    [ "${h[0]}" -gt "${w[0]}" ] || [ "${h[-1]}" -lt "${w[-1]}" ]
  else
    [ "${h[-1]}" -lt "${w[-1]}" ]
  fi
}

norm() { echo "$*" | tr -s ' \t' ' '; }

restore() {
  [ -f "$SAVED" ] || { echo "tune-host: nothing to restore ($SAVED not found)"; exit 0; }
  while IFS='|' read -r key value; do
    before=$(norm "$(sysctl -n "$key")")
    sysctl -q -w "$key=$value" >/dev/null
    printf '%-32s %s -> %s\n' "$key" "$before" "$(norm "$(sysctl -n "$key")")"
  done <"$SAVED"
  rm -f "$SAVED"
  echo "tune-host: restored"
}

tune() {
  for s in "${SETTINGS[@]}"; do
    IFS='|' read -r key want why <<<"$s"
    if [ ! -e "/proc/sys/${key//.//}" ]; then
      printf '%-32s (not in this network namespace: set it in the initial one)\n' "$key"
      continue
    fi
    before=$(norm "$(sysctl -n "$key")")
    if wants_raise "$key" "$want" "$before"; then
      # The original is saved once, so a second run cannot overwrite it with a tuned value.
      grep -q "^$key|" "$SAVED" 2>/dev/null || echo "$key|$before" >>"$SAVED"
      sysctl -q -w "$key=$want" >/dev/null
    fi
    printf '%-32s %s -> %s   (%s)\n' "$key" "$before" "$(norm "$(sysctl -n "$key")")" "$why"
  done
  echo "tune-host: originals of what changed are in $SAVED; put them back with --restore"
  cat <<MSG
tune-host: RLIMIT_NOFILE is $(ulimit -Sn) soft / $(ulimit -Hn) hard. Raising the hard limit
  needs CAP_SYS_RESOURCE, which this script does not assume. The programs plan around it:
  uring-server spreads connections over several rings (each ring's fixed-file table is capped
  at the limit), epoll-server runs worker processes (each holds at most the limit), and
  uring-load's connections are direct descriptors that use no fd at all.
MSG
  local ehash
  ehash=$(sysctl -n net.ipv4.tcp_ehash_entries 2>/dev/null) || return 0
  cat <<MSG
tune-host: the established-connection hash table has ${ehash#-} buckets (net.ipv4.tcp_ehash_entries).
  It is sized at boot (thash_entries= on the kernel command line) and no sysctl resizes it;
  with 1M loopback pairs (2M sockets) every packet's lookup walks chains of 2,000,000 /
  buckets sockets. A network namespace created after
  \`sysctl -w net.ipv4.tcp_child_ehash_entries=N\` gets a table of its own: scripts/c1000k.sh
  runs server and load in one.
MSG
}

case "${1:-}" in
  "") tune ;;
  --restore) restore ;;
  -h|--help) sed -n '2,11p' "$0" ;;
  *) die "unknown option $1 (--restore, --help)" ;;
esac
