"""Per-call cost of `@memprof.profile` over many calls: it must stay flat (issue 14).

    python benchmarks/decorator_overhead.py [--calls 10000] [--buckets 10] [--out DIR] [--json]

A small MLP step (forward, backward, Adam step, zero_grad) is decorated with `@memprof.profile`
(attribution mode, the default) and called `calls` times; the script prints, for each bucket of
consecutive calls, the mean and median per-call time, the profiles the decorator holds and the
process's resident memory at its end, and a flatness figure: mean of the last bucket / mean of
the first. Before issue 14 every call deep-copied every stored
profile and kept them all (12 ms -> 197 ms per call over 700 calls, ~40 KiB more per call).
With --out DIR the worst call is saved there as the calls go, as `profile(out=...)` does.
This is a benchmark, not a test: it reports, it does not assert.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

import memprof


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--buckets", type=int, default=10)
    parser.add_argument("--out", default=None, help="a folder: save the worst call there (profile(out=...))")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8))
    opt = torch.optim.Adam(model.parameters())
    batch = torch.randn(16, 64)
    out = os.path.join(args.out, "worst.json") if args.out else None

    @memprof.profile(model=model, optimizer=opt, out=out)
    def step() -> None:
        model(batch).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    per_bucket = max(1, args.calls // args.buckets)
    rows = []
    for b in range(args.buckets):
        times = []
        for _ in range(per_bucket):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        gc.collect()
        held = len(step.profiles)
        rows.append(
            {
                "calls": f"{b * per_bucket + 1}-{(b + 1) * per_bucket}",
                "mean_ms": statistics.fmean(times) * 1e3,
                "median_ms": statistics.median(times) * 1e3,
                "profiles_held": held,
                "rss_mib": _rss_mib(),
            }
        )
    flatness = rows[-1]["mean_ms"] / rows[0]["mean_ms"]
    # getattr: the script also runs against memprof before issue 14 (no calls / keep / worst_call)
    calls = getattr(step, "calls", len(step.profiles))
    result = {
        "calls": calls,
        "keep": getattr(step, "keep", None),
        "buckets": rows,
        "flatness_last_over_first": round(flatness, 3),
        "max_rss_mib": _max_rss_mib(),
        "worst_call": getattr(step, "worst_call", None),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0
    print(f"@memprof.profile over {calls:,} calls (keep={result['keep']}), torch {torch.__version__}")
    print(f"{'calls':>13}  {'mean ms':>8}  {'median ms':>9}  {'profiles held':>13}  {'RSS MiB':>8}")
    for r in rows:
        print(
            f"{r['calls']:>13}  {r['mean_ms']:8.3f}  {r['median_ms']:9.3f}  "
            f"{r['profiles_held']:>13}  {r['rss_mib']:8.1f}"
        )
    print(f"flatness (last bucket mean / first): {flatness:.3f}   max RSS {result['max_rss_mib']:.0f} MiB")
    return 0


def _rss_mib() -> float:
    """The process's resident memory now (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
