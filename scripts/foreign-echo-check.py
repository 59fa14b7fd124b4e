#!/usr/bin/env python3
"""A foreign echo client: checks any echo server with code that is not ours.

Several processes (each process is capped by RLIMIT_NOFILE) open their share of the
connections over the given ports, wait at a barrier until *all* connections of all processes
are open, then send random bytes on every connection and check that exactly those bytes come
back. Prints one summary line; exits 1 on any failure.

    scripts/foreign-echo-check.py --conns 100000 --ports 6000-6049 --procs 8
"""
import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import sys
import time


def parse_ports(spec):
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


async def worker(idx, conns, ports, host, size, barrier, results):
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    sem = asyncio.Semaphore(256)
    streams, failed = [], 0

    async def connect(i):
        nonlocal failed
        async with sem:
            try:
                streams.append(await asyncio.open_connection(host, ports[i % len(ports)]))
            except OSError:
                failed += 1

    await asyncio.gather(*(connect(idx * conns + i) for i in range(conns)))
    # Every process holds all of its connections here before anyone sends a byte.
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)

    async def echo(r, w):
        data = os.urandom(size)
        w.write(data)
        await w.drain()
        got = await r.readexactly(size)
        w.close()
        return got == data

    ok = 0
    for start in range(0, len(streams), 2000):
        batch = streams[start:start + 2000]
        res = await asyncio.gather(*(echo(r, w) for r, w in batch), return_exceptions=True)
        ok += sum(1 for x in res if x is True)
    results.put((len(streams), failed, ok))


def run(idx, conns, ports, host, size, barrier, results):
    asyncio.run(worker(idx, conns, ports, host, size, barrier, results))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=100000)
    ap.add_argument("--ports", default="6000-6049")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    ports = parse_ports(a.ports)
    per = a.conns // a.procs
    barrier, results = mp.Barrier(a.procs), mp.Queue()
    t0 = time.time()
    procs = [mp.Process(target=run, args=(i, per, ports, a.host, a.size, barrier, results)) for i in range(a.procs)]
    for p in procs:
        p.start()
    totals = [0, 0, 0]
    for _ in procs:
        for k, v in enumerate(results.get(timeout=600)):
            totals[k] += v
    for p in procs:
        p.join()
    est, failed, ok = totals
    print(f"foreign-echo-check: {est} connections held at once ({failed} failed), "
          f"{ok} echoed exactly ({a.size} random bytes each), {time.time() - t0:.1f}s")
    sys.exit(0 if est == per * a.procs and ok == est else 1)


if __name__ == "__main__":
    main()
