"""The sparse mixture-of-experts block of Mixtral and Qwen3-MoE: a top-k router and experts stored as
3-D tensors, replayed as transformers 5 runs them.

Parameters (MixtralSparseMoeBlock / Qwen3MoeSparseMoeBlock): the router `mlp.gate.weight` (experts,
hidden) and `mlp.experts.gate_up_proj` (experts, 2 * expert_intermediate, hidden) and
`mlp.experts.down_proj` (experts, hidden, expert_intermediate).

Forward, as transformers 5.24 writes it:
- the router (MixtralTopKRouter / Qwen3MoeTopKRouter): logits = linear(x, weight) (tokens, experts);
  softmax in fp32 (saved); topk (its int64 indices saved); with norm_topk_prob (always in Mixtral) the
  top-k values are divided in place by their sum, which saves a clone of the values and the sum;
  Qwen3-MoE casts the weights back to the logits' dtype;
- the experts: the default `experts_implementation` is "grouped_mm" (PreTrainedModel.
  get_correct_experts_implementation; integrations/moe.py `grouped_mm_experts_forward`, which runs
  torch.nn.functional.grouped_mm on CPU too with torch >= 2.10). Every (token, chosen expert) pair is
  one row: S = tokens x top_k rows, sorted by expert (`torch.sort`: int64 ids and permutation),
  gathered (`hidden[perm // top_k]`, an (S, hidden) copy; the int64 indices saved), the routing weights
  gathered likewise (S,), one grouped matmul up (its (S, hidden) input and the int32 offsets saved),
  act(gate) * up on the chunked (S, 2 * intermediate) output, one grouped matmul down (its (S,
  intermediate) input saved), times the routing weights (both saved), un-permuted
  (`weighted[inv_perm]`, an (S, hidden) copy; inv_perm saved), summed over the top_k rows of each token.
  grouped_mm is not autocast-enabled: the rows are cast to the weights' dtype, so under mixed precision
  the experts compute in fp32.

How memprof accounts for the routing split: every tensor above has S = tokens x top_k rows however the
router splits them between experts (the split only moves the `offsets`), so the saved bytes and the
peak do not depend on it; this is exact, not an average. With `experts_implementation="eager"` (a
Python loop over the experts that were hit, `torch.where` per expert) the per-expert pieces also sum to
S rows, but that path is not replayed (the estimate describes the default).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..autograd import T, Trace, promote
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import _trace as t
from ._base import Linear, tensors_of
from ._decoder import NewDecoderDims, dense_mlp, gated_mlp

# the estimate's warning for a mixture of experts (module docstring)
ROUTING_NOTE = (
    "mixture of experts: transformers' default grouped_mm experts keep tokens x top_k rows whatever "
    "the router's split between experts, so the routing changes no predicted byte; modelled as "
    "experts_implementation='grouped_mm' (the 'eager' per-expert loop is not replayed)"
)


@dataclass(frozen=True, kw_only=True)
class MoEDims(NewDecoderDims):
    """A decoder whose MLPs are sparse blocks, except the layers in `dense_layers`."""

    num_experts: int
    top_k: int
    expert_intermediate: int
    norm_topk: bool
    weights_to_logits_dtype: bool
    dense_layers: tuple[int, ...] = ()
    gate_first: bool = True  # Mixtral registers the router before the experts, Qwen3-MoE after


def block(d: MoEDims, i: int) -> MoEBlock:
    return MoEBlock(f"model.layers.{i}.mlp", d.hidden_size, d.expert_intermediate, d.num_experts, d.top_k)


def mlp_tensors(d: MoEDims, i: int) -> list[ParamTensor]:
    """The parameters of layer i's MLP in registration order."""
    if i in d.dense_layers:
        return tensors_of(*dense_mlp(d, i).values())
    m = block(d, i)
    return [*m.gate.tensors(), *m.expert_tensors()] if d.gate_first else [*m.expert_tensors(), *m.gate.tensors()]


def mlp_forward(tr: Trace, y: T, d: NewDecoderDims, i: int) -> T:
    """The `_decoder.forward` MLP hook: the sparse block, or the dense gated MLP of a dense layer."""
    assert isinstance(d, MoEDims)
    if i in d.dense_layers:
        return gated_mlp(tr, y, d, dense_mlp(d, i))
    return moe_forward(
        tr, y, block(d, i), d.activation, norm_topk=d.norm_topk, weights_to_logits_dtype=d.weights_to_logits_dtype
    )


@dataclass(frozen=True)
class MoEBlock:
    """The parameters of one sparse block at `prefix` (model.layers.i.mlp)."""

    prefix: str
    hidden: int
    intermediate: int
    experts: int
    top_k: int

    @property
    def gate(self) -> Linear:
        """The router (MixtralTopKRouter / Qwen3MoeTopKRouter: a `weight` parameter used through F.linear)."""
        return Linear(f"{self.prefix}.gate", self.hidden, self.experts, has_bias=False)

    @property
    def gate_up_proj(self) -> ParamTensor:
        return ParamTensor(f"{self.prefix}.experts.gate_up_proj", (self.experts, 2 * self.intermediate, self.hidden))

    @property
    def down_proj(self) -> ParamTensor:
        return ParamTensor(f"{self.prefix}.experts.down_proj", (self.experts, self.hidden, self.intermediate))

    def expert_tensors(self) -> list[ParamTensor]:
        return [self.gate_up_proj, self.down_proj]


def moe_forward(tr: Trace, y: T, m: MoEBlock, activation: str, *, norm_topk: bool, weights_to_logits_dtype: bool) -> T:
    """The sparse block on y (tokens, hidden); returns the (tokens, hidden) output (module docstring)."""
    if activation not in ("silu", "swish", "gelu", "gelu_pytorch_tanh"):
        raise MemprofUserError(f"activation {activation!r} is not modelled for mixture-of-experts layers")
    tokens = y.numel // m.hidden
    s = tokens * m.top_k
    # -- the router
    tr.module = m.gate.name
    # F.linear(x, self.weight) of the router module, not an nn.Linear (peft's LoRA does not wrap it)
    logits = tr.linear(y, t.param(tr, m.gate.weight), m.experts)
    probs = tr.softmax(logits, "float32")
    values = tr.act(s, "float32", "topk_values")
    indices = tr.act(s, "int64", "topk_indices", "index")
    tr.record("topk", [probs], [values, indices], [("indices", indices)])
    weights = values
    if norm_topk:
        total = tr.act(tokens, "float32", "topk_sum")
        tr.record("sum", [values], [total])
        original = tr.act(s, "float32", "topk_values_original", "const")  # div_ keeps the values it overwrote
        weights = tr.act(s, "float32", "routing_weights")
        tr.record("div_", [values, total], [weights, original], [("self", original), ("other", total)])
    if weights_to_logits_dtype:
        weights = tr.to(weights, logits.dtype)
    # -- the experts (grouped_mm_experts_forward)
    tr.module = m.prefix + ".experts"
    expert_ids = tr.act(s, "int64", "sorted_expert_ids", "index")
    perm = tr.act(s, "int64", "perm", "index")
    tr.record("sort", [indices], [expert_ids, perm])
    token_of = tr.act(s, "int64", "perm_floordiv_top_k", "index")
    tr.record("floor_divide", [perm], [token_of])
    rows = tr.act(s * m.hidden, y.dtype, "selected_hidden_states")
    tr.record("index", [y, token_of], [rows], [("indices", token_of)])
    row_weights = tr.act(s, weights.dtype, "sample_weights")
    tr.record("index", [weights, perm], [row_weights], [("indices", perm)])
    ids_float = tr.act(s, "float32", "histc_input", "const")
    tr.record("to_copy", [expert_ids], [ids_float])
    per_expert = tr.act(m.experts, "float32", "tokens_per_expert", "const")
    tr.record("histc", [ids_float], [per_expert])
    offsets = tr.act(m.experts, "int32", "offsets", "index")
    tr.record("cumsum", [per_expert], [offsets])
    w_up, w_down = t.param(tr, m.gate_up_proj), t.param(tr, m.down_proj)
    rows = tr.to(rows, w_up.dtype)  # input.to(weight.dtype): grouped_mm is not autocast-enabled
    up = tr.act(s * 2 * m.intermediate, w_up.dtype, "grouped_mm")
    tr.record("grouped_mm", [rows, w_up, offsets], [up], [("self", rows), ("offs", offsets)])
    act = tr.act(s * m.intermediate, up.dtype, activation)
    tr.record(activation, [up], [act], [("self", up)])  # act(gate): gate is a view of `up`
    prod = tr.act(s * m.intermediate, up.dtype, "mul")
    tr.record("mul", [up, act], [prod], [("self", up), ("other", act)])
    prod = tr.to(prod, w_down.dtype)
    down = tr.act(s * m.hidden, w_down.dtype, "grouped_mm")
    tr.record("grouped_mm", [prod, w_down, offsets], [down], [("self", prod), ("offs", offsets)])
    weighted = tr.act(s * m.hidden, promote(down.dtype, row_weights.dtype), "weighted_out")
    tr.record("mul", [down, row_weights], [weighted], [("self", down), ("other", row_weights)])
    inv_perm = tr.act(s, "int64", "inv_perm", "index")
    tr.record("index_put", [perm], [inv_perm])
    restored = tr.act(s * m.hidden, weighted.dtype, "weighted_out_restored")
    tr.record("index", [weighted, inv_perm], [restored], [("indices", inv_perm)])
    summed = tr.act(tokens * m.hidden, restored.dtype, "sum_top_k")
    tr.record("sum", [restored], [summed])
    return tr.to(summed, y.dtype)
