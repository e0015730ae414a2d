"""An estimated training run through the caching-allocator simulator (estimators/allocator/training.py).

- hand-computed runs: a two-parameter model whose every segment and split is worked out below from
  the rules of CUDACachingAllocator.cpp (not read back from the simulator);
- the timeline's event stream (step_timeline(events=...)) against the timeline's own byte totals;
- properties of real tiny models' runs checked at every event: the simulator's allocated bytes are
  the live tensors rounded to 512 B each, reserved >= allocated, segments are 2 MiB multiples;
- the cost of simulating gpt2-1.5b (printed, for the report).
"""

from __future__ import annotations

import time

import pytest

from activation_cases import adamw_bytes, build, settings
from memprof.estimators.activations import ActivationSettings
from memprof.estimators.allocator import CachingAllocatorSimulator, simulate_training_step
from memprof.estimators.allocator.training import compose_run, replay_run, spread, states_per_parameter, training_events
from memprof.estimators.errors import MemprofUserError
from memprof.estimators.models import load_model
from memprof.estimators.optimizers import get_optimizer
from memprof.estimators.timeline import step_timeline

KiB = 1 << 10
MiB = 1 << 20


# ------------------------------------------------------------------ hand-computed runs
def two_parameter_run(warmup_steps: int = 1):
    """Parameters p1 = 12 MiB, p2 = 4 KiB; Adam-like states (two like each parameter); one foreach
    temporary per parameter. The step: a 30 MiB activation A, a held 1 MiB output H, then backward
    makes the gradients and frees A."""
    step = [
        ("alloc", "A", 30 * MiB, 0),
        ("alloc", "H", MiB, 0),
        ("alloc", ("grad", "p1"), 12 * MiB, 0),
        ("alloc", ("grad", "p2"), 4 * KiB, 0),
        ("free", "A"),
    ]
    phases = ["forward", "forward", "backward", "backward", "backward"]
    return compose_run(
        ["p1", "p2"],
        [12 * MiB, 4 * KiB],
        step,
        phases,
        optimizer_states=[(12 * MiB, 12 * MiB), (4 * KiB, 4 * KiB)],
        optimizer_temporaries=[12 * MiB, 4 * KiB],
        warmup_steps=warmup_steps,
    )


def test_two_parameter_run_by_hand():
    # Model creation: p1 (12 MiB >= 10 MiB) gets its own 12 MiB segment; p2 a 2 MiB small segment.
    # Step 1: A needs a new 30 MiB segment (44 MiB reserved); H comes from p2's small segment;
    # grad p1 a new 12 MiB segment (56); grad p2 the small segment; A is freed (30 MiB cached).
    # First optimizer step: exp_avg/exp_avg_sq of p1 are carved from A's cached 30 MiB block
    # (12 + 12, 6 MiB left in that split segment); the 12 MiB temporary finds no free block >= 12
    # MiB: a new segment (68 MiB). zero_grad frees grad p1: its 12 MiB segment is cached whole.
    # Step 2 (measured, peaks reset at 36 MiB + 12 KiB allocated, 68 MiB reserved): A finds only 6,
    # 12 and 12 MiB free blocks: a new 30 MiB segment (98 MiB); grad p1 reuses the cached 12 MiB.
    # Its peak is when grad p2 exists: 12 + 24 + 30 + 1 + 12 MiB + 4 + 8 + 4 KiB.
    run = two_parameter_run()
    sim = replay_run(run)
    assert sim.peak_allocated == 79 * MiB + 16 * KiB
    assert sim.peak_requested == 79 * MiB + 16 * KiB  # all sizes are multiples of 512
    assert sim.peak_reserved == 98 * MiB and sim.reserved_at_peak == 98 * MiB
    # stranded at that moment: 6 MiB in A's old segment + 1008 KiB free at the end of the small one
    assert sim.inactive_split == 6 * MiB + 1008 * KiB
    assert sim.fragmentation_bytes == 98 * MiB - (79 * MiB + 16 * KiB)
    assert sim.fragmentation == pytest.approx(1 - (79 * MiB + 16 * KiB) / (98 * MiB), abs=1e-12)
    assert sim.num_alloc_retries == 0 and sim.oom is None and sim.measured
    # the end of the run: parameters and states stay, four segments of 12 + 2 + 30 + 12 + 12 + 30 MiB
    assert sim.result.final_allocated == 36 * MiB + 12 * KiB
    assert sim.result.final_reserved == 98 * MiB


def test_the_first_step_alone_peaks_lower():
    # warmup_steps=0: the measured step is the first one; its peak is at the temporaries of the
    # optimizer step: 12 + 1 + 12 + 24 + 12 MiB and 4 + 4 + 8 + 4 KiB, with 68 MiB reserved
    sim = replay_run(two_parameter_run(warmup_steps=0))
    assert sim.peak_allocated == 61 * MiB + 20 * KiB
    assert sim.peak_reserved == 68 * MiB and sim.reserved_at_peak == 68 * MiB


def test_capacity_forces_a_retry_in_the_measured_step():
    # capacity 90 MiB: step 2's A (30 MiB) would reach 98 MiB, so the allocator frees every cached
    # unsplit segment (the two free 12 MiB segments: 68 -> 44 MiB), counts a retry and maps A (74);
    # grad p1 then needs a new 12 MiB segment (86); the temporary is carved from A's freed segment.
    sim = replay_run(two_parameter_run(), capacity=90 * MiB)
    assert sim.num_alloc_retries == 1 and sim.oom is None
    assert sim.peak_allocated == 79 * MiB + 16 * KiB
    assert sim.peak_reserved == 86 * MiB and sim.reserved_at_peak == 86 * MiB


def test_oom_point_is_located():
    # capacity 80 MiB: A fits after the retry (74 MiB), grad p1 needs 12 MiB more and nothing
    # cached can be released (A's segment is in use, the others are split): out of memory there
    sim = replay_run(two_parameter_run(), capacity=80 * MiB)
    oom = sim.oom
    assert oom is not None and oom.requested == 12 * MiB and oom.segment == 12 * MiB
    assert oom.allocated == 67 * MiB + 12 * KiB and oom.reserved == 74 * MiB
    assert sim.oom_where == "step 2 (measured): backward"
    assert sim.measured and sim.to_dict()["oom"]["where"] == "step 2 (measured): backward"


def test_oom_in_model_creation_is_reported_as_such():
    sim = replay_run(two_parameter_run(), capacity=10 * MiB)  # p1 alone needs a 12 MiB segment
    assert sim.oom_where == "model creation" and not sim.measured


def test_what_if_replays_the_same_run():
    run = two_parameter_run()
    sim = replay_run(run)
    report = sim.what_if()
    assert report.baseline.result.peak_reserved == sim.peak_reserved
    assert report.baseline.result.peak_allocated == sim.peak_allocated
    # expandable segments: the second A maps pages into the large pool's one virtual segment
    # right behind the free room instead of a separate 30 MiB cudaMalloc
    expandable = [r for r in report.rows if r.change == "expandable_segments:True"][0]
    assert expandable.result.peak_reserved < sim.peak_reserved


# ------------------------------------------------------------------ sizes given as totals
def test_spread_is_exact():
    assert spread(4 * 10, [3, 7]) == [12, 28]
    assert spread(10, [1, 1, 1]) == [3, 3, 4] and sum(spread(10, [1, 1, 1])) == 10
    assert spread(0, [5, 5]) == [0, 0] and spread(7, []) == []


def test_states_per_parameter_from_the_optimizer_spec():
    _, spec = build("gpt2")
    params = spec.parameter_tensors()
    adamw = get_optimizer("adamw").state_tensors(params, "float32")
    rows = states_per_parameter(params, adamw)
    # on CUDA Adam's `step` stays on the host: exp_avg and exp_avg_sq, like each parameter
    assert rows == [(4 * p.numel, 4 * p.numel) for p in params]
    # on the CPU the fp32 `step` scalar is a tensor too, created first (torch's _init_group)
    cpu = states_per_parameter(params, adamw, device="cpu")
    assert cpu == [(4, 4 * p.numel, 4 * p.numel) for p in params]
    master = states_per_parameter(params, adamw, master_bytes_per_element=4)
    assert master == [(4 * p.numel, 4 * p.numel, 4 * p.numel) for p in params]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(optimizer_states=[1, 2]), "optimizer_states lists 2 parameters"),
        (dict(optimizer_states=-1), "optimizer_states must be a non-negative integer"),
        (dict(optimizer_states=2.5), "optimizer_states must be a number of bytes or one entry per parameter"),
        (dict(optimizer_temporaries="big"), "optimizer_temporaries must be a non-negative integer"),
        (dict(warmup_steps=-1), "warmup_steps must be a non-negative integer"),
        (dict(param_bytes=1.5), "param_bytes must be a non-negative integer"),
    ],
)
def test_bad_arguments(kw, match):
    _, spec = build("gpt2")
    sizes = adamw_bytes(spec)
    args = {
        **dict(
            param_bytes=sizes["param_bytes"],
            grad_bytes=sizes["grad_bytes"],
            grad_dtype="float32",
            optimizer_states=sizes["optimizer_state_bytes"],
        ),
        **kw,
    }
    with pytest.raises(MemprofUserError, match=match):
        simulate_training_step(spec, settings(1, 8, False, "eager"), **args)


# ------------------------------------------------------------------ the timeline's event stream
CASES = [
    ("gpt2", settings(2, 32, False, "eager"), {}),
    ("gpt2", settings(2, 32, True, "sdpa"), {}),  # autocast weight casts
    ("llama", settings(2, 32, False, "sdpa", "full"), {}),  # recomputation in backward
    ("llama", settings(3, 16, True, "eager", "selective"), {}),
    ("bert", settings(2, 32, False, "eager"), {}),  # module buffers
    ("gpt_neox", settings(2, 16, False, "eager"), {"grad_accumulation": 2}),
    ("opt", settings(2, 32, False, "sdpa"), {"held_outputs": False}),
    ("gpt2", settings(2, 32, False, "eager"), {"create_graph": True}),  # Hessian optimizers' backward
    ("llama", settings(2, 32, True, "sdpa"), {"create_graph": True}),
]


def _case_id(case):
    family, st, kw = case
    return f"{family}-{st.attention}-{st.checkpointing}-{'amp' if st.autocast else 'fp32'}-" + "-".join(
        f"{k}{v}" for k, v in kw.items()
    )


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_step_events_reproduce_the_timeline_totals(case):
    family, st, kw = case
    _, spec = build(family, st.attention)
    sizes = adamw_bytes(spec)
    events, phases = [], []
    timeline = step_timeline(spec, st, **sizes, **kw, events=events, event_phases=phases)
    plain = step_timeline(spec, st, **sizes, **kw)
    assert [p.by_category for p in plain] == [p.by_category for p in timeline]  # no behaviour change
    assert len(phases) == len(events) and set(phases) <= {"forward", "backward"}
    from memprof.estimators.activations import build_trace

    base = sizes["param_bytes"] + sizes["optimizer_state_bytes"] + sum(build_trace(spec, st).buffers.values())
    live: dict = {}
    peak = current = 0
    for e in events:
        if e[0] == "alloc":
            assert e[1] not in live, "an id is allocated twice"
            live[e[1]] = e[2]
            current += e[2]
            peak = max(peak, current)
        else:
            current -= live.pop(e[1])
    # left live: the parameter gradients (exactly grad_bytes) and what the loop holds
    grads = sum(n for i, n in live.items() if isinstance(i, tuple) and i[0] == "grad")
    assert grads == sizes["grad_bytes"]
    assert not any(isinstance(i, tuple) and i[0] == "grad_acc" for i in live)
    step_point = timeline.points[-1]
    assert step_point.phase == "optimizer_step"
    assert step_point.allocated == base + current + sizes["optimizer_temporaries_bytes"]
    assert timeline.peak.allocated == max(base + peak, step_point.allocated)


@pytest.mark.parametrize("conf", ["", "expandable_segments:True"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_run_properties_at_every_event(case, conf):
    family, st, kw = case
    _, spec = build(family, st.attention)
    sizes = adamw_bytes(spec)
    run = training_events(
        spec,
        st,
        param_bytes=sizes["param_bytes"],
        grad_bytes=sizes["grad_bytes"],
        grad_dtype="float32",
        optimizer_states=sizes["optimizer_state_bytes"],
        optimizer_temporaries=sizes["optimizer_temporaries_bytes"],
        warmup_steps=2,
        **kw,
    )
    sim = CachingAllocatorSimulator(conf, record_segments=True)
    live: dict = {}
    rounded = unrounded = measured_peak = 0
    for index, e in enumerate(run.events):
        if e[0] == "alloc":
            assert sim.malloc(e[1], e[2], e[3])
            live[e[1]] = e[2]
            rounded += 0 if e[2] == 0 else max(512, -(-e[2] // 512) * 512)
            unrounded += e[2]
        else:
            sim.free(e[1])
            n = live.pop(e[1])
            rounded -= 0 if n == 0 else max(512, -(-n // 512) * 512)
            unrounded -= n
        # requested bytes are the live tensors exactly; allocated is each rounded to 512 B, except
        # that the large pool (without expandable segments) hands out a whole block when less than
        # 1 MiB would be left after the split
        assert sim.requested == unrounded
        if conf:
            assert sim.allocated == rounded
        else:
            assert rounded <= sim.allocated
        assert sim.allocated <= sim.reserved
        if index >= run.measured_from:
            measured_peak = max(measured_peak, unrounded)
        if index % 97 == 0:
            sim.check()
    sim.check()
    assert not live or all(isinstance(i, tuple) and i[0] in ("param", "buffer", "state") for i in live)
    assert all(n % (2 * MiB) == 0 for _, n in sim.segment_events)
    # the measured step's unrounded peak is the timeline's peak (states exist: warm-up steps ran)
    assert measured_peak == run.timeline.peak.allocated
    result = replay_run(run, conf)
    assert result.peak_requested == run.timeline.peak.allocated
    assert result.peak_reserved >= result.peak_allocated >= result.peak_requested
    assert result.peak_reserved % (2 * MiB) == 0


def test_small_pool_allocations_are_rounded_exactly():
    # a run whose tensors are all small (<= 1 MiB): allocated is the sum of the 512-rounded sizes
    _, spec = build("gpt2")
    sizes = adamw_bytes(spec)
    run = training_events(
        spec,
        settings(1, 4, False, "eager"),
        param_bytes=sizes["param_bytes"],
        grad_bytes=sizes["grad_bytes"],
        grad_dtype="float32",
        optimizer_states=sizes["optimizer_state_bytes"],
        optimizer_temporaries=0,
    )
    assert max(e[2] for e in run.events if e[0] == "alloc") <= MiB
    sim = CachingAllocatorSimulator()
    live: dict = {}
    rounded = 0
    for e in run.events:
        if e[0] == "alloc":
            sim.malloc(e[1], e[2])
            live[e[1]] = r = 0 if e[2] == 0 else max(512, -(-e[2] // 512) * 512)
            rounded += r
        else:
            sim.free(e[1])
            rounded -= live.pop(e[1])
        assert sim.allocated == rounded


def test_first_step_measured_matches_the_first_step_timeline():
    _, spec = build("llama", "sdpa")
    st = settings(2, 32, False, "sdpa")
    sizes = adamw_bytes(spec)
    sim = simulate_training_step(
        spec,
        st,
        param_bytes=sizes["param_bytes"],
        grad_bytes=sizes["grad_bytes"],
        grad_dtype="float32",
        optimizer_states=sizes["optimizer_state_bytes"],
        optimizer_temporaries=sizes["optimizer_temporaries_bytes"],
        warmup_steps=0,
    )
    first = step_timeline(spec, st, states_exist=False, **sizes)
    assert sim.peak_requested == first.peak.allocated
    assert [p.by_category for p in sim.run.timeline] == [p.by_category for p in first]


def test_workspaces_are_allocated_once_and_kept():
    _, spec = build("gpt2")
    st = settings(2, 32, False, "eager")
    sizes = adamw_bytes(spec)
    args = dict(
        param_bytes=sizes["param_bytes"],
        grad_bytes=sizes["grad_bytes"],
        grad_dtype="float32",
        optimizer_states=sizes["optimizer_state_bytes"],
        optimizer_temporaries=sizes["optimizer_temporaries_bytes"],
    )
    plain = simulate_training_step(spec, st, **args)
    with_ws = simulate_training_step(spec, st, workspaces=(8_519_680,), **args)
    assert with_ws.peak_requested == plain.peak_requested + 8_519_680
    assert with_ws.result.final_allocated == plain.result.final_allocated + 8_519_680


# ------------------------------------------------------------------ cost (figures for the report)
@pytest.mark.parametrize("batch, seq", [(1, 1024), (32, 1024)])
def test_gpt2_xl_simulation_cost(batch, seq, capsys):
    spec = load_model("gpt2-1.5b")
    params = spec.parameter_tensors()
    n = spec.num_parameters
    st = ActivationSettings(batch, seq, "bfloat16", "float32", True, "flash", "none", device="cuda")
    rows = states_per_parameter(params, get_optimizer("adamw").state_tensors(params, "float32"))
    start = time.perf_counter()
    sim = simulate_training_step(
        spec,
        st,
        param_bytes=4 * n,
        grad_bytes=4 * n,
        grad_dtype="float32",
        optimizer_states=rows,
        optimizer_temporaries=4 * n,
    )
    elapsed = time.perf_counter() - start
    events = len(sim.run.events)
    with capsys.disabled():
        print(
            f"\ngpt2-1.5b b{batch} s{seq}: {events:,} events in {elapsed * 1e3:.0f} ms; allocated "
            f"{sim.peak_allocated:,} reserved {sim.peak_reserved:,} fragmentation {sim.fragmentation:.1%}"
        )
    assert sim.peak_requested == sim.run.timeline.peak.allocated
    assert sim.peak_reserved >= sim.peak_allocated
    assert elapsed < 5.0  # generous: the measured cost is ~50-70 ms on a shared 2-core machine
