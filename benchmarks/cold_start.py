"""Cold-start time of `memprof estimate` against `python -c "import torch"` on the same machine.

Goal (issue 2): the estimate takes at most 0.15 of the time of importing torch, because the analytic
path imports neither torch nor pandas nor matplotlib. Each command runs in a fresh interpreter;
the median of --runs runs is reported (after one warm-up run each, so the file cache is warm for both).
Both run with bytecode caching on, as an installed package runs (torch's site-packages hold their
.pyc files): a PYTHONDONTWRITEBYTECODE=1 environment would otherwise recompile every memprof module on
every run, which no user pays.

    python benchmarks/cold_start.py [--runs 7] [--model gpt2-1.5b]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def _median_seconds(cmd: list[str], runs: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)  # warm-up (writes the bytecode cache)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--model", default="gpt2-1.5b")
    parser.add_argument("--goal", type=float, default=0.15)
    args = parser.parse_args()
    memprof = shutil.which("memprof")
    estimate_cmd = ([memprof] if memprof else [sys.executable, "-m", "memprof"]) + [
        "estimate",
        args.model,
        "--optimizer",
        "adamw",
    ]
    torch_cmd = [sys.executable, "-c", "import torch"]
    t_estimate = _median_seconds(estimate_cmd, args.runs)
    t_torch = _median_seconds(torch_cmd, args.runs)
    ratio = t_estimate / t_torch
    print(f"memprof estimate {args.model} --optimizer adamw: {t_estimate * 1000:.0f} ms (median of {args.runs})")
    print(f"python -c 'import torch':                 {t_torch * 1000:.0f} ms (median of {args.runs})")
    print(f"ratio: {ratio:.3f} (goal <= {args.goal})")
    return 0 if ratio <= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
