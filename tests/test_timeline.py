"""The step timeline against the peak PyTorch's own tracker measures on real training steps.

Each case trains a tiny transformers model of one family on the CPU (AdamW, steady state: the
measured step is the second one) and compares `step_timeline(...).peak.allocated` with the peak of
live tensor bytes seen by torch.distributed._tools.mem_tracker.MemTracker. The issue's goal: every
case within 3 %, the median within 1 %.
"""

from __future__ import annotations

import statistics
from functools import cache

import pytest
import torch

from activation_cases import FAMILIES, adamw_bytes, build, measure_step, settings
from memprof.estimators.activations import ActivationSettings
from memprof.estimators.errors import MemprofUserError
from memprof.estimators.timeline import step_timeline
from memprof.estimators.vocabulary import CATEGORIES, PHASES

pytestmark = pytest.mark.filterwarnings("ignore:Module is None")

SHAPES = {"vit": (16, 1)}  # ViT's sequence comes from image and patch size; a larger batch
PRECISIONS = ("fp32", "bf16-mixed", "bf16-true")
MATRIX = [
    (f, a, p, ck, *SHAPES.get(f, (2, 32)))
    for f in FAMILIES
    for a in ("eager", "sdpa")
    for p in ("fp32", "bf16-mixed")
    for ck in ("none", "full", "selective")
]
MATRIX += [
    (f, a, "bf16-true", ck, *SHAPES.get(f, (2, 32)))
    for f in FAMILIES
    for a in ("eager", "sdpa")
    for ck in ("none", "full")
]
MATRIX += [
    ("gpt2", "eager", "fp32", "none", 4, 64),
    ("gpt2", "sdpa", "bf16-mixed", "full", 4, 64),
    ("llama", "sdpa", "bf16-mixed", "none", 4, 64),
    ("llama", "eager", "fp32", "selective", 3, 48),
    ("opt", "sdpa", "fp32", "none", 1, 57),
    ("bert", "eager", "bf16-mixed", "none", 4, 64),
    # activation-dominated steps (activations several times the model states)
    ("opt", "eager", "bf16-true", "none", 8, 128),
    ("llama", "sdpa", "bf16-mixed", "none", 8, 256),
    ("gpt2", "eager", "bf16-mixed", "none", 8, 128),
]


def _id(case):
    f, a, p, ck, b, s = case
    return f"{f}-{a}-{p}-{ck}-b{b}s{s}"


@cache
def run_case(case) -> tuple[int, int, str]:
    """(predicted peak, measured peak, predicted phase) of one training-step case."""
    family, attention, precision, checkpointing, b, s = case
    autocast = precision == "bf16-mixed"
    dtype = "bfloat16" if precision == "bf16-true" else "float32"
    measured, _, spec, _ = measure_step(family, attention, autocast, checkpointing, b, s, dtype=getattr(torch, dtype))
    st = ActivationSettings(
        b, s, "bfloat16" if precision != "fp32" else "float32", dtype, autocast, attention, checkpointing
    )
    timeline = step_timeline(spec, st, **adamw_bytes(spec, dtype))
    return timeline.peak.allocated, measured, timeline.peak.phase


@pytest.mark.parametrize("case", MATRIX, ids=[_id(c) for c in MATRIX])
def test_predicted_peak_within_3_percent(case):
    predicted, measured, _ = run_case(case)
    assert abs(predicted - measured) / measured < 0.03, (predicted, measured)


def test_median_error_below_1_percent():
    errors = [abs(p - m) / m for p, m, _ in map(run_case, MATRIX)]
    assert statistics.median(errors) < 0.01
    assert max(errors) < 0.03


def test_gradient_accumulation_two_micro_batches():
    # GIVEN two micro-batches per step: the second forward runs with all gradients resident
    measured, _, spec, _ = measure_step("gpt2", "eager", False, "none", 2, 32, micro_batches=2)
    timeline = step_timeline(spec, settings(2, 32, False, "eager"), grad_accumulation=2, **adamw_bytes(spec))
    one = step_timeline(spec, settings(2, 32, False, "eager"), **adamw_bytes(spec))
    assert abs(timeline.peak.allocated - measured) / measured < 0.01
    assert timeline.peak.allocated > one.peak.allocated
    assert any("micro-batch 2/2" in p.label for p in timeline)


def test_first_step_allocates_optimizer_states_inside_step():
    # GIVEN the very first step (no optimizer states yet)
    measured, _, spec, _ = measure_step("llama", "sdpa", False, "none", 2, 32, warm=False)
    timeline = step_timeline(spec, settings(2, 32, False, "sdpa"), states_exist=False, **adamw_bytes(spec))
    assert abs(timeline.peak.allocated - measured) / measured < 0.01
    forward = [p for p in timeline if p.phase == "forward"]
    assert all(p.by_category["optimizer_states"] == 0 for p in forward)


def test_output_not_held_frees_logits_and_cache():
    # GIVEN a loop that keeps only the loss (`loss = model(**batch).loss`)
    measured, _, spec, _ = measure_step("gpt2", "sdpa", False, "none", 2, 32, hold_output=False)
    timeline = step_timeline(spec, settings(2, 32, False, "sdpa"), held_outputs=False, **adamw_bytes(spec))
    held = step_timeline(spec, settings(2, 32, False, "sdpa"), **adamw_bytes(spec))
    assert abs(timeline.peak.allocated - measured) / measured < 0.01
    assert timeline.peak.allocated < held.peak.allocated


def test_peak_reports_phase_and_categories():
    _, spec = build("llama", "eager")
    timeline = step_timeline(spec, settings(4, 64, True, "eager"), **adamw_bytes(spec))
    peak = timeline.peak
    assert peak.phase in PHASES
    assert set(peak.by_category) == set(CATEGORIES)
    assert sum(peak.by_category.values()) == peak.allocated
    assert peak.allocated == max(p.allocated for p in timeline)


def test_timeline_shape():
    _, spec = build("gpt2", "eager")
    sizes = adamw_bytes(spec)
    timeline = step_timeline(spec, settings(2, 32, False, "eager"), **sizes)
    phases = [p.phase for p in timeline]
    # forward points, then backward, then the optimizer step, in that order
    assert phases == sorted(phases, key=["forward", "backward", "optimizer_step"].index)
    assert phases[-1] == "optimizer_step"
    assert [p.label for p in timeline if p.phase == "forward"][1:3] == ["forward: layer 0", "forward: layer 1"]
    backward = [p for p in timeline if p.phase == "backward"]
    grads = [p.by_category["gradients"] for p in backward]
    assert grads == sorted(grads) and grads[-1] == sizes["grad_bytes"]  # gradients appear layer by layer
    step = timeline.points[-1].by_category
    assert step["gradients"] == sizes["grad_bytes"] and step["optimizer_states"] == sizes["optimizer_state_bytes"]
    assert step["temporary"] >= sizes["optimizer_temporaries_bytes"]
    end = [p for p in timeline if p.label == "forward end"][0]
    assert end.by_category["activations"] > 0 and end.by_category["gradients"] == 0


def test_checkpointing_lowers_forward_end_activations():
    _, spec = build("gpt2", "eager")
    ends = {}
    for ck in ("none", "selective", "full"):
        timeline = step_timeline(spec, settings(2, 32, False, "eager", ck), **adamw_bytes(spec))
        ends[ck] = [p for p in timeline if p.label == "forward end"][0].by_category["activations"]
    assert ends["full"] < ends["selective"] < ends["none"]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(param_bytes=-1), "param_bytes must be a non-negative integer"),
        (dict(grad_accumulation=0), "grad_accumulation must be a positive integer"),
        (dict(grad_dtype="float9"), "unknown dtype 'float9'"),
    ],
)
def test_bad_arguments(kw, match):
    _, spec = build("gpt2", "eager")
    args = {**adamw_bytes(spec), **kw}
    with pytest.raises(MemprofUserError, match=match):
        step_timeline(spec, settings(1, 8, False, "eager"), **args)
