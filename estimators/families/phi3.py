"""Phi-3 (`phi3`), as Phi3ForCausalLM builds it (transformers/models/phi3/modeling_phi3.py).

The Llama layout with fused projections: Phi3Attention registers o_proj, then qkv_proj (hidden ->
(heads + 2 * kv_heads) * head_dim, no bias), whose output is sliced into q, k and v; Phi3MLP's
gate_up_proj (hidden -> 2 * intermediate) is chunked into gate and up, `up * act(gate)`. The rotary
embedding covers head_dim * partial_rotary_factor and is concatenated with the rest of each head;
resid_pdrop dropout follows attention and MLP (embd_pdrop is in the config but unused by the model).
With a `sliding_window` (Phi-3-mini-4k: 2047) every layer uses the sliding mask.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Trace
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import _decoder as dec
from ._base import Config, Family, require_divisible, tensors_of

# transformers Phi3Config defaults (configuration_phi3.py)
DEFAULTS: dict[str, Any] = {
    "vocab_size": 32064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "original_max_position_embeddings": 4096,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_parameters": None,
    "bos_token_id": 1,
    "eos_token_id": 32000,
    "pad_token_id": 32000,
    "sliding_window": None,
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_INTS = ("num_key_value_heads", "max_position_embeddings", "sliding_window")


def _finalize(config: dict[str, Any], where: str) -> None:
    """Phi3Config.__post_init__: num_key_value_heads defaults to the heads; head_dim is hidden / heads
    (Phi3Attention); the rotary width is head_dim * partial_rotary_factor (rope_parameters or the
    top-level field, default 1)."""
    require_divisible(config, where, "hidden_size", "num_attention_heads")
    if config.get("num_key_value_heads") is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    require_divisible(config, where, "num_attention_heads", "num_key_value_heads")
    config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    _rotary_factor(config, where)
    config["layer_types"] = [dec.FULL if config.get("sliding_window") is None else dec.SLIDING] * config[
        "num_hidden_layers"
    ]


def _rotary_factor(config: Config, where: str = "config") -> float:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    factor = config.get("partial_rotary_factor", 1.0)
    if isinstance(rope, dict):
        factor = rope.get("partial_rotary_factor", factor)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise MemprofUserError(f"{where}: partial_rotary_factor must be a number in (0, 1], got {factor!r}")
    return float(factor)


def _describe(config: Config) -> dec.NewDecoderDims:
    return dec.describe(
        config,
        dec.NewDecoderDims,
        qkv_bias=False,
        o_bias=False,
        mlp_bias=False,
        fused_qkv=True,
        fused_gate_up=True,
        resid_dropout=config.get("resid_pdrop", 0.0) or 0.0,
        rotary_dim=int(config["head_dim"] * _rotary_factor(config)),
    )


def _tensors(d: dec.NewDecoderDims) -> list[ParamTensor]:
    """Phi3DecoderLayer: self_attn (o_proj, then qkv_proj), mlp (gate_up_proj, down_proj), the norms."""
    out = dec.embed(d).tensors()
    for i in range(d.num_layers):
        a = dec.attention_modules(d, i)
        assert a.qkv_proj is not None
        out += tensors_of(a.o_proj, a.qkv_proj, *dec.dense_mlp(d, i).values(), *dec.layer_norms(d, i).values())
    out += dec.final_norm(d).tensors()
    out += dec.head_tensors(d)
    return out


def _forward(tr: Trace, d: dec.NewDecoderDims, kernel: str) -> None:
    dec.forward(tr, d, kernel, (d.layer_types[0],))


FAMILY = Family(
    model_type="phi3",
    task="causal-lm",
    head_class="Phi3ForCausalLM",
    heads={
        "causal-lm": "Phi3ForCausalLM",
        "seq-cls": "Phi3ForSequenceClassification",
        "token-cls": "Phi3ForTokenClassification",
    },
    defaults=DEFAULTS,
    required=REQUIRED,
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings",),
    finalize=_finalize,
)
