#!/usr/bin/env python3
"""How long this machine stops a process that only spins: the floor under every tail latency.

    taskset -c 0 python3 benches/pauses.py [SECONDS]

Spins for SECONDS (default 8) reading the monotonic clock and reports every gap over 1 ms
between two consecutive reads. Run it with nothing else on the core: a gap is then time the
process was not running at all (a hypervisor pause, a kernel thread), which no server can hide.
Bounded: stops by itself.
"""
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
end = time.perf_counter() + seconds
last = time.perf_counter()
gaps = []
while last < end:
    now = time.perf_counter()
    if now - last > 0.001:
        gaps.append((now - last) * 1000)
    last = now
gaps.sort()
print(f"{len(gaps)} pauses over 1 ms in {seconds:g} s; "
      f"total {sum(gaps):.1f} ms; longest: {', '.join(f'{g:.1f}' for g in gaps[-5:]) or '-'} ms")
