"""What a replay records for explaining it (simulator.ReplayCapture) gives the figures of replaying again.

allocator.explain.summarize used to replay the whole run three more times: to the peak-reserved
moment for `explain`, and under both alternative orders for `range`. It now reads the state the
baseline replay recorded at its last reserved peak, continues the reversed-allocation-runs order
from a copy taken at the measured step's start, and with expandable segments takes the baseline for
segments at decreasing addresses. Each is checked here against the full replays (`_full_summary`,
the former computation) on hand-built event streams: two steps of seeded random allocations of
repeated sizes (ties for best fit, splits, both pools), the second step sometimes growing the cache
(a reserved peak) and sometimes not (the allocated peak is explained), under several configs.
"""

from __future__ import annotations

import random

import pytest

from memprof.estimators.allocator.explain import _DescendingSegments, explain, order_replays, summarize
from memprof.estimators.allocator.simulator import CachingAllocatorSimulator, ReplayCapture, simulate

MiB = 2**20
CONFIGS = [None, "expandable_segments:True", "max_split_size_mb:64", "roundup_power2_divisions:4"]
SIZES = [4096, 300_000, 1 * MiB, 3 * MiB, 3 * MiB, 12 * MiB, 12 * MiB, 40 * MiB, 40 * MiB, 90 * MiB]


def _step(rng: random.Random, step: int, extra: int) -> list[tuple]:
    """One step: runs of allocations (each run freeing some earlier tensors), then every tensor freed."""
    events: list[tuple] = []
    live: list[tuple] = []
    for n in range(60):
        for k in range(rng.randint(1, 4)):
            ident = (step, n, k)
            events.append(("alloc", ident, rng.choice(SIZES) + rng.choice((0, 0, 512, 3000))))
            live.append(ident)
        for _ in range(rng.randint(0, 3)):
            if live:
                events.append(("free", live.pop(rng.randrange(len(live)))))
    if extra:
        events.append(("alloc", (step, "extra"), extra))
        live.append((step, "extra"))
    rng.shuffle(live)
    events += [("free", ident) for ident in live]
    return events


def _run(seed: int, grow: bool) -> tuple[list[tuple], int]:
    """Two steps of the same allocations (the second with one more large tensor when `grow`)."""
    first = _step(random.Random(seed), 0, 0)
    return first + _step(random.Random(seed), 1, 700 * MiB if grow else 0), len(first)


def _full_summary(events: list[tuple], config: str | None, baseline, measured_from: int) -> dict:
    """summarize as it was: every order replayed from the first event, explain replayed to its moment."""
    results = {}
    for key, (evs, descending) in order_replays(events, measured_from).items():
        sim = _DescendingSegments(config, None) if descending else CachingAllocatorSimulator(config, None)
        count, oom, _, _ = sim.replay(evs, reset_peaks_at=measured_from)
        results[key] = sim.result(count, oom)
    fine = [r.peak_reserved for r in results.values() if r.oom is None]
    return {
        "explain": explain(events, config, None, baseline, reset_peaks_at=measured_from),
        "range": {
            "low": min(fine),
            "high": max(fine),
            "replays": {
                k: {"reserved": r.peak_reserved, "allocated": r.peak_allocated, "oom": r.oom is not None}
                for k, r in results.items()
            },
        },
    }


CASES = [(seed, grow, config) for seed in range(4) for grow in (False, True) for config in CONFIGS]


@pytest.mark.parametrize(("seed", "grow", "config"), CASES)
def test_summary_from_the_capture_equals_the_full_replays(seed, grow, config):
    events, measured_from = _run(seed, grow)
    capture = ReplayCapture()
    baseline = simulate(events, config, reset_peaks_at=measured_from, capture=capture)
    assert baseline.oom is None and capture.at_reset is not None
    expected = _full_summary(events, config, baseline, measured_from)
    assert expected["explain"] is not None and expected["explain"]["segments"]["count"] > 1
    assert summarize(events, config, baseline, measured_from=measured_from, capture=capture) == expected
    # the capture is used up (its copy replayed on): asked again, summarize replays, to the same figures
    assert capture.at_reset is None and capture.peak is None
    assert summarize(events, config, baseline, measured_from=measured_from, capture=capture) == expected


def test_the_streams_cover_both_moments_and_orders_that_matter():
    """The streams exercise both ways of explaining (a reserved peak read from the capture, an
    allocated peak replayed from the copy at the step's start) and orders that change the peak."""
    spread, moments = set(), set()
    for seed, grow, config in CASES:
        events, measured_from = _run(seed, grow)
        baseline = simulate(events, config, reset_peaks_at=measured_from)
        summary = _full_summary(events, config, baseline, measured_from)
        spread.add(len({r["reserved"] for r in summary["range"]["replays"].values()}) > 1)
        moments.add(summary["explain"]["moment"])
    assert spread == {True, False}
    assert moments == {"reserved memory peaked: a new segment", "allocated memory peaked"}


@pytest.mark.parametrize("config", CONFIGS)
def test_explain_captured_equals_explain_replayed(config):
    for seed in range(4):
        for grow in (False, True):
            events, measured_from = _run(seed, grow)
            capture = ReplayCapture()
            baseline = simulate(events, config, reset_peaks_at=measured_from, capture=capture)
            replayed = explain(events, config, None, baseline, reset_peaks_at=measured_from)
            assert explain(events, config, None, baseline, reset_peaks_at=measured_from, capture=capture) == replayed
            # without a reset the capture records every new reserved peak from the first event
            capture = ReplayCapture()
            whole = simulate(events, config, capture=capture)
            assert capture.at_reset is None
            assert explain(events, config, None, whole, reset_peaks_at=None, capture=capture) == explain(
                events, config, None, whole, reset_peaks_at=None
            )


@pytest.mark.parametrize("config", CONFIGS)
def test_a_clone_replays_on_like_the_original(config):
    events, half = _run(1, True)
    sim = CachingAllocatorSimulator(config)
    sim.replay(events[:half])
    copy = sim.clone()
    for s in (sim, copy):
        count, oom, reserved_at, allocated_at = s.replay(events[half:], reset_peaks_at=half, first_index=half)
        s.check()
        result = s.result(count, oom)
        result.peak_reserved_event, result.peak_allocated_event = reserved_at, allocated_at
        assert result == simulate(events, config, reset_peaks_at=half)
