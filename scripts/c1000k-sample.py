#!/usr/bin/env python3
"""Samples a server (a PID and its children) every second until stopped: CPU % of the cores
it may use, resident memory, kernel TCP memory, and the share of RAM in use. One JSON object
per line on stdout: {"t", "cpu_pct", "rss_kb", "tcp_mem_kb", "mem_pct"}."""
import json, os, sys, time

pid, cores = int(sys.argv[1]), int(sys.argv[2])
hz = os.sysconf("SC_CLK_TCK")
page_kb = os.sysconf("SC_PAGE_SIZE") // 1024


def family():
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    return [pid] + [int(k) for k in kids]


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(") ", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError):
            pass
    return total


def rss_kb(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def meminfo():
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        m[k] = int(v.split()[0])
    return m


def tcp_mem_kb():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1]) * page_kb
    return 0


start = time.time()
prev_t, prev_ticks = start, cpu_ticks(family())
while os.path.exists(f"/proc/{pid}"):
    time.sleep(1)
    now, pids = time.time(), family()
    ticks = cpu_ticks(pids)
    m = meminfo()
    print(json.dumps({
        "t": round(now - start, 1),
        "cpu_pct": round((ticks - prev_ticks) / hz / (now - prev_t) / cores * 100, 1),
        "rss_kb": rss_kb(pids),
        "tcp_mem_kb": tcp_mem_kb(),
        "mem_pct": round((m["MemTotal"] - m["MemAvailable"]) / m["MemTotal"] * 100, 1),
    }), flush=True)
    prev_t, prev_ticks = now, ticks
