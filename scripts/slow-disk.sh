#!/usr/bin/env bash
# A disk that stalls, for the access-log benchmark: mounts at DIR a FUSE filesystem
# (scripts/slowfs.c, a passthrough to a backing directory) where, while the stall is on,
# every K-th write(2) to a file holds the writing thread N ms. The Reactor's write(2) to its
# log blocks its event loop for those N ms; the Proactor's IORING_OP_WRITE goes to an io-wq
# worker and its thread goes on. Writers of the same file queue behind a held write (the
# kernel holds the inode lock across it), io_uring's too (io-wq runs one file's writes one at
# a time); other files' operations, and stat of the held file, go on.
#
#   scripts/slow-disk.sh up DIR [--stall-ms N] [--every K] [--stall-sync] [--off]
#   scripts/slow-disk.sh stall DIR on|off|once [--stall-ms N] [--every K] [--stall-sync|--no-stall-sync]
#   scripts/slow-disk.sh status DIR
#   scripts/slow-disk.sh down DIR
#   scripts/slow-disk.sh check [--stall-ms N] [--every K]
#
# up: mounts (DIR is made if missing, and then removed by down) with the stall on, or off
#   with --off; N defaults to 1000, K to 1 (each write). Refuses a DIR that is a mount point.
#   The K-th, 2K-th, ... write after the stall is turned on is held; with --stall-sync,
#   fsync and fdatasync are held N ms as well. Files live in a backing directory under
#   $SLOW_DISK_STATE (default /var/tmp/slow-disk/, on disk: a benchmark's log can be big),
#   with the compiled helper, its PID and its log; `status` shows where.
# stall: turns the stall on, off, or `once` (the next due write is held, then off), and can
#   change N and K. It returns once applied; `off` also lets go of writes being held, so
#   `stall DIR on; sleep 1; stall DIR off` stalls the disk for one second.
# status: the state and counters (writes seen, writes held, max_write, writeback_cache).
# down: unmounts, ends the helper (by its PID), removes the backing files and what up made.
#   Idempotent; a mount still in use is detached lazily and its open files fail.
# check: a self-test in a temporary directory (mount, measure, unmount); prints the figures
#   and exits 0, or names what failed and exits 1. About 3 N ms plus 7 s.
#
# Write semantics are a local disk's: data reads back exact, O_APPEND appends whole writes
# (several threads or processes), rename (log rotation), create, truncate, fsync. The stall
# is synchronous because FUSE without the writeback cache writes through: write(2) waits for
# the helper's reply. A write(2) over max_write (1 MiB asked; `status` shows it) is split
# into several FUSE writes, each counted. The control file is DIR/.slow-disk (listed in no
# directory): read it for the state, write words to it (`on`, `off`, `once`, `ms=N`,
# `every=K`, `sync=0|1`).
#
# Needs root (mount), /dev/fuse, cc and libfuse3-dev (installed with apt-get when missing),
# and for check python3 (the distribution's /usr/bin/python3 if present; stdlib only).
# Exit status: 2 for usage errors, 1 for failures.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SELF=$HERE/$(basename "$0")
SRC=$HERE/slowfs.c
STATE_ROOT=${SLOW_DISK_STATE:-/var/tmp/slow-disk}
CTL_NAME=.slow-disk
FSTYPE=fuse.slowdisk
MOUNT_WAIT_S=10   # for the mount to appear after the helper starts
EXIT_WAIT_S=5     # for the helper to exit after an unmount or SIGTERM
CTL_TIMEOUT_S=5   # for a read or write of the control file

die() { echo "slow-disk: $*" >&2; exit 1; }
usage() { echo "slow-disk: $*" >&2; echo "usage: see $0 --help" >&2; exit 2; }
help() { sed -n '2,41p' "$SELF" | sed 's/^# \{0,1\}//'; }

need_root() { [ "$(id -u)" = 0 ] || die "needs root (mount(2) of a FUSE filesystem)"; }

# The build needs cc, pkg-config and libfuse3's headers; the mount itself needs /dev/fuse.
ensure_deps() {
  [ -c /dev/fuse ] || die "no /dev/fuse: load the module (modprobe fuse), or give the container the device (--device /dev/fuse)"
  local need=()
  command -v cc >/dev/null || need+=(gcc)
  command -v pkg-config >/dev/null || need+=(pkg-config)
  if ! pkg-config --exists fuse3 2>/dev/null; then need+=(libfuse3-dev); fi
  if ((${#need[@]})); then
    command -v apt-get >/dev/null || die "needs ${need[*]} (no apt-get here: install them by hand)"
    echo "slow-disk: installing ${need[*]}"
    timeout 600 apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${need[@]}" >/dev/null \
      || die "apt-get install ${need[*]} failed"
  fi
}

# Every mount has its own state directory, named after DIR's absolute path.
abs_dir() { realpath -m -- "$1"; }
state_of() { echo "$STATE_ROOT/$(printf '%s' "$1" | sha256sum | cut -c1-16)"; }
# The type of what is mounted exactly at $1, or nothing. findmnt reads /proc/self/mountinfo,
# so it also sees a mount whose helper died (any access to it fails with ENOTCONN).
mount_type() { findmnt -rn -o FSTYPE --mountpoint "$1" 2>/dev/null | tail -n 1 || true; }

# The helper's PID from $1/pid, if that process is still the helper built there (a PID can be
# reused by another process once ours is gone).
helper_pid() {
  local pid
  pid=$(cat "$1/pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$1/slowfs" ] && echo "$pid"
}

# Waits up to EXIT_WAIT_S for the helper $1 to end. A zombie counts as ended (its exe link is
# gone): the helper's parent is whatever adopted it when up's shell exited, and may reap late.
wait_gone() {
  local pid=$1 i
  for ((i = 0; i < EXIT_WAIT_S * 10; i++)); do
    readlink "/proc/$pid/exe" >/dev/null 2>&1 || return 0
    sleep 0.1
  done
  return 1
}

# Parses the stall options into OPT_MS, OPT_EVERY, OPT_SYNC (empty: not given).
OPT_MS="" OPT_EVERY="" OPT_SYNC="" OPT_OFF=0
parse_opts() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --stall-ms)
        if ! [[ ${2:-} =~ ^[0-9]{1,7}$ ]] || [ "$2" -gt 3600000 ]; then usage "--stall-ms takes milliseconds, 0 to 3600000"; fi
        OPT_MS=$2; shift ;;
      --every)
        if ! [[ ${2:-} =~ ^[0-9]{1,9}$ ]] || [ "$2" -lt 1 ]; then usage "--every takes a count, 1 to 999999999"; fi
        OPT_EVERY=$2; shift ;;
      --stall-sync) OPT_SYNC=1 ;;
      --no-stall-sync) OPT_SYNC=0 ;;
      --off) OPT_OFF=1 ;;
      *) usage "unknown argument $1" ;;
    esac
    shift
  done
}

ctl_read() { timeout "$CTL_TIMEOUT_S" cat "$1/$CTL_NAME"; }
ctl_write() {
  # One write(2) carries all the words: the helper applies them together or refuses them.
  printf '%s\n' "$2" | timeout "$CTL_TIMEOUT_S" dd of="$1/$CTL_NAME" status=none 2>/dev/null \
    || die "the control file $1/$CTL_NAME refused '$2' (or did not answer in ${CTL_TIMEOUT_S}s)"
}

cmd_up() {
  [ $# -ge 1 ] || usage "up needs DIR"
  local dir state pid i type
  dir=$(abs_dir "$1"); shift
  parse_opts "$@"
  need_root
  type=$(mount_type "$dir")
  [ -z "$type" ] || die "$dir is already a mount point ($type): scripts/slow-disk.sh down $dir, or pick another DIR"
  [ ! -e "$dir" ] || [ -d "$dir" ] || die "$dir exists and is not a directory"
  state=$(state_of "$dir")
  if [ -d "$state" ]; then
    # Left by an up whose mount is gone (a reboot, a hand umount): its helper, if any, goes.
    if pid=$(helper_pid "$state"); then kill "$pid" 2>/dev/null || true; wait_gone "$pid" || kill -9 "$pid" 2>/dev/null || true; fi
    rm -rf "$state"
  fi
  ensure_deps
  mkdir -p "$state/backing"
  printf '%s\n' "$dir" >"$state/dir"
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    touch "$state/made-dir"
  elif [ -n "$(ls -A "$dir")" ]; then
    echo "slow-disk: note: $dir is not empty; its files are hidden while mounted"
  fi
  local fuse_flags
  read -r -a fuse_flags <<<"$(pkg-config --cflags --libs fuse3)"
  cc -O2 -Wall -o "$state/slowfs" "$SRC" "${fuse_flags[@]}" >"$state/build.log" 2>&1 \
    || { cat "$state/build.log" >&2; rm -rf "$state"; die "building $SRC failed"; }

  local args=("$state/backing" "$dir" --stall-ms "${OPT_MS:-1000}" --every "${OPT_EVERY:-1}")
  [ "$OPT_SYNC" = 1 ] && args+=(--stall-sync)
  [ "$OPT_OFF" = 1 ] || args+=(--on)
  # Its own session, so a hangup of the caller's terminal does not end it (SIGHUP unmounts).
  # setsid execs in place (a background job is no group leader), so $! is the helper.
  setsid "$state/slowfs" "${args[@]}" </dev/null >"$state/slowfs.log" 2>&1 &
  echo $! >"$state/pid"
  for ((i = 0; i < MOUNT_WAIT_S * 10; i++)); do
    [ "$(mount_type "$dir")" = "$FSTYPE" ] && break
    readlink "/proc/$(cat "$state/pid")/exe" >/dev/null 2>&1 || break  # it died (a zombie has no exe)
    sleep 0.1
  done
  if [ "$(mount_type "$dir")" != "$FSTYPE" ] || ! pid=$(helper_pid "$state"); then
    cat "$state/slowfs.log" >&2 || true
    (cmd_down "$dir") >/dev/null 2>&1 || true
    die "the mount at $dir did not come up (the helper ended, or took over ${MOUNT_WAIT_S}s; its log is above)"
  fi
  ctl_read "$dir" >/dev/null || { (cmd_down "$dir") >/dev/null 2>&1 || true; die "the mount at $dir does not answer"; }
  echo "slow-disk: $dir mounted (helper PID $pid, files in $state/backing); stall $([ "$OPT_OFF" = 1 ] && echo off || echo on):" \
    "write 1 of every ${OPT_EVERY:-1} held ${OPT_MS:-1000} ms$([ "$OPT_SYNC" = 1 ] && echo ', fsync too')"
}

# Checks that $1 is a live slow-disk mount.
require_mounted() {
  local type
  type=$(mount_type "$1")
  [ "$type" = "$FSTYPE" ] || die "$1 is no slow-disk mount${type:+ (it is $type)}: scripts/slow-disk.sh up $1"
  helper_pid "$(state_of "$1")" >/dev/null \
    || die "the helper of $1 is gone (its files fail with ENOTCONN): scripts/slow-disk.sh down $1"
}

cmd_stall() {
  [ $# -ge 2 ] || usage "stall needs DIR and on|off|once"
  local dir words
  dir=$(abs_dir "$1")
  case "$2" in on|off|once) words=$2 ;; *) usage "stall takes on, off or once, not $2" ;; esac
  shift 2
  parse_opts "$@"
  [ "$OPT_OFF" = 0 ] || usage "stall takes no --off (say off)"
  require_mounted "$dir"
  [ -n "$OPT_MS" ] && words="ms=$OPT_MS $words"
  [ -n "$OPT_EVERY" ] && words="every=$OPT_EVERY $words"
  [ -n "$OPT_SYNC" ] && words="sync=$OPT_SYNC $words"
  ctl_write "$dir" "$words"
  ctl_read "$dir" | awk '/^(stall|stall_ms|every|once|stall_sync) /{printf "%s%s=%s", n++ ? " " : "slow-disk: ", $1, $2} END{print ""}'
}

cmd_status() {
  [ $# -eq 1 ] || usage "status needs DIR"
  local dir state
  dir=$(abs_dir "$1")
  require_mounted "$dir"
  state=$(state_of "$dir")
  echo "mount $dir"
  echo "helper_pid $(helper_pid "$state" || echo '?')"
  echo "backing $state/backing"
  ctl_read "$dir"
}

cmd_down() {
  [ $# -eq 1 ] || usage "down needs DIR"
  local dir state type pid=""
  dir=$(abs_dir "$1")
  need_root
  state=$(state_of "$dir")
  type=$(mount_type "$dir")
  if [ -n "$type" ] && [ "$type" != "$FSTYPE" ]; then
    die "$dir is mounted, but not by slow-disk ($type): not touching it"
  fi
  if [ -z "$type" ] && [ ! -d "$state" ]; then
    echo "slow-disk: $dir is not mounted; nothing to do"
    return 0
  fi
  pid=$(helper_pid "$state") || pid=""
  # A plain unmount ends the helper's loop; it fails while a file is open (EBUSY). Then
  # SIGTERM the helper: it closes /dev/fuse, which aborts the connection (open files fail
  # with ENOTCONN, a held write with ECONNABORTED), and the mount is detached here.
  local busy=0
  if [ -n "$type" ] && ! timeout 10 umount "$dir" 2>/dev/null; then
    busy=1
    echo "slow-disk: $dir is busy; detaching it (its open files now fail)"
  fi
  if [ -n "$pid" ] && { [ "$busy" = 1 ] || [ -z "$type" ] || ! wait_gone "$pid"; }; then
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" || { kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" || true; }
  fi
  if [ -n "$(mount_type "$dir")" ]; then timeout 10 umount -l "$dir" || die "could not unmount $dir"; fi
  if [ -f "$state/made-dir" ]; then rmdir "$dir" 2>/dev/null || echo "slow-disk: note: $dir is not empty; left in place"; fi
  rm -rf "$state"
  rmdir "$STATE_ROOT" 2>/dev/null || true
  echo "slow-disk: $dir unmounted, helper${pid:+ (PID $pid)} ended, its files removed"
}

cmd_check() {
  parse_opts "$@"
  if [ "$OPT_OFF" = 1 ] || [ -n "$OPT_SYNC" ]; then usage "check takes --stall-ms and --every only"; fi
  need_root
  local py tmp rc=0 ms=${OPT_MS:-1000} every=${OPT_EVERY:-1}
  if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py=$(command -v python3) || die "check needs python3"; fi
  tmp=$(mktemp -d /tmp/slow-disk-check.XXXXXX)
  # shellcheck disable=SC2064 # $tmp is fixed now
  trap "'$SELF' down '$tmp/mnt' >/dev/null 2>&1 || true; rm -rf '$tmp'" EXIT
  echo "== slow-disk check: kernel $(uname -r), libfuse $(pkg-config --modversion fuse3 2>/dev/null || echo '?'), stall $ms ms every $every"
  "$SELF" up "$tmp/mnt" --stall-ms "$ms" --every "$every" --off
  local state
  state=$(state_of "$(abs_dir "$tmp/mnt")")
  # Every stalled step is bounded by the helper; this bounds the whole test.
  timeout $((60 + 6 * ms / 1000)) "$py" - "$tmp/mnt" "$state/backing" "$ms" "$every" <<'PY' || rc=$?
import hashlib, os, random, statistics, sys, threading, time

mnt, backing, MS, EVERY = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
CTL = os.path.join(mnt, ".slow-disk")
failed = []

def control(words):
    with open(CTL, "w") as f:
        f.write(words + "\n")

def state():
    with open(CTL) as f:
        return dict(line.split(" ", 1) for line in f.read().splitlines())

def report(ok, what):
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failed.append(what)

def timed_write(fd, data):
    t = time.perf_counter()
    n = os.write(fd, data)
    ms = (time.perf_counter() - t) * 1e3
    if n != len(data):
        raise OSError(f"short write: {n} of {len(data)}")
    return ms

def opened(name, flags=os.O_WRONLY | os.O_CREAT | os.O_APPEND):
    return os.open(os.path.join(mnt, name), flags, 0o644)

def read(path):
    with open(path, "rb") as f:
        return f.read()

def within(ms, want):
    return 0.8 * want <= ms <= 1.2 * want

s = state()
report(s["writeback_cache"] == "0", f"writeback cache off (write(2) waits for the filesystem); max_write {s['max_write']} bytes")

# 1. Stall off: a 100-byte append is fast.
fd = opened("access.log")
line = b"x" * 99 + b"\n"
off = [timed_write(fd, line) for _ in range(50)]
report(max(off) < 10, f"stall off: 50 writes of 100 bytes: median {statistics.median(off):.3f} ms, max {max(off):.3f} ms (< 10 ms)")

# 2. Stall on: each write held N ms (K = 1 here; --every is step 3).
control(f"on every=1 ms={MS}")
on = [timed_write(fd, line) for _ in range(2)]
report(all(within(m, MS) for m in on), f"stall on: 2 writes of 100 bytes: {', '.join(f'{m:.1f}' for m in on)} ms (want {MS} ms +-20 %)")

# 3. Every K-th write: with K (the one asked, or 3 when that is 1), at a short hold,
#    exactly writes K and 2K of 2K are held.
k = EVERY if EVERY > 1 else 3
hold = 100
control(f"on every={k} ms={hold}")
ts = [timed_write(fd, line) for _ in range(2 * k)]
held = [i + 1 for i, m in enumerate(ts) if m >= 0.8 * hold]
report(held == [k, 2 * k] and all(m < 10 for i, m in enumerate(ts) if i + 1 not in held),
       f"every={k}: of {2 * k} writes those held {hold} ms: {held} (want [{k}, {2 * k}]); the others max "
       f"{max(m for i, m in enumerate(ts) if i + 1 not in held) if len(held) < len(ts) else 0:.3f} ms")

# 4. once: the next write is held, then the stall is off by itself.
control(f"once every=1 ms={MS}")
once = [timed_write(fd, line) for _ in range(2)]
report(within(once[0], MS) and once[1] < 10 and state()["stall"] == "off",
       f"once: {once[0]:.1f} ms then {once[1]:.3f} ms, then stall {state()['stall']}")

# 5. off lets go of a held write; other files' operations go on meanwhile.
control("on ms=5000")
with open(os.path.join(mnt, "other"), "wb") as f:
    f.write(b"other")
out = {}
def held_write():
    out["ms"] = timed_write(fd, line)
t = threading.Thread(target=held_write)
t.start()
time.sleep(0.3)
t0 = time.perf_counter()
os.stat(os.path.join(mnt, "other"))
other = read(os.path.join(mnt, "other"))
side_ms = (time.perf_counter() - t0) * 1e3
control("off")
t.join(10)
report(not t.is_alive() and out.get("ms", 1e9) < 1500 and other == b"other" and side_ms < 10,
       f"a write held 5000 ms returns at `off`: after {out.get('ms', -1):.1f} ms; stat+read of another file meanwhile {side_ms:.3f} ms")
control(f"ms={MS} every={EVERY}")
os.close(fd)

# 6. Appends from 2 processes x 2 threads (each process one O_APPEND fd, as a server's
#    shards share one), with a 5 ms hold every 7th write: whole records, none lost.
def record(p, th, i):
    n = random.Random(p * 1_000_003 + th * 1009 + i).randrange(20, 300)
    head = f"{p} {th} {i:05d} ".encode()
    return head + bytes([97 + (p * 2 + th) % 26]) * (n - len(head) - 1) + b"\n"
PER = 150
control("on ms=5 every=7")
t0 = time.perf_counter()
kids = []
for p in range(2):
    pid = os.fork()
    if pid == 0:
        try:
            cfd = opened("multi.log")
            def writer(th):
                for i in range(PER):
                    os.write(cfd, record(p, th, i))
            ths = [threading.Thread(target=writer, args=(th,)) for th in range(2)]
            [x.start() for x in ths]
            [x.join() for x in ths]
            os._exit(0)
        except BaseException as e:
            print(f"  writer {p}: {e!r}", file=sys.stderr)
            os._exit(1)
    kids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in kids]
dt = time.perf_counter() - t0
control(f"off ms={MS} every={EVERY}")
data = read(os.path.join(mnt, "multi.log"))
want = {(p, th, i): record(p, th, i) for p in range(2) for th in range(2) for i in range(PER)}
lines = data.splitlines(keepends=True)
seen, bad, order_ok = set(), 0, True
last = {}
for ln in lines:
    try:
        p, th, i = (int(x) for x in ln.split(b" ", 3)[:3])
    except ValueError:
        bad += 1
        continue
    if want.get((p, th, i)) != ln:
        bad += 1
        continue
    seen.add((p, th, i))
    order_ok &= last.get((p, th), -1) < i
    last[(p, th)] = i
report(codes == [0, 0] and bad == 0 and len(seen) == len(want) == len(lines) and order_ok
       and len(data) == sum(map(len, want.values())) and read(os.path.join(backing, "multi.log")) == data,
       f"appends, 2 processes x 2 threads x {PER}: {len(lines)} records, {len(data)} bytes, {bad} torn, "
       f"{len(want) - len(seen)} lost, in order per writer {order_ok}, {dt:.2f} s")

# 7. Log rotation: rename while the writer holds the file, then reopen.
fd = opened("rot.log")
os.write(fd, b"A\n")
os.rename(os.path.join(mnt, "rot.log"), os.path.join(mnt, "rot.log.1"))
os.write(fd, b"B\n")
os.close(fd)
fd = opened("rot.log")
os.write(fd, b"C\n")
os.close(fd)
names = sorted(os.listdir(mnt))
report(read(os.path.join(mnt, "rot.log.1")) == b"A\nB\n" and read(os.path.join(mnt, "rot.log")) == b"C\n"
       and read(os.path.join(backing, "rot.log.1")) == b"A\nB\n" and ".slow-disk" not in names,
       f"rename: the open file moves to rot.log.1 and keeps its writes, a new rot.log opens; listing {names}")

# 8. Create, O_TRUNC, ftruncate, truncate, fsync, fdatasync, unlink of an open file.
path = os.path.join(mnt, "trunc")
with open(path, "wb") as f:
    f.write(b"0123456789" * 10)
fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
sizes = [os.fstat(fd).st_size]
os.write(fd, b"abcdefghijklmnop")
os.ftruncate(fd, 10)
sizes.append(os.stat(path).st_size)
os.truncate(path, 0)
sizes.append(os.stat(path).st_size)
os.write(fd, b"end")  # at offset 16: a hole before it, as on any file system
t0 = time.perf_counter(); os.fsync(fd); os.fdatasync(fd); sync_ms = (time.perf_counter() - t0) * 1e3
os.close(fd)
got = read(path)
os.unlink(path)
report(sizes == [0, 10, 0] and got == b"\0" * 16 + b"end" and not os.path.exists(path),
       f"O_TRUNC, ftruncate, truncate sizes {sizes} (want [0, 10, 0]); fsync+fdatasync {sync_ms:.3f} ms; unlink")
control("on sync=1 ms=100")
fd = opened("sync")
t0 = time.perf_counter(); os.fsync(fd); fs_ms = (time.perf_counter() - t0) * 1e3
os.close(fd)
control(f"off sync=0 ms={MS}")
report(within(fs_ms, 100), f"sync=1: fsync held {fs_ms:.1f} ms (want 100 +-20 %)")

# 9. Data reads back exact: 4 MiB of random bytes in random-sized writes and some pwrites,
#    through the mount (a fresh open) and in the backing file; then one 1 MiB write(2)
#    with the stall on is held once (max_write).
rnd = random.Random(7)
blob = bytearray(rnd.randbytes(4 << 20))
fd = opened("blob", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
pos = 0
while pos < len(blob):
    n = min(rnd.randrange(1, 200_000), len(blob) - pos)
    assert os.write(fd, blob[pos:pos + n]) == n
    pos += n
for _ in range(20):
    at, n = rnd.randrange(len(blob)), rnd.randrange(1, 5000)
    patch = rnd.randbytes(n)
    blob[at:at + n] = patch
    os.pwrite(fd, patch, at)
os.close(fd)
h = hashlib.sha256(blob).hexdigest()
report(hashlib.sha256(read(os.path.join(mnt, "blob"))).hexdigest() == h
       and hashlib.sha256(read(os.path.join(backing, "blob"))).hexdigest() == h,
       f"4 MiB random data (random-sized writes, 20 pwrites) reads back exact, via the mount and the backing file")
control("on every=1 ms=50")
before = int(state()["held"])
fd = opened("big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
big_ms = timed_write(fd, bytes(1 << 20))
os.close(fd)
control(f"off every={EVERY} ms={MS}")
big_held = int(state()["held"]) - before
report(big_held == 1, f"one 1 MiB write(2) with a 50 ms stall: held {big_held} time(s), {big_ms:.1f} ms")

s = state()
print(f"  counters: writes {s['writes']}, held {s['held']}, fsync held {s['held_sync']}")
if failed:
    print("slow-disk check: FAILED: " + "; ".join(failed))
    sys.exit(1)
PY
  [ "$rc" = 0 ] || { [ "$rc" = 124 ] && echo "slow-disk check: FAILED: the test did not finish in time"; }
  "$SELF" down "$tmp/mnt"
  local left
  left=$(mount_type "$tmp/mnt")
  if [ -n "$left" ] || [ -e "$state" ]; then
    echo "slow-disk check: FAILED: down left ${left:+the mount }${left:+and }$( [ -e "$state" ] && echo "$state")"
    rc=1
  fi
  "$SELF" down "$tmp/mnt" >/dev/null || { echo "slow-disk check: FAILED: a second down failed"; rc=1; }
  [ "$rc" = 0 ] && echo "slow-disk check: PASS"
  return "$rc"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  stall) shift; cmd_stall "$@" ;;
  status) shift; cmd_status "$@" ;;
  down) shift; cmd_down "$@" ;;
  check) shift; cmd_check "$@" ;;
  -h|--help) help ;;
  "") usage "needs a command: up, stall, status, down, check" ;;
  *) usage "unknown command $1" ;;
esac
