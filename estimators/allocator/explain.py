"""What the simulated caching allocator did, and how far the replay depends on orders memprof cannot know.

`explain` reads the allocator's state at the moment reserved memory peaked in the measured step (the
cudaMalloc of a new segment, or, when the step never grows the cache, the moment allocated memory
peaked; recorded by the replay itself, simulator.ReplayCapture, or replayed to) and its segments
there: how many and how large, the free (cached) blocks inside them, largest first, and the live
allocations that share each such block's segment, i.e. the ones that
split it and keep it from merging back or being released. At a peak-reserved moment the free blocks
are exactly the cache that could not serve the request (none was large enough, or the best fit broke
the max_split_size rules): that is where the step's fragmentation sits.

`summarize` bounds the replay's reserved peak by replaying the same allocations under the orders
the estimator fixes but a real run does not:
- segment addresses: cudaMalloc decides them, and best fit breaks ties between equal-size free
  blocks by address (get_free_block; the simulator numbers segments upwards): the replay is run
  again with segments at decreasing addresses;
- allocations made together: the outputs of one operation and the tensors autograd or the optimizer
  creates between two frees come in an order the kernels decide (layer_norm's output before or after
  its mean and rstd; a foreach kernel's list): the replay is run again with every run of consecutive
  allocations of the measured step reversed. (Frees between two allocations need no alternative:
  coalescing leaves the same free blocks whatever their order.)
(The steps before the measured one get none: measuring a third step instead of the second gives
the same reserved peak, to the byte, in the seven estimates tried (gpt2-1.5b with AdamW and with
Lion, llama-3.2-1b, bert-base-uncased, qwen2.5-0.5b with full checkpointing, gpt2-355m with
Adafactor in 16-mixed, pythia-410m with fused AdamW, all on an A100): the cache is in its steady
state after one step.)
low and high are the smallest and largest reserved peaks of these replays and the baseline. They
are bounds of these mechanisms only, not of every possible run: other streams, other kernels'
temporaries or a different program order are outside them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from .config import parse_alloc_conf
from .simulator import Block, CachingAllocatorSimulator, Event, ReplayCapture, SimResult, segments_of, simulate

__all__ = ["describe_allocation", "explain", "order_replays", "runs_within", "summarize"]

TOP = 5  # free blocks and segment sizes listed


def describe_allocation(ident: Hashable, tensor_names: dict[int, str] | None = None) -> str:
    """A reader's name for an allocation id of the training replay (training.compose_run's ids;
    the step's tensors are `id(T)` of the activation trace, named by `tensor_names`)."""
    if isinstance(ident, tuple) and ident:
        kind, rest = ident[0], ident[1:]
        name = str(rest[0]) if rest else ""
        return {
            "param": f"parameter {name}",
            "grad": f"gradient of {name}",
            "grad_acc": f"gradient of {name} (being accumulated)",
            "state": f"optimizer state {rest[1] if len(rest) > 1 else ''} of {name}".replace("  ", " "),
            "buffer": f"buffer {name}",
            "workspace": "cuBLAS workspace",
            "temporary": "optimizer step scratch",
        }.get(str(kind), " ".join(str(p) for p in ident))
    if isinstance(ident, int) and not isinstance(ident, bool):
        if ident < 0:
            return "activation gradient (backward)"
        if tensor_names and ident in tensor_names:
            return tensor_names[ident]
    return "tensor"


def _pool(size: int) -> str:
    return "small" if size <= 2 << 20 else "large"


def _moment(result: SimResult) -> tuple[int, str] | None:
    """The event explained and what happened there (see the module docstring), or None."""
    if result.oom is not None:
        return None
    if result.peak_reserved_event is not None:
        return result.peak_reserved_event, "reserved memory peaked: a new segment"
    if result.peak_allocated_event is not None:
        return result.peak_allocated_event, "allocated memory peaked"
    return None


_State = tuple[list[list[tuple[int, int, Hashable | None]]], int, int]  # segments(), reserved, allocated


def _state_at(
    events: Sequence[Event],
    config: Any,
    capacity: int | None,
    moment: int,
    reset_peaks_at: int | None,
    capture: ReplayCapture | None,
) -> _State:
    """The allocator's segments, reserved and allocated bytes right after event `moment`: recorded
    by the replay itself (capture.peak) when it is that replay's reserved peak, else replayed from
    the copy taken at the measured step's start (capture.at_reset), else replayed from the start."""
    if capture is not None and capture.peak is not None and capture.peak[0] == moment:
        return segments_of(capture.peak[1]), capture.peak[2], capture.peak[3]
    if capture is not None and capture.at_reset is not None and reset_peaks_at is not None and moment >= reset_peaks_at:
        sim = capture.at_reset.clone()
        sim.replay(events[reset_peaks_at:], reset_peaks_at=reset_peaks_at, until=moment, first_index=reset_peaks_at)
    else:
        sim = CachingAllocatorSimulator(config, capacity)
        sim.replay(events, reset_peaks_at=reset_peaks_at, until=moment)
    return sim.segments(), sim.reserved, sim.allocated


def explain(
    events: Sequence[Event],
    config: Any,
    capacity: int | None,
    result: SimResult,
    *,
    reset_peaks_at: int | None,
    where: Callable[[int], str] | None = None,
    name: Callable[[Hashable], str] = describe_allocation,
    capture: ReplayCapture | None = None,
) -> dict[str, Any] | None:
    """The allocator's state at the measured step's peak (see the module docstring), as JSON.

    `result` is the replay of the same events (simulate(..., reset_peaks_at=...)); None when the
    replay stopped at an out-of-memory error or never allocated. `capture`: what that replay
    recorded (simulate(..., capture=...)), so that the state is read, not replayed again; without
    it the events are replayed to the moment (the same state: tests/test_allocator_explain.py)."""
    found = _moment(result)
    if found is None:
        return None
    moment, kind = found
    segments, reserved, allocated = _state_at(events, config, capacity, moment, reset_peaks_at, capture)
    request = events[moment]
    free: list[tuple[int, int, list[tuple[int, Hashable]]]] = []  # (bytes, segment bytes, its live blocks)
    whole_free = 0
    for seg in segments:
        seg_bytes = sum(size for _, size, _ in seg)
        live = sorted(((size, ident) for _, size, ident in seg if ident is not None), key=lambda p: -p[0])
        if not live:
            whole_free += seg_bytes
        for _, size, ident in seg:
            if ident is None and live:
                free.append((size, seg_bytes, live))
    free.sort(key=lambda f: -f[0])
    largest = [  # named for the blocks listed only
        {
            "bytes": size,
            "segment_bytes": seg_bytes,
            "pool": _pool(seg_bytes),
            "split_by": [f"{name(i)} ({n:,} B)" for n, i in live[:3]],
            "live_in_segment": len(live),
        }
        for size, seg_bytes, live in free[:TOP]
    ]
    sizes = Counter(sum(size for _, size, _ in seg) for seg in segments)
    return {
        "moment": kind,
        "event": moment,
        "where": where(moment) if where is not None else None,
        "request": {"bytes": request[2], "name": name(request[1])} if request[0] == "alloc" else None,
        "reserved": reserved,
        "allocated": allocated,
        "segments": {
            "count": len(segments),
            "small_pool": sum(1 for seg in segments if _pool(sum(s for _, s, _ in seg)) == "small"),
            "bytes": sum(size * n for size, n in sizes.items()),
            "largest": sorted(sizes.elements(), reverse=True)[:TOP],
            "most_common": [[size, n] for size, n in sizes.most_common(TOP)],
        },
        "free_in_split_segments": sum(f[0] for f in free),
        "free_whole_segments": whole_free,
        "largest_free_blocks": largest,
    }


class _DescendingSegments(CachingAllocatorSimulator):
    """cudaMalloc handing out segments at decreasing addresses (best fit's ties go the other way)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_addr = 1 << 62

    def _alloc_block(self, pool: Any, size: int, stream: Any) -> Block | None:
        if self._expandable:  # one virtual segment per pool and stream: no order to vary
            return super()._alloc_block(pool, size, stream)
        alloc_size = self.allocation_size(size)
        if self.reserved + alloc_size > self._limit:
            return None
        self._next_addr -= alloc_size
        block = Block(self._next_addr, alloc_size, stream, pool.small)
        self._grow(alloc_size, "segment_alloc")
        return block


def _reversed_alloc_runs(events: Sequence[Event], start: int) -> list[Event]:
    """events with every run of consecutive allocations from `start` on in reverse order."""
    out = list(events[:start])
    run: list[Event] = []
    for event in events[start:]:
        if event[0] == "alloc":
            run.append(event)
            continue
        out += reversed(run)
        run = []
        out.append(event)
    out += reversed(run)
    return out


def order_replays(events: Sequence[Event], measured_from: int) -> dict[str, tuple[Sequence[Event], bool]]:
    """The alternative orders replayed by `order_range` and `runs_within`: name -> (events, whether
    segments come at decreasing addresses)."""
    return {
        "baseline": (events, False),
        "segments at decreasing addresses": (events, True),
        "allocations made together in reverse order": (_reversed_alloc_runs(events, measured_from), False),
    }


def _finish(sim: CachingAllocatorSimulator, replayed: tuple[int, Any, int | None, int | None]) -> SimResult:
    count, oom, reserved_at, allocated_at = replayed
    result = sim.result(count, oom)
    result.peak_reserved_event, result.peak_allocated_event = reserved_at, allocated_at
    return result


def _replay(
    events: Sequence[Event],
    config: Any,
    capacity: int | None,
    descending: bool,
    reset: int,
    at_reset: CachingAllocatorSimulator | None = None,
) -> SimResult:
    """One order's replay. at_reset: a simulator that replayed events[:reset] of the same run in
    this order (ReplayCapture.at_reset): the replay continues from it (it is used up)."""
    if at_reset is not None:
        sim = at_reset
        return _finish(sim, sim.replay(events[reset:], reset_peaks_at=reset, first_index=reset))
    if not descending:
        return simulate(events, config, capacity, reset_peaks_at=reset)
    sim = _DescendingSegments(config, capacity)
    return _finish(sim, sim.replay(events, reset_peaks_at=reset))


def runs_within(events: Sequence[Event], config: Any, capacity: int, *, measured_from: int) -> dict[str, Any]:
    """Whether the run fits `capacity` bytes of reserved memory in every order of `order_replays`.

    The caching allocator raises out-of-memory only after freeing its cached segments and retrying
    (CUDACachingAllocator.cpp, malloc: release_cached_blocks, then a second cudaMalloc), so a run
    whose unconstrained cache is larger than the capacity may still run, flushing its cache
    (`num_alloc_retries`, each a synchronising cudaFree) instead. Returns {"fits": bool,
    "retries": the most retries of the measured step in any order, "oom": the first order that ran
    out of memory, or None}."""
    retries = 0
    for name, (evs, descending) in order_replays(events, measured_from).items():
        result = _replay(evs, config, capacity, descending, measured_from)
        if result.oom is not None:
            return {"fits": False, "retries": None, "oom": name}
        retries = max(retries, result.num_alloc_retries - result.retries_before_reset)
    return {"fits": True, "retries": retries, "oom": None}


def summarize(
    events: Sequence[Event],
    config: Any,
    baseline: SimResult,
    *,
    measured_from: int,
    where: Callable[[int], str] | None = None,
    name: Callable[[Hashable], str] = describe_allocation,
    capture: ReplayCapture | None = None,
) -> dict[str, Any]:
    """The estimate JSON's allocator additions: "explain" (explain) and "range" (the reserved peak
    under each order of order_replays: low, high and each replay's figures).

    capture: what the baseline replay recorded (simulate(..., capture=...)). With it, nothing before
    the measured step is replayed again: the explained state is the one recorded, and the reversed
    allocation runs (which leave the events before the step as they are) continue from the copy
    taken at the step's start. With expandable segments, segments at decreasing addresses are the
    baseline itself: every block is then in one virtual segment per pool and stream, whose base
    addresses only move by a constant (_DescendingSegments), so no order changes."""
    expandable = (parse_alloc_conf(config) if config is None or isinstance(config, str) else config).expandable_segments
    explained = explain(
        events,
        config,
        baseline.capacity,
        baseline,
        reset_peaks_at=measured_from,
        where=where,
        name=name,
        capture=capture,
    )
    at_reset = None
    if capture is not None:  # the reversed runs' replay continues from (and uses up) the copy
        at_reset, capture.at_reset, capture.peak = capture.at_reset, None, None  # (fit keeps its estimates)
    results = {"baseline": baseline}
    for key, (evs, descending) in order_replays(events, measured_from).items():
        if key == "baseline":
            continue
        if descending and expandable:
            results[key] = baseline
        else:
            results[key] = _replay(
                evs, config, baseline.capacity, descending, measured_from, None if descending else at_reset
            )
    fine = [r.peak_reserved for r in results.values() if r.oom is None]
    return {
        "explain": explained,
        "range": {
            "low": min(fine) if fine else None,
            "high": max(fine) if fine else None,
            "replays": {
                k: {"reserved": r.peak_reserved, "allocated": r.peak_allocated, "oom": r.oom is not None}
                for k, r in results.items()
            },
        },
    }
