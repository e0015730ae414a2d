"""Fragmentation explained and bounded: allocator.explain and allocator.range, and fit's verdict policy.

- explain is checked on the allocation events of a real run (a small GPT-2 trained for two AdamW
  steps on the CPU under memprof.track(events=True)), replayed as if on CUDA: what it reports at the
  peak moment is recomputed here from the event stream alone (which allocations are live, their
  rounded sizes) and must agree;
- the order replays are checked on event streams whose outcome follows by hand from
  CUDACachingAllocator's rules (segment sizes, best fit, splitting);
- fit's policy on gpt2-1.5b: a batch whose unconstrained cache exceeds the budget fits when the
  replay under the budget runs (the allocator flushes its cache), and not when it runs out of memory.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import memprof
from activation_cases import batch, train_step
from memprof.estimators.allocator import simulate
from memprof.estimators.allocator.explain import _reversed_alloc_runs, explain, runs_within, summarize
from memprof.estimators.allocator.timeline import device_events
from memprof.estimators.estimation import estimate
from memprof.estimators.fit import DEFAULT_HEADROOM, Budget, _Search, device_total_high, fit, parse_headroom
from memprof.estimators.gpus import get_gpu
from memprof.estimators.models import load_model

MiB = 2**20

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def real_events() -> list:
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=256, n_head=4, n_positions=256, vocab_size=4096, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    with memprof.track(events=True) as run:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = transformers.AutoModelForCausalLM.from_config(cfg)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
        for _ in range(2):
            train_step(model, optimizer, batch("gpt2", 8, 128), autocast=False)
    return list(device_events(run.events, "cpu"))


def _live_at(events: list, moment: int) -> dict:
    """Live allocations (id -> requested bytes) after event `moment`, from the stream alone."""
    live: dict = {}
    for event in events[: moment + 1]:
        if event[0] == "alloc":
            live[event[1]] = event[2]
        elif event[0] == "free":
            live.pop(event[1], None)
    return live


def _rounded(n: int) -> int:
    return 512 if n < 512 else (n + 511) // 512 * 512  # round_size, default config


def test_explain_agrees_with_the_real_event_stream(real_events):
    result = simulate(real_events)
    ex = explain(real_events, None, None, result, reset_peaks_at=None, name=repr)
    moment = ex["event"]
    live = _live_at(real_events, moment)
    assert ex["moment"].startswith("reserved memory peaked") and moment == result.peak_reserved_event
    assert real_events[moment][0] == "alloc" and ex["request"]["bytes"] == real_events[moment][2]
    # at a peak-reserved moment the cache holds exactly max_memory_reserved
    assert ex["reserved"] == ex["segments"]["bytes"] == result.peak_reserved
    # allocated counts whole blocks: a block is handed out unsplit when the rest would be too small
    # to split (large pool: remainder <= 1 MiB; small pool: < 512 B), so it may exceed the requests
    rounded = [_rounded(n) for n in live.values()]
    slack = sum(MiB if r > MiB else 511 for r in rounded)
    assert sum(rounded) <= ex["allocated"] <= sum(rounded) + slack
    assert ex["free_in_split_segments"] + ex["free_whole_segments"] == ex["reserved"] - ex["allocated"]
    blocks = ex["largest_free_blocks"]
    assert blocks == sorted(blocks, key=lambda b: -b["bytes"]) and blocks
    for block in blocks:
        assert block["bytes"] < block["segment_bytes"]
        for label in block["split_by"]:
            ident, size = label.rsplit(" (", 1)
            assert eval(ident) in live
            request = _rounded(live[eval(ident)])
            block_size = int(size.removesuffix(" B)").replace(",", ""))
            assert request <= block_size <= request + (MiB if request > MiB else 511)


def test_an_order_the_allocator_cannot_know_changes_reserved():
    # a (6 MiB) then b (12 MiB): a gets a 20 MiB segment (kLargeBuffer for requests < 10 MiB), b the
    # 14 MiB left in it (best fit; the 2 MiB remainder > 1 MiB is split off): 20 MiB reserved.
    # b first: its own 12 MiB segment (>= 10 MiB: rounded to 2 MiB), then a a 20 MiB one: 32 MiB.
    events = [("alloc", "a", 6 * MiB, 0), ("alloc", "b", 12 * MiB, 0), ("free", "a"), ("free", "b")]
    assert _reversed_alloc_runs(events, 0) == [events[1], events[0], events[2], events[3]]
    baseline = simulate(events, reset_peaks_at=0)
    span = summarize(events, None, baseline, measured_from=0)["range"]
    assert (span["low"], span["high"]) == (20 * MiB, 32 * MiB)
    assert span["replays"]["allocations made together in reverse order"]["reserved"] == 32 * MiB
    assert span["replays"]["segments at decreasing addresses"]["reserved"] == 20 * MiB
    # frees need no alternative: the prefix before measured_from is kept as it is
    assert _reversed_alloc_runs(events, 2) == events


def test_segment_addresses_decide_ties():
    # two 20 MiB segments, each a 6 MiB tensor and a 14 MiB free block; c (14 MiB) ties between the
    # two free blocks and best fit takes the lower address. Segments at rising addresses: c goes to the
    # first segment, so freeing a leaves 6 MiB there and d (20 MiB) needs a third segment: 60 MiB.
    # At falling addresses c goes to the second: freeing a empties the first, d takes it: 40 MiB.
    events = [
        ("alloc", "a", 6 * MiB, 0),
        ("alloc", "f1", 14 * MiB, 0),
        ("alloc", "b", 6 * MiB, 0),
        ("alloc", "f2", 14 * MiB, 0),
        ("free", "f1"),
        ("free", "f2"),
        ("alloc", "c", 14 * MiB, 0),
        ("free", "a"),
        ("alloc", "d", 20 * MiB, 0),
    ]
    up = simulate(events, reset_peaks_at=0)
    assert up.peak_reserved == 60 * MiB
    span = summarize(events, None, up, measured_from=0)["range"]
    assert span["replays"]["segments at decreasing addresses"]["reserved"] == 40 * MiB
    reserved = [r["reserved"] for r in span["replays"].values()]
    assert (span["low"], span["high"]) == (min(reserved), max(reserved)) == (40 * MiB, 60 * MiB)


def test_estimate_json_explains_and_bounds_reserved():
    record = estimate("gpt2", gpu="a100-80gb").record
    allocator = record.allocator
    span, ex = allocator["range"], allocator["explain"]
    assert span["low"] <= allocator["peak"]["reserved"] <= span["high"]
    assert set(span["replays"]) == {
        "baseline",
        "segments at decreasing addresses",
        "allocations made together in reverse order",
    }
    assert ex["segments"]["count"] >= 1 and ex["where"].startswith("step 2 (measured)")
    # names come from the activation trace: "module: tensor (op)" or the program's own ids
    names = [n for b in ex["largest_free_blocks"] for n in b["split_by"]]
    assert names and all(not n.startswith("tensor (") for n in names)
    assert estimate("gpt2", device="cpu").record.allocator is None


def test_fit_verdict_policy_on_gpt2_1_5b():
    # GIVEN fit's search on an A100-40GB with the default 5 % headroom
    spec = load_model("gpt2-1.5b")
    gpu = get_gpu("a100-40gb")
    usable = gpu.torch_total_memory or gpu.memory_bytes  # as fit() reads it
    budget = Budget("a100-40gb", usable, parse_headroom(DEFAULT_HEADROOM, usable))
    search = _Search(spec, {"gpu": "a100-40gb", "device": "cuda"}, budget)
    for batch_size, fits in ((2, True), (3, False)):
        record = search.run(batch_size=batch_size)
        est = search._replays[id(record)]
        # the unconstrained cache is over the budget at both batch sizes
        assert device_total_high(record) > budget.limit
        # WHEN judged: batch 2 runs under the budget as the allocator's limit (flushing its cache),
        # batch 3 runs out of memory in some order
        assert search.fits(record) is fits
        sim, total = est.allocator_run, record.device_total
        capacity = budget.limit - est.context.bytes - (total - est.context.bytes - sim.peak_reserved)
        assert sim.peak_reserved > capacity
        verdict = runs_within(sim.run.events, sim.result.config, capacity, measured_from=sim.run.measured_from)
        assert verdict["fits"] is fits
        assert search.flushes[id(record)] == (verdict["retries"] if fits else -1) and (not fits or verdict["retries"])


def test_fit_states_its_policy():
    data = fit("gpt2", "t4", precision="16-mixed").to_dict()
    assert "frees its cached segments and retries" in data["policy"]
    assert data["best"]["device_total_high"] >= data["best"]["device_total"]
    assert "cache_flushes" in data["best"] and all("cache_flushes" in k for k in data["knobs"])


def test_table_and_report_say_what_the_allocator_did():
    from memprof.estimators.units import format_bytes
    from memprof.render import estimate_table
    from memprof.reports.page import allocator_section

    record = estimate("gpt2", gpu="a100-80gb").record
    ex, span = record.allocator["explain"], record.allocator["range"]
    text = estimate_table(record)
    assert f"{ex['segments']['count']:,} segments, {format_bytes(ex['segments']['bytes'])}" in text
    assert f"{format_bytes(ex['free_whole_segments'])} in whole cached segments" in text
    first = ex["largest_free_blocks"][0]
    assert f"free {format_bytes(first['bytes'])} of a {format_bytes(first['segment_bytes'])} segment" in text
    offset = record.peak.reserved - record.allocator["peak"]["reserved"]
    assert f"{format_bytes(span['low'] + offset)} to {format_bytes(span['high'] + offset)}" in text
    html = "\n".join(allocator_section(record.to_dict()))
    assert "The caching allocator at the peak (estimated)" in html and first["split_by"][0].split(" (")[0] in html
    assert allocator_section(estimate("gpt2", device="cpu").record.to_dict()) == []
