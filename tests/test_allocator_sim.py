"""The caching-allocator simulator on hand-computed traces, one per rule, plus invariants.

Every expected figure below is worked out by hand from the rules of
c10/cuda/CUDACachingAllocator.cpp (see the comment next to it), not read back from the simulator.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memprof.estimators.allocator import CachingAllocatorSimulator, simulate, what_if
from memprof.estimators.errors import MemprofUserError

KiB = 1 << 10
MiB = 1 << 20


def sim(conf: str = "", capacity: int | None = None) -> CachingAllocatorSimulator:
    return CachingAllocatorSimulator(conf, capacity)


# ------------------------------------------------------------------ small pool
def test_small_pool_packs_requests_into_one_2mib_segment():
    # GIVEN two 1000-byte requests: each rounds to 1024 B and is small (<= 1 MiB)
    s = sim()
    s.malloc("a", 1000)
    # THEN one 2 MiB segment, split (remainder 2 MiB - 1 KiB >= 512 B) into 1 KiB + an inactive split
    assert (s.allocated, s.reserved, s.inactive_split) == (1024, 2 * MiB, 2 * MiB - 1024)
    s.malloc("b", 1000)
    # the second comes from the remainder: same segment, the inactive split shrinks by 1 KiB
    assert (s.allocated, s.reserved, s.inactive_split) == (2048, 2 * MiB, 2 * MiB - 2048)
    assert s.address_of("b") == s.address_of("a") + 1024
    s.check()
    # WHEN both are freed THEN the blocks merge back into one unsplit segment that stays cached
    s.free("a")
    assert s.inactive_split == 2 * MiB - 1024  # "a" is free but cannot merge across the live "b"
    s.free("b")
    assert (s.allocated, s.reserved, s.inactive_split) == (0, 2 * MiB, 0)
    assert s.peak_allocated == 2048 and s.peak_reserved == 2 * MiB
    s.check()


def test_small_pool_split_needs_512_bytes_left():
    # 1 MiB (the largest small request) leaves 1 MiB of the 2 MiB segment: split
    s = sim()
    s.malloc("a", MiB)
    assert (s.allocated, s.reserved, s.inactive_split) == (MiB, 2 * MiB, MiB)
    s.malloc("b", MiB - 1024)  # fits the 1 MiB remainder, leaves 1024 >= 512: split again
    s.malloc("c", 1000)  # rounds to 1024: takes the last piece exactly, no split
    assert (s.allocated, s.reserved, s.inactive_split) == (2 * MiB, 2 * MiB, 0)
    s.malloc("d", 1)  # segment full: a second 2 MiB segment
    assert (s.allocated, s.reserved) == (2 * MiB + 512, 4 * MiB)
    s.check()


# ------------------------------------------------------------------ large pool
def test_large_pool_1_to_10_mib_uses_a_20mib_segment_and_splits():
    s = sim()
    s.malloc("a", 3 * MiB)  # 20 MiB segment, remainder 17 MiB > 1 MiB: split
    assert (s.allocated, s.reserved, s.inactive_split) == (3 * MiB, 20 * MiB, 17 * MiB)
    s.malloc("b", 5 * MiB)  # best fit: the 17 MiB remainder; 12 MiB left, still split
    assert (s.allocated, s.reserved, s.inactive_split) == (8 * MiB, 20 * MiB, 12 * MiB)
    s.check()


def test_large_request_rounds_segment_to_2mib_and_does_not_split_1mib_or_less():
    s = sim()
    s.malloc("a", 11 * MiB + 1)  # rounds to 11 MiB + 512; segment 12 MiB; remainder < 1 MiB
    # not split: the caller holds the whole 12 MiB block, so allocated counts 12 MiB
    assert (s.allocated, s.reserved, s.inactive_split) == (12 * MiB, 12 * MiB, 0)
    assert s.requested == 11 * MiB + 1
    s.malloc("b", 19 * MiB)  # segment 20 MiB, remainder exactly 1 MiB: not > 1 MiB, no split
    assert (s.allocated, s.reserved) == (32 * MiB, 32 * MiB)
    s.check()


def test_freed_large_blocks_are_cached_not_returned():
    s = sim()
    s.malloc("a", 100 * MiB)
    s.free("a")
    assert (s.allocated, s.reserved) == (0, 100 * MiB)
    s.malloc("b", 50 * MiB)  # reuses the cached 100 MiB block, splits 50 / 50
    assert (s.allocated, s.reserved, s.inactive_split) == (50 * MiB, 100 * MiB, 50 * MiB)
    s.empty_cache()  # a split segment cannot be released
    assert s.reserved == 100 * MiB
    s.free("b")
    s.empty_cache()
    assert (s.allocated, s.reserved, s.num_device_free) == (0, 0, 1)
    s.check()


# ------------------------------------------------------------------ best fit, streams
def test_best_fit_takes_the_smallest_block_that_fits():
    s = sim()
    s.malloc("big", 40 * MiB)
    s.malloc("mid", 24 * MiB)
    s.malloc("huge", 60 * MiB)
    mid = s.address_of("mid")
    for name in ("big", "mid", "huge"):
        s.free(name)
    s.malloc("x", 22 * MiB)  # 24 MiB is the smallest free block >= 22 MiB; 2 MiB left > 1 MiB
    assert s.address_of("x") == mid
    assert (s.allocated, s.reserved, s.inactive_split) == (22 * MiB, 124 * MiB, 2 * MiB)
    s.check()


def test_best_fit_ties_go_to_the_lowest_address():
    s = sim()
    s.malloc("first", 30 * MiB)
    s.malloc("second", 30 * MiB)
    first = s.address_of("first")
    s.free("second")
    s.free("first")
    s.malloc("x", 30 * MiB)
    assert s.address_of("x") == first
    assert s.reserved == 60 * MiB


def test_streams_are_kept_apart():
    s = sim()
    s.malloc("a", 40 * MiB, stream=0)
    s.free("a")
    s.malloc("b", 40 * MiB, stream=7)  # the cached block belongs to stream 0: a new segment
    assert (s.allocated, s.reserved) == (40 * MiB, 80 * MiB)
    s.malloc("c", 1000, stream=0)
    s.malloc("d", 1000, stream=7)  # small pools are per stream too: two 2 MiB segments
    assert s.reserved == 84 * MiB
    s.check()


# ------------------------------------------------------------------ max_split_size_mb
def test_max_split_size_keeps_large_blocks_whole():
    s = sim("max_split_size_mb:40")
    s.malloc("a", 100 * MiB)
    s.free("a")
    s.malloc("b", 30 * MiB)  # 30 < 40 and the cached block is >= 40: not used
    assert (s.allocated, s.reserved) == (30 * MiB, 130 * MiB)
    s.malloc("c", 90 * MiB)  # >= 40: may take a block up to 90 + 20 MiB, whole (no split)
    assert (s.allocated, s.reserved, s.inactive_split) == (130 * MiB, 130 * MiB, 0)
    s.free("c")
    s.malloc("d", 80 * MiB)  # 100 >= 80 + 20: too much waste, a new 80 MiB segment
    assert (s.allocated, s.reserved) == (110 * MiB, 210 * MiB)
    s.check()


def test_max_non_split_rounding_widens_the_oversize_window():
    s = sim("max_split_size_mb:40,max_non_split_rounding_mb:32")
    s.malloc("a", 100 * MiB)
    s.free("a")
    s.malloc("d", 80 * MiB)  # 100 < 80 + 32: reused whole
    assert (s.allocated, s.reserved) == (100 * MiB, 100 * MiB)


def test_release_available_cached_blocks_frees_oversize_blocks_first():
    # capacity 150 MiB, max_split 40 MiB: cached oversize 60 MiB block is freed (no full flush)
    s = sim("max_split_size_mb:40", capacity=150 * MiB)
    s.malloc("keep", 3 * MiB)  # a 20 MiB segment, split: never releasable while "keep" lives
    s.malloc("a", 60 * MiB)
    s.free("a")
    s.malloc("b", 100 * MiB)  # 60 < 100 + 20 and 60 < 100: no fit; 80 + 100 > 150
    # release_available_cached_blocks: no single block >= 100, free oversize ones from the largest:
    # 60 MiB released but 60 < 100, returns false -> release_cached_blocks + retry
    assert (s.allocated, s.reserved, s.num_alloc_retries) == (103 * MiB, 120 * MiB, 1)
    s.check()


# ------------------------------------------------------------------ capacity: retry and OOM
def test_retry_releases_unsplit_cached_segments():
    events = [("alloc", "a", 40 * MiB, 0), ("free", "a"), ("alloc", "b", 50 * MiB, 0)]
    # 40 MiB cached + 50 MiB new > 60 MiB: flush the cache (retry 1), then the 50 MiB fits
    result = simulate(events, capacity=60 * MiB)
    assert result.oom is None
    assert (result.final_allocated, result.final_reserved) == (50 * MiB, 50 * MiB)
    assert (result.peak_reserved, result.num_alloc_retries, result.num_device_free) == (50 * MiB, 1, 1)


def test_split_segment_survives_the_retry():
    s = sim(capacity=60 * MiB)
    s.malloc("small", 3 * MiB)  # 20 MiB segment, split (17 MiB inactive)
    s.malloc("x", 38 * MiB)  # 38 MiB segment: reserved 58 MiB
    s.free("x")
    assert s.malloc("y", 39 * MiB)  # 40 MiB segment: 98 > 60, flush frees the 38 MiB one: 60 MiB
    # y's segment is 40 MiB and 1 MiB is left: not split, allocated counts 40 MiB
    assert (s.allocated, s.reserved, s.inactive_split, s.num_alloc_retries) == (43 * MiB, 60 * MiB, 17 * MiB, 1)
    s.check()


def test_oom_at_capacity():
    events = [("alloc", "a", 40 * MiB, 0), ("alloc", "b", 30 * MiB, 0), ("alloc", "c", 1, 0)]
    result = simulate(events, capacity=60 * MiB)
    oom = result.oom
    assert oom is not None and oom.event_index == 1
    assert (oom.requested, oom.rounded, oom.segment) == (30 * MiB, 30 * MiB, 30 * MiB)
    assert (oom.allocated, oom.reserved) == (40 * MiB, 40 * MiB)
    assert (result.num_alloc_retries, result.num_ooms, result.events) == (1, 1, 2)


def test_oom_from_fragmentation_not_from_live_bytes():
    # 30 MiB live at the failure, yet a 30 MiB request fails at 60 MiB: 3 MiB pins a 20 MiB segment
    events = []
    for i in range(3):
        events.append(("alloc", f"k{i}", 3 * MiB, 0))  # three 20 MiB segments (reserved 60)
        events.append(("alloc", f"t{i}", 17 * MiB, 0))  # fill each remainder exactly
    events += [("free", f"t{i}") for i in range(3)]  # 51 MiB free, but in three 17 MiB pieces
    events.append(("alloc", "big", 30 * MiB, 0))
    result = simulate(events, capacity=60 * MiB)
    assert result.oom is not None
    assert (result.oom.allocated, result.oom.reserved, result.oom.inactive_split) == (9 * MiB, 60 * MiB, 51 * MiB)
    assert result.peak_allocated == 60 * MiB


def test_per_process_memory_fraction_scales_capacity():
    result = simulate([("alloc", "a", 50 * MiB, 0)], "per_process_memory_fraction:0.5", capacity=80 * MiB)
    assert result.oom is not None and result.oom.reserved == 0


# ------------------------------------------------------------------ expandable segments
def test_expandable_segment_maps_20mib_pages_and_grows_in_place():
    s = sim("expandable_segments:True")
    s.malloc("a", 30 * MiB)  # maps 2 pages = 40 MiB; expandable: split if >= 512 B left
    assert (s.allocated, s.reserved) == (30 * MiB, 40 * MiB)
    s.malloc("b", 15 * MiB)  # 10 MiB free at the end + 1 more page (20 MiB): 30 MiB block
    assert (s.allocated, s.reserved) == (45 * MiB, 60 * MiB)
    assert s.address_of("b") == s.address_of("a") + 30 * MiB
    assert s.inactive_split == 0  # like PyTorch, not tracked for expandable segments
    s.malloc("c", 1000)  # small pool: its own segment mapped in 2 MiB pages
    assert (s.allocated, s.reserved) == (45 * MiB + 1024, 62 * MiB)
    s.check()


def test_expandable_segment_avoids_the_growing_batch_fragmentation():
    # a batch growing by 2 MiB per step: each step frees the last activation and asks a bit more
    events = []
    for step in range(5):
        events.append(("alloc", step, (100 + 2 * step) * MiB, 0))
        if step:
            events.append(("free", step - 1))
    plain = simulate(events)
    # every request is larger than any cached block: 100+102+104+106+108 MiB of segments
    assert plain.peak_reserved == 520 * MiB
    grown = simulate(events, "expandable_segments:True")
    # one segment, 20 MiB pages: 100 -> [0,100) maps 5 pages; 102 -> [100,202) maps 6 more (220);
    # 104: 18 MiB free at 202 + 5 pages (100 MiB) -> [202,306), mapped 320; 106 and 108 then fit in
    # the freed [0,202) and [106,320) ranges: no more pages
    assert grown.peak_reserved == 320 * MiB
    assert grown.peak_allocated == plain.peak_allocated == 214 * MiB


def test_expandable_release_unmaps_free_pages_at_capacity():
    s = sim("expandable_segments:True", capacity=60 * MiB)
    s.malloc("a", 30 * MiB, stream=0)  # 40 MiB mapped
    s.free("a")
    # stream 1 needs 3 pages (60 MiB): 40 + 60 > 60 -> release: stream 0's pages are unmapped
    assert s.malloc("b", 50 * MiB, stream=1)
    assert (s.allocated, s.reserved, s.num_alloc_retries) == (50 * MiB, 60 * MiB, 1)
    s.check()


# ------------------------------------------------------------------ free_requested, events, errors
def test_free_requested_drops_allocated_but_blocks_reuse():
    s = sim()
    s.malloc("a", 30 * MiB)
    s.free_requested("a")  # record_stream: the other stream may still read it
    assert s.allocated == 0
    s.malloc("b", 30 * MiB)  # cannot reuse "a" yet: new segment
    assert (s.allocated, s.reserved) == (30 * MiB, 60 * MiB)
    s.free("a")
    s.malloc("c", 30 * MiB)  # now it can
    assert (s.allocated, s.reserved) == (60 * MiB, 60 * MiB)
    s.check()


def test_fragmentation_and_inactive_split_at_the_peak():
    events = [("alloc", "a", 3 * MiB, 0), ("alloc", "b", 5 * MiB, 0), ("free", "a"), ("alloc", "c", 1000, 0)]
    result = simulate(events)
    # peak allocated 8 MiB, when 20 MiB were reserved and 12 MiB of the segment were an inactive split
    assert (result.peak_allocated, result.reserved_at_peak, result.inactive_split_at_peak) == (
        8 * MiB,
        20 * MiB,
        12 * MiB,
    )
    assert result.fragmentation == pytest.approx(1 - 8 / 20)
    assert result.peak_reserved == 22 * MiB
    assert result.fragmentation_of_peaks == pytest.approx(1 - 8 / 22)
    data = result.to_dict()
    assert data["peak"] == {"allocated": 8 * MiB, "reserved": 22 * MiB, "requested": 8 * MiB}
    assert data["inactive_split"] == 12 * MiB and data["num_alloc_retries"] == 0


def test_bad_events_are_user_errors():
    with pytest.raises(MemprofUserError, match="unknown kind 'malloc'"):
        simulate([("malloc", 1, 10)])
    with pytest.raises(MemprofUserError, match="allocated twice"):
        simulate([("alloc", 1, 10, 0), ("alloc", 1, 10, 0)])
    with pytest.raises(MemprofUserError, match="not \\('alloc', id, nbytes, stream\\)"):
        simulate([("alloc", 1)])
    assert simulate([("free", 99)]).unmatched_frees == 1


def test_zero_byte_allocations_take_no_block():
    # torch never calls the allocator for an empty storage: no 512 B block, no segment
    result = simulate([("alloc", "e", 0, 0), ("alloc", "x", 1, 0), ("free", "e"), ("free", "x")])
    assert (result.peak_allocated, result.peak_reserved, result.unmatched_frees) == (512, 2 * MiB, 0)


def test_stream_is_optional_in_alloc_events():
    assert simulate([("alloc", 1, 100)]).peak_reserved == 2 * MiB


# ------------------------------------------------------------------ what-if
def test_what_if_finds_the_setting_for_growing_batches():
    events = []
    for step in range(5):
        events.append(("alloc", step, (100 + 2 * step) * MiB, 0))
        if step:
            events.append(("free", step - 1))
    report = what_if(events)
    rows = {row.change: row.result for row in report.rows}
    assert report.baseline.result.peak_reserved == 520 * MiB
    assert rows["expandable_segments:True"].peak_reserved == 320 * MiB
    # 4 divisions round 100..108 MiB up to 112 MiB (64 MiB + k * 16 MiB): every block is reused,
    # two 112 MiB segments suffice - the textbook case for roundup_power2_divisions
    assert rows["roundup_power2_divisions:4"].peak_reserved == 224 * MiB
    assert report.best is not None and report.best.change == "roundup_power2_divisions:4"
    assert report.recommendation.startswith("PYTORCH_CUDA_ALLOC_CONF=roundup_power2_divisions:4 reserves")
    assert report.to_dict()["best"] == "roundup_power2_divisions:4"


def test_what_if_avoids_an_oom_caused_by_splitting_a_big_cached_block():
    events = [
        ("alloc", "A", 200 * MiB, 0),
        ("free", "A"),
        ("alloc", "s", 30 * MiB, 0),  # default: splits the cached 200 MiB block
        ("alloc", "B", 200 * MiB, 0),
    ]  # 170 MiB left there; a new 200 MiB segment > 300 MiB
    report = what_if(events, capacity=300 * MiB)
    assert report.baseline.result.oom is not None and report.baseline.result.oom.event_index == 3
    rows = {row.change: row.result for row in report.rows}
    # max_split_size_mb:128 keeps the 200 MiB block whole for B; "s" gets its own 30 MiB segment
    assert rows["max_split_size_mb:128"].oom is None
    assert rows["max_split_size_mb:128"].peak_reserved == 230 * MiB
    # expandable: s takes [0,30), B takes the free 170 MiB plus two more 20 MiB pages
    assert rows["expandable_segments:True"].oom is None
    assert rows["expandable_segments:True"].peak_reserved == 240 * MiB
    assert rows["max_split_size_mb:512"].oom is not None  # 200 < 512: same as the default
    assert report.best.change == "max_split_size_mb:128"
    assert report.recommendation == "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128 avoids the out-of-memory error"


def test_what_if_says_when_nothing_helps():
    report = what_if([("alloc", 1, 1000, 0), ("free", 1)])
    assert report.best is None
    assert "already as good" in report.recommendation


# ------------------------------------------------------------------ properties
SIZES = st.one_of(
    st.integers(1, 1 << 20),  # small pool
    st.integers((1 << 20) + 1, 10 << 20),  # 20 MiB segments
    st.integers(10 << 20, 200 << 20),  # rounded segments
)
CONFS = st.sampled_from(
    [
        "",
        "expandable_segments:True",
        "max_split_size_mb:40",
        "roundup_power2_divisions:4",
        "max_split_size_mb:64,roundup_power2_divisions:[2:1,>:2]",
    ]
)


@st.composite
def traces(draw):
    ops = draw(
        st.lists(st.tuples(st.booleans(), SIZES, st.integers(0, 1), st.integers(0, 10**6)), min_size=1, max_size=60)
    )
    events, live = [], []
    for n, (is_alloc, size, stream, pick) in enumerate(ops):
        if is_alloc or not live:
            events.append(("alloc", n, size, stream))
            live.append(n)
        elif pick % 8 == 0:
            events.append(("empty_cache",))
        else:
            events.append(("free", live.pop(pick % len(live))))
    return events


@settings(max_examples=150, deadline=None)
@given(events=traces(), conf=CONFS, capacity=st.one_of(st.none(), st.integers(20, 600).map(lambda m: m * MiB)))
def test_invariants_hold_after_every_event(events, conf, capacity):
    s = CachingAllocatorSimulator(conf, capacity)
    for kind, *rest in events:
        if kind == "alloc":
            if not s.malloc(*rest):
                break
        elif kind == "empty_cache":
            s.empty_cache()
        else:
            s.free(rest[0])
        # reserved >= allocated; segments (and expandable pages) are whole 2 MiB units
        assert s.reserved >= s.allocated
        assert s.reserved % (2 * MiB) == 0
        # allocated is the sum of the live blocks' sizes; each live block is at least the rounded request
        assert s.allocated == sum(b.size for b in s.live.values())
        assert all(b.size >= s.round_size(b.requested) for b in s.live.values())
        if capacity is not None:
            assert s.reserved <= capacity
        s.check()  # segments contiguous, free neighbours merged, reserved and inactive_split recomputed
    assert s.peak_reserved >= s.peak_allocated


@settings(max_examples=60, deadline=None)
@given(events=traces())
def test_freeing_everything_then_empty_cache_returns_all_memory(events):
    s = CachingAllocatorSimulator()
    for kind, *rest in events:
        if kind == "alloc":
            s.malloc(*rest)
        elif kind == "free":
            s.free(rest[0])
    for ident in list(s.live):
        s.free(ident)
    s.empty_cache()
    assert (s.allocated, s.reserved, s.inactive_split) == (0, 0, 0)


# ------------------------------------------------------------------ profiler timelines
def test_profiler_timeline_is_replayed_per_device():
    from memprof.estimators.allocator import device_events, devices_in

    # the profiler records ("alloc", storage_id, nbytes, device) / ("free", storage_id)
    timeline = [
        ("alloc", 1, 4096, "cpu"),
        ("alloc", 2, 3 * MiB, "cuda:0"),
        ("alloc", 3, 40 * MiB, "cuda:1"),
        ("free", 1),
        ("alloc", 4, 5 * MiB, "cuda:0"),
        ("free", 2),
        ("free", 3),
    ]
    assert devices_in(timeline) == ["cpu", "cuda:0", "cuda:1"]
    cuda0 = list(device_events(timeline))
    assert cuda0 == [("alloc", 2, 3 * MiB, 0), ("alloc", 4, 5 * MiB, 0), ("free", 2)]
    result = simulate(cuda0)
    # 3 MiB and 5 MiB share one 20 MiB segment
    assert (result.peak_allocated, result.peak_reserved) == (8 * MiB, 20 * MiB)
    assert simulate(device_events(timeline, "cuda:1")).peak_reserved == 40 * MiB
    with pytest.raises(MemprofUserError, match="no CUDA allocation"):
        list(device_events([("alloc", 1, 10, "cpu")]))


def test_min_capacity():
    from memprof.estimators.allocator import min_capacity

    growing = []
    for step in range(5):
        growing.append(("alloc", step, (100 + 2 * step) * MiB, 0))
        if step:
            growing.append(("free", step - 1))
    # flushing the cache before each new segment, the default settings need only the live peak:
    # 106 + 108 MiB
    assert min_capacity(growing) == 214 * MiB
    split = [("alloc", "A", 200 * MiB, 0), ("free", "A"), ("alloc", "s", 30 * MiB, 0), ("alloc", "B", 200 * MiB, 0)]
    # default: s splits the cached 200 MiB segment, which then cannot be released: 400 MiB
    assert min_capacity(split) == 400 * MiB
    assert min_capacity(split, "max_split_size_mb:128") == 230 * MiB
    assert simulate(split, capacity=398 * MiB).oom is not None
