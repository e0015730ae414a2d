"""Wall time of a traced estimate of GPT-2 1.5B (batch 1, sequence 1024, AdamW, bf16-mixed) from the
CLI, and optionally PyTorch's MemTracker running the same step under FakeTensorMode, side by side.

Goal (issue 10): `memprof estimate gpt2-1.5b --trace` takes at most 15 s including imports, and at
most 0.2x the time of MemTracker on the same fake step. Each command runs in a fresh interpreter
(imports included); the median of --runs runs is reported.

    python benchmarks/trace_speed.py [--runs 3] [--memtracker] [--model gpt2-1.5b] [--seq-len 1024]

MemTracker's step is the same as the tracer's: the model built from the config on fake tensors,
foreach AdamW (torch's CUDA default), one step to create the states, then one tracked step of
forward and loss under CPU autocast, backward, optimizer step, zero_grad.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import textwrap
import time

MEMTRACKER = textwrap.dedent("""
    import sys, time, warnings
    warnings.simplefilter("ignore")
    import torch, transformers
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker
    from memprof.estimators.models import load_model

    spec = load_model(sys.argv[1])
    seq = int(sys.argv[2])
    config = dict(spec.config)
    cfg = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    cfg._attn_implementation = "sdpa"
    with FakeTensorMode():
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), foreach=True)
        ids = torch.randint(0, cfg.vocab_size, (1, seq))

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tracker = MemTracker()
        tracker.track_external(model, opt)
        start = time.perf_counter()
        with tracker:
            step()
        tracked = time.perf_counter() - start
    peak = sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())
    print(f"{tracked:.3f} {peak}")
""")


def _time(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="gpt2-1.5b")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--memtracker", action="store_true", help="also time MemTracker on the same fake step")
    parser.add_argument("--goal-seconds", type=float, default=15.0)
    parser.add_argument("--goal-ratio", type=float, default=0.2)
    args = parser.parse_args()
    memprof = shutil.which("memprof")
    cmd = ([memprof] if memprof else [sys.executable, "-m", "memprof"]) + [
        "estimate",
        args.model,
        "--trace",
        "--optimizer",
        "adamw",
        "--precision",
        "bf16-mixed",
        "--batch-size",
        "1",
        "--seq-len",
        str(args.seq_len),
        "--format",
        "json",
    ]
    print("$", " ".join(cmd[1:] if memprof else cmd))
    traced = [_time(cmd)[0] for _ in range(args.runs)]
    t = statistics.median(traced)
    ok = t <= args.goal_seconds
    verdict = "met" if ok else "MISSED"
    print(f"memprof --trace: median {t:.2f} s of {args.runs} (goal <= {args.goal_seconds:.0f} s: {verdict})")
    if args.memtracker:
        mt_cmd = [sys.executable, "-c", MEMTRACKER, args.model, str(args.seq_len)]
        runs = [_time(mt_cmd) for _ in range(args.runs)]
        wall = statistics.median(r[0] for r in runs)
        tracked = statistics.median(float(r[1].split()[0]) for r in runs)
        ratio = t / wall
        met = ratio <= args.goal_ratio
        print(f"MemTracker (fake): median {wall:.2f} s wall, {tracked:.2f} s in the tracked step")
        verdict = "met" if met else "MISSED"
        print(f"ratio memprof / MemTracker (wall): {ratio:.2f} (goal <= {args.goal_ratio}: {verdict})")
        ok = ok and met
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
