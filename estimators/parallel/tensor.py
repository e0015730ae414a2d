"""Tensor parallelism (Megatron-style, `--tp N`): what one rank of N holds of each block.

Megatron's split of a Llama-like block, as torch.distributed.tensor.parallel's ColwiseParallel /
RowwiseParallel run it: q, k, v and the MLP's gate and up projections are split by output rows
(each rank computes its heads and its share of the intermediate features), o and down by input columns
(each rank's partial output is all-reduced to the full hidden state); embeddings, norms and the head
are replicated. So a rank runs exactly the block of a model with num_attention_heads / N,
num_key_value_heads / N and intermediate_size / N (head_dim unchanged) and full-size embeddings, norms
and head: `local_spec` builds that model's spec, whose parameters, gradients, optimizer states and
activations are the rank's. What it leaves out is stated, not guessed: the all-reduce of each
row-parallel output (and of the column-parallel inputs' gradients in the backward) and sequence
parallelism (`--sequence-parallel`, not modelled: an error).
"""

from __future__ import annotations

from ..errors import ParameterError
from ..models import ModelSpec

__all__ = ["TP_FAMILIES", "local_spec"]

TP_FAMILIES = ("llama", "mistral", "qwen2")  # Llama-like blocks: q/k/v/o + gate/up/down
MAX_TP = 1024


def local_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The model one rank of `tp` runs (module docstring)."""
    if isinstance(tp, bool) or not isinstance(tp, int) or not 1 <= tp <= MAX_TP:
        raise ParameterError(f"{{tp}} must be a whole number from 1 to {MAX_TP}, got {tp!r}", "tp")
    if tp == 1:
        return spec
    if spec.model_type not in TP_FAMILIES:
        raise ParameterError(
            f"{{tp}}: memprof models Megatron's split for {', '.join(TP_FAMILIES)}; {spec.name} is {spec.model_type}",
            "tp",
        )
    if spec.adapter is not None:
        raise ParameterError("{tp} with LoRA / quantized weights is not modelled", "tp")
    cfg = dict(spec.config)
    heads, kv_heads, inter = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    for what, n in (("attention heads", heads), ("key/value heads", kv_heads), ("intermediate size", inter)):
        if n % tp:
            raise ParameterError(f"{{tp}} {tp} does not divide {spec.name}'s {what} ({n})", "tp")
    cfg["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // heads
    cfg["num_attention_heads"] = heads // tp
    cfg["num_key_value_heads"] = kv_heads // tp
    cfg["intermediate_size"] = inter // tp
    return ModelSpec(spec.name, spec.model_type, cfg, spec.task, hf_id=spec.hf_id, source=spec.source)
