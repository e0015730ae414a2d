"""How much slower a training step gets under the profiler, in each mode (CPU or CUDA).

    python benchmarks/profiler_overhead.py [--steps 10] [--rounds 5] [--device cpu] [--json]

A small transformer (nn.TransformerEncoder + LM head, AdamW) trains for `steps` steps per round,
once plain, once under `track(mode="stats")`, once under `track(mode="attribution")`, and once
with a decorated step (a session per step, as `@memprof.profile` does). Rounds interleave the
variants so that machine noise hits them alike; the figure per variant is the median over rounds
of the mean step time. "bare TorchDispatchMode" is a mode that only forwards every operator:
the cost of Python dispatch itself, which no per-operator tracker can go below. Goals (issue 4):
stats <= 1.03x, attribution <= 1.5x on the CPU.
This is a benchmark, not a test: it reports, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import memprof


class BareMode(TorchDispatchMode):
    """A dispatch mode that only forwards each op: the floor any per-op Python tracker pays."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, d_model: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="steps per round and variant")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    vocab = 1024
    model = TinyLM(vocab, args.d_model, args.layers, heads=4).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (args.batch, args.seq), device=dev)
    loss_fn = nn.CrossEntropyLoss()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step() -> None:
        logits = model(ids)
        loss_fn(logits.view(-1, vocab), ids.view(-1)).backward()
        opt.step()
        opt.zero_grad()

    decorated = memprof.profile(step, model=model, optimizer=opt)

    def plain() -> None:
        for _ in range(args.steps):
            step()

    def in_session(mode: str):
        def run() -> None:
            with memprof.track(model, opt, mode=mode, events=False):
                for _ in range(args.steps):
                    step()

        return run

    def bare() -> None:
        with BareMode():
            for _ in range(args.steps):
                step()

    def per_call() -> None:
        for _ in range(args.steps):
            decorated()
        decorated.profiles.clear()

    variants = {
        "plain": plain,
        "stats": in_session("stats"),
        "bare TorchDispatchMode (floor)": bare,
        "attribution": in_session("attribution"),
        "attribution, session per step": per_call,
    }
    for fn in variants.values():  # warm up every path (states, caches, first-call costs)
        fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["plain"])
    result = {
        "device": str(dev),
        "threads": args.threads,
        "steps": args.steps,
        "rounds": args.rounds,
        "model": {
            "d_model": args.d_model,
            "layers": args.layers,
            "batch": args.batch,
            "seq": args.seq,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "torch": torch.__version__,
        "step_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio": {k: statistics.median(v) / base for k, v in times.items()},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        m = result["model"]
        print(
            f"TinyLM d_model={m['d_model']} layers={m['layers']} batch={m['batch']} seq={m['seq']} "
            f"({m['parameters']:,} parameters), {dev}, {args.threads} thread(s), "
            f"median of {args.rounds} rounds x {args.steps} steps"
        )
        for k in variants:
            print(f"  {k:<32} {result['step_s'][k] * 1e3:9.2f} ms/step   {result['ratio'][k]:.3f}x")
        print("  goals: stats <= 1.03x, attribution <= 1.5x (CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
