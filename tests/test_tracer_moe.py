"""Mixture-of-experts models through the tracer (memprof.tracer.rules), against a real CPU run.

Hugging Face MoE models (mixtral, qwen3_moe in transformers 5.24) run their experts through
`torch._grouped_mm`, whose fake kernel in torch accepts bf16 only; with float32 weights (32-true, and the
float32 parameters of *-mixed, since the op is not autocast-enabled) the tracer's rule gives it the output
the CPU kernel allocates. Each case traces the tiny model and runs the same step for real under
memprof.track (steady state: the second step is measured): peak within 1 %, states exact.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode

import memprof
from memprof import tiny_models
from memprof.tracer.optimizers import build_optimizers
from memprof.tracer.rules import GROUPED_MM_RULE, ROUTING_RULE, shape_rules

PEAK_TOLERANCE = 0.01


def _factory(family: str):
    def factory():
        model, _ = tiny_models.build(family)
        return memprof.Workload(model, tiny_models.batch(family, 4, 64))

    return factory


def _measured(family: str, precision: str):
    model, _ = tiny_models.build(family)
    inputs = tiny_models.batch(family, 4, 64)
    assert model.config._experts_implementation == "grouped_mm"  # the real run takes the same path
    if precision == "bf16-true":
        model.to(torch.bfloat16)
    opts = build_optimizers("adamw", [p for p in model.parameters() if p.requires_grad])
    autocast = tiny_models.autocast_context(precision == "bf16-mixed")

    def step():
        with autocast:
            out = model(**inputs)
            loss = out.loss
        loss.backward()
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)

    step()
    with memprof.track(model, opts) as run:
        step()
    return run.record


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_hf_moe_traces_as_it_runs(family, precision):
    traced = memprof.trace(_factory(family), "adamw", precision, device="cpu").record
    measured = _measured(family, precision)
    assert traced.model_states == measured.model_states
    assert traced.optimizer_state_breakdown == measured.optimizer_state_breakdown
    assert abs(traced.peak.allocated / measured.peak.allocated - 1) <= PEAK_TOLERANCE
    assert traced.peak.phase == measured.peak.phase == "backward"  # 4 x 64 tokens: the experts' tensors count
    ruled = [w for w in traced.warnings if w.startswith("torch._grouped_mm")]
    # bf16 weights: torch's own fake kernel runs, and the rule says nothing
    assert ruled == ([] if precision == "bf16-true" else [GROUPED_MM_RULE.format(dtypes="float32")])


def _fp32_grouped_mm():
    a = torch.empty(12, 8)
    w = torch.empty(4, 8, 16)
    return torch._grouped_mm(a, w, offs=torch.empty(4, dtype=torch.int32))


def test_grouped_mm_rule_matches_the_cpu_kernel_and_is_scoped():
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(12, 8, generator=g), torch.randn(4, 8, 16, generator=g)
    offs = torch.tensor([3, 6, 9, 12], dtype=torch.int32)
    real = torch._grouped_mm(a, w, offs=offs)  # the CPU kernel runs float32: per-group products
    expected = torch.cat([a[3 * i : 3 * i + 3] @ w[i] for i in range(4)])
    torch.testing.assert_close(real, expected)
    notes: list[str] = []
    with FakeTensorMode(), shape_rules(notes):
        fake = _fp32_grouped_mm()
    assert (fake.shape, fake.dtype, fake.stride()) == (real.shape, real.dtype, real.stride())
    assert notes == [GROUPED_MM_RULE.format(dtypes="float32")]
    with FakeTensorMode(), pytest.raises(RuntimeError, match="Expected inputs of BF16 type"):
        _fp32_grouped_mm()  # outside the trace torch's own meta kernel (and its dispatch cache) is back


# ------------------------------------------------ a hand-written top-k MoE (memprof.tracer.rules, routing)


class HandMoE(torch.nn.Module):
    """A top-k mixture of experts written as user code does, routed three ways: `torch.where` on a one-hot
    mask with `index_add_` (Mixtral's sparse block), a boolean mask per expert with boolean indexing and
    `index_put_` (`out[mask] += ...`), or tokens sorted by expert and split by `bincount(...).tolist()`.

    `route_bias` forces the router's top-k to the balanced round-robin the tracer assumes (row r picks
    experts (r*k + j) mod E, in that order): the router's weights are zero, so its scores are the bias."""

    def __init__(self, style: str, tokens: int, dim: int = 32, hidden: int = 64, experts: int = 4, k: int = 2):
        super().__init__()
        self.style, self.k = style, k
        self.router = torch.nn.Linear(dim, experts, bias=False)
        torch.nn.init.zeros_(self.router.weight)
        bias = torch.zeros(tokens, experts)
        for r in range(tokens):
            for j in range(k):
                bias[r, (r * k + j) % experts] = float(k - j)
        self.register_buffer("route_bias", bias)
        self.experts = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
            for _ in range(experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        scores = (self.router(x) + self.route_bias).softmax(-1)
        weights, chosen = scores.topk(self.k, dim=-1)
        out = torch.zeros_like(x)
        n = len(self.experts)
        if self.style == "where":
            mask = torch.nn.functional.one_hot(chosen, n).permute(2, 1, 0)
            for e, expert in enumerate(self.experts):
                slot, token = torch.where(mask[e])
                out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        elif self.style == "mask":
            for e, expert in enumerate(self.experts):
                hit = chosen == e
                rows = hit.any(-1)
                w = (weights * hit).sum(-1)[rows]
                out[rows] += expert(x[rows]) * w[:, None]
        else:  # "sort"
            flat = chosen.reshape(-1)
            order = flat.argsort(stable=True)
            counts = torch.bincount(flat, minlength=n).tolist()
            parts = x[order // self.k].split(counts)
            y = torch.cat([expert(p) for expert, p in zip(self.experts, parts)])
            y = y * weights.reshape(-1)[order, None]
            out.index_add_(0, order // self.k, y)
        return out.reshape(shape)


def _hand_factory(style: str, batch: int = 8, seq: int = 64):
    def factory():
        torch.manual_seed(0)
        model = HandMoE(style, batch * seq)
        x = torch.randn(batch, seq, 32)
        return memprof.Workload(model, x, loss=lambda out, inputs: out.square().mean())

    return factory


def _hand_measured(style: str, precision: str):
    w = _hand_factory(style)()
    opts = build_optimizers("adamw", [p for p in w.model.parameters() if p.requires_grad])
    autocast = tiny_models.autocast_context(precision == "bf16-mixed")

    def step():  # as the tracer's step: the output stays referenced through backward
        with autocast:
            out = w.model(w.inputs)
            loss = w.loss(out, w.inputs)
        loss.backward()
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)

    step()
    with memprof.track(w.model, opts) as run:
        step()
    return run.record


@pytest.mark.parametrize(
    ("style", "precision"), [("where", "32-true"), ("mask", "32-true"), ("sort", "32-true"), ("where", "bf16-mixed")]
)
def test_hand_written_moe_traces_with_balanced_routing(style, precision):
    traced = memprof.trace(_hand_factory(style), "adamw", precision, device="cpu").record
    measured = _hand_measured(style, precision)
    assert traced.model_states == measured.model_states
    assert traced.optimizer_state_breakdown == measured.optimizer_state_breakdown
    assert abs(traced.peak.allocated / measured.peak.allocated - 1) <= PEAK_TOLERANCE
    assert traced.peak.phase == measured.peak.phase
    # 8 x 64 tokens, top-2 of 4 experts: 256 rows each
    assert ROUTING_RULE.format(calls=1, experts=4, per_expert=256) in traced.warnings


def _mask_of_values():
    model = torch.nn.Linear(16, 4)
    return memprof.Workload(model, torch.randn(8, 16), loss=lambda out, inputs: out[out > 0].sum())


def _mask_of_topk_values():
    model = torch.nn.Linear(16, 4)

    def loss(out, inputs):
        weights, _ = out.topk(2, dim=-1)
        return out[weights > 0].sum()  # the top-k *scores* are fake: no rule gives them values

    return memprof.Workload(model, torch.randn(8, 16), loss=loss)


@pytest.mark.parametrize("factory", [_mask_of_values, _mask_of_topk_values])
def test_masks_of_fake_values_stay_a_named_error(factory):
    with pytest.raises(memprof.UserCodeError, match=r"nonzero.*depends on tensor values.*assumes balanced routing"):
        memprof.trace(factory, "adamw", "32-true", device="cpu")


def test_routing_rule_is_named_only_when_it_decided_a_shape():
    # a Hugging Face MoE routes with topk but sorts and counts with fixed shapes (histc): nothing assumed
    traced = memprof.trace(_factory("mixtral"), "adamw", "32-true", device="cpu").record
    assert not [w for w in traced.warnings if w.startswith("routing assumed balanced")]


def test_a_fake_value_written_into_routing_indices_ends_the_rule_for_them():
    notes: list[str] = []
    with FakeTensorMode(), shape_rules(notes):
        _, chosen = torch.empty(8, 4).topk(2, dim=-1)
        assert torch.where(chosen == 1)[0].shape == (4,)  # 8 rows x 2 / 4 experts
        chosen[:, 0].copy_(torch.empty(8).long())  # through a view: the base's real values are gone too
        with pytest.raises(DynamicOutputShapeException):
            torch.where(chosen == 1)
    assert notes == [ROUTING_RULE.format(calls=1, experts=4, per_expert=4)]
