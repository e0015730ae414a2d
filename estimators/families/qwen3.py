"""Qwen3 (`qwen3`): the Llama layout with QK-norm, as Qwen3ForCausalLM builds it.

transformers/models/qwen3/modeling_qwen3.py: Qwen3Attention registers q_proj, k_proj, v_proj, o_proj
(biases with attention_bias), then q_norm and k_norm (RMSNorm over head_dim, applied to the
projections viewed as (b, s, heads, head_dim) before the rotary embedding). head_dim is a config field
(default 128, not hidden_size / heads). Sliding-window layers exist only with use_sliding_window
(Qwen3Config.__post_init__: layers from max_window_layers on); the forward is `_decoder.forward`.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Trace
from ..tensors import ParamTensor
from . import _decoder as dec
from ._base import Config, Family, require_divisible, tensors_of

# transformers Qwen3Config defaults (configuration_qwen3.py)
DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_parameters": None,
    "attention_bias": False,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 28,
    "layer_types": None,
    "attention_dropout": 0.0,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings", "max_window_layers")


def finalize_sliding(config: dict[str, Any], where: str) -> None:
    """Qwen3Config / Qwen3MoeConfig.__post_init__: the window only with use_sliding_window, layer types
    from max_window_layers on; num_key_value_heads defaults to the heads."""
    if not config.get("use_sliding_window"):
        config["sliding_window"] = None
    if config.get("num_key_value_heads") is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    require_divisible(config, where, "num_attention_heads", "num_key_value_heads")
    if config.get("layer_types") is None:
        window, start = config["sliding_window"], config["max_window_layers"]
        config["layer_types"] = [
            dec.SLIDING if window is not None and i >= start else dec.FULL for i in range(config["num_hidden_layers"])
        ]
    dec.check_layer_types(config, where)


def _describe(config: Config) -> dec.NewDecoderDims:
    bias = config["attention_bias"]
    return dec.describe(config, dec.NewDecoderDims, qkv_bias=bias, o_bias=bias, mlp_bias=False, qk_norm=True)


def layer_tensors(d: dec.NewDecoderDims, i: int, mlp: list[ParamTensor]) -> list[ParamTensor]:
    """Qwen3DecoderLayer's registration order: self_attn (q, k, v, o, q_norm, k_norm), mlp, the norms."""
    a, norms = dec.attention_modules(d, i), dec.layer_norms(d, i)
    assert a.q_proj and a.k_proj and a.v_proj and a.q_norm and a.k_norm
    return tensors_of(a.q_proj, a.k_proj, a.v_proj, a.o_proj, a.q_norm, a.k_norm) + mlp + tensors_of(*norms.values())


def _tensors(d: dec.NewDecoderDims) -> list[ParamTensor]:
    out = dec.embed(d).tensors()
    for i in range(d.num_layers):
        out += layer_tensors(d, i, tensors_of(*dec.dense_mlp(d, i).values()))
    out += dec.final_norm(d).tensors()
    out += dec.head_tensors(d)
    return out


def mask_types(d: dec.NewDecoderDims) -> tuple[str, ...]:
    """Qwen3Model builds the full-attention mask, and the sliding one when a layer slides."""
    return (dec.FULL, dec.SLIDING) if dec.SLIDING in d.layer_types else (dec.FULL,)


def _forward(tr: Trace, d: dec.NewDecoderDims, kernel: str) -> None:
    dec.forward(tr, d, kernel, mask_types(d))


FAMILY = Family(
    model_type="qwen3",
    task="causal-lm",
    head_class="Qwen3ForCausalLM",
    heads={
        "causal-lm": "Qwen3ForCausalLM",
        "seq-cls": "Qwen3ForSequenceClassification",
        "token-cls": "Qwen3ForTokenClassification",
    },
    defaults=DEFAULTS,
    required=REQUIRED,
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings", "attention_bias", "use_sliding_window"),
    finalize=finalize_sliding,
)
