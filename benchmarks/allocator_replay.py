"""Replay speed of the caching-allocator simulator on a synthetic trace (goal: >= 200,000 events/s).

    python benchmarks/allocator_replay.py [--events 1000000] [--alloc-conf ""] [--seed 0]

The trace imitates training: a working set of a few thousand live tensors, 60 % small requests
(<= 1 MiB), 30 % between 1 and 10 MiB, 10 % between 10 and 256 MiB, on one stream, with frees in
random order. Building the trace is not timed; the replay is.
"""
from __future__ import annotations

import argparse
import random
import time

from memprof.estimators.allocator import simulate
from memprof.estimators.units import format_bytes


def synthetic_trace(n_events: int, seed: int = 0, working_set: int = 3000) -> list[tuple]:
    rng = random.Random(seed)
    events: list[tuple] = []
    live: list[int] = []
    next_id = 0
    while len(events) < n_events:
        if live and (len(live) >= working_set or rng.random() < 0.5 - 0.1 * (len(live) < 100)):
            j = rng.randrange(len(live))
            live[j], live[-1] = live[-1], live[j]
            events.append(("free", live.pop()))
        else:
            r = rng.random()
            if r < 0.6:
                size = rng.randint(1, 1 << 20)
            elif r < 0.9:
                size = rng.randint(1 << 20, 10 << 20)
            else:
                size = rng.randint(10 << 20, 256 << 20)
            events.append(("alloc", next_id, size, 0))
            live.append(next_id)
            next_id += 1
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--alloc-conf", default="")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    events = synthetic_trace(args.events, args.seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = simulate(events, args.alloc_conf)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"{len(events):,} events in {elapsed:.2f} s: {len(events) / elapsed:,.0f} events/s "
          f"({len(events) / cpu:,.0f} per CPU-second; conf {args.alloc_conf or 'default'!r}; "
          f"peak allocated {format_bytes(result.peak_allocated)}, "
          f"peak reserved {format_bytes(result.peak_reserved)})")


if __name__ == "__main__":
    main()
