"""Replay speed of the caching-allocator simulator on a synthetic trace (goal: >= 200,000 events/s).

    python benchmarks/allocator_replay.py [--events 1000000] [--alloc-conf ""] [--seed 0]
    python benchmarks/allocator_replay.py --model gpt2-1.5b [--batch-size 32] [--seq-len 1024]

The trace imitates training: a working set of a few thousand live tensors, 60 % small requests
(<= 1 MiB), 30 % between 1 and 10 MiB, 10 % between 10 and 256 MiB, on one stream, with frees in
random order. Building the trace is not timed; the replay is.

With --model, the cost `memprof estimate` pays instead: simulate_training_step for a preset
(AdamW, bf16-mixed, flash attention on CUDA: step_timeline's events, composition and replay, timed
as a whole, then the what-if over allocator settings).
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


def training_step(model: str, batch_size: int, seq_len: int, alloc_conf: str) -> None:
    from memprof.estimators.activations import ActivationSettings
    from memprof.estimators.allocator import simulate_training_step, states_per_parameter
    from memprof.estimators.models import load_model
    from memprof.estimators.optimizers import get_optimizer

    spec = load_model(model)
    params = spec.parameter_tensors()
    n = spec.num_parameters
    settings = ActivationSettings(batch_size, seq_len, "bfloat16", "float32", True, "flash", "none", device="cuda")
    states = states_per_parameter(params, get_optimizer("adamw").state_tensors(params, "float32"))
    start = time.perf_counter()
    sim = simulate_training_step(
        spec,
        settings,
        param_bytes=4 * n,
        grad_bytes=4 * n,
        grad_dtype="float32",
        optimizer_states=states,
        optimizer_temporaries=4 * n,
        alloc_conf=alloc_conf,
    )
    elapsed = time.perf_counter() - start
    events = len(sim.run.events)
    start = time.perf_counter()
    report = sim.what_if()
    what_if_s = time.perf_counter() - start
    print(
        f"{model} batch {batch_size} x seq {seq_len}: {events:,} events simulated in {elapsed * 1e3:.0f} ms "
        f"({events / elapsed:,.0f} events/s end to end); what-if over {len(report.rows)} settings "
        f"{what_if_s * 1e3:.0f} ms"
    )
    print(
        f"  measured step: allocated {format_bytes(sim.peak_allocated)} (tensors "
        f"{format_bytes(sim.peak_requested)}), reserved {format_bytes(sim.peak_reserved)}, fragmentation "
        f"{sim.fragmentation:.1%}, retries {sim.num_alloc_retries}; {report.recommendation}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--alloc-conf", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="time simulate_training_step for this preset instead")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024)
    args = parser.parse_args()
    if args.model:
        training_step(args.model, args.batch_size, args.seq_len, args.alloc_conf)
        return
    events = synthetic_trace(args.events, args.seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = simulate(events, args.alloc_conf)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(
        f"{len(events):,} events in {elapsed:.2f} s: {len(events) / elapsed:,.0f} events/s "
        f"({len(events) / cpu:,.0f} per CPU-second; conf {args.alloc_conf or 'default'!r}; "
        f"peak allocated {format_bytes(result.peak_allocated)}, "
        f"peak reserved {format_bytes(result.peak_reserved)})"
    )


if __name__ == "__main__":
    main()
