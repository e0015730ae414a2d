"""Gemma 2 (`gemma2`) and Gemma 3's text model (`gemma3_text`), as Gemma2ForCausalLM and
Gemma3ForCausalLM build them (transformers/models/gemma2/modeling_gemma2.py, gemma3/modeling_gemma3.py).

Both: the scaled word embedding (times sqrt(hidden_size), a buffer), Gemma's (1 + weight) RMSNorm,
sandwich norms (input, post_attention, pre_feedforward, post_feedforward), gelu_pytorch_tanh gated MLP,
sliding-window and global layers alternating (`layer_types`; Gemma 2: every other layer slides,
Gemma 3: five sliding layers per global one, `sliding_window_pattern` 6), the output layer tied to
the embedding by default. Gemma 2 soft-caps the attention logits (eager only: Gemma2PreTrainedModel
sets `_supports_sdpa = False`, so transformers refuses sdpa and its default is eager) and the final
logits; Gemma 3 instead normalizes q and k (q_norm, k_norm over head_dim, after the transpose) and
has one rotary embedding per layer type (rope scaling changes the frequencies, not the memory).
"""

from __future__ import annotations

from typing import Any

from ..autograd import Trace
from ..errors import MemprofUserError, ParameterError
from ..tensors import ParamTensor
from . import _decoder as dec
from ._base import Config, Family, require_divisible, tensors_of

# transformers Gemma2Config defaults (configuration_gemma2.py)
GEMMA2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 256000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "tie_word_embeddings": True,
    "rope_parameters": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "layer_types": None,
    "final_logit_softcapping": 30.0,
    "attn_logit_softcapping": 50.0,
    "use_bidirectional_attention": None,
}
# transformers Gemma3TextConfig defaults (configuration_gemma3.py)
GEMMA3_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "tie_word_embeddings": True,
    "rope_parameters": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "layer_types": None,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "use_bidirectional_attention": False,
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")


def _finalize(config: dict[str, Any], where: str, pattern: int) -> None:
    """Gemma2Config / Gemma3TextConfig.__post_init__: layer types every `pattern` layers (Gemma 3 reads
    `sliding_window_pattern`, default 6; Gemma 2 alternates)."""
    require_divisible(config, where, "hidden_size", "num_attention_heads")  # validate_architecture
    require_divisible(config, where, "num_attention_heads", "num_key_value_heads")
    if config.get("use_bidirectional_attention"):
        raise MemprofUserError(
            f"{where}: use_bidirectional_attention (Gemma as an encoder) is not modelled; "
            "memprof models the causal language model"
        )
    if config.get("layer_types") is None:
        config["layer_types"] = [
            dec.SLIDING if (i + 1) % pattern else dec.FULL for i in range(config["num_hidden_layers"])
        ]
    dec.check_layer_types(config, where)
    if dec.SLIDING in config["layer_types"] and config.get("sliding_window") is None:
        raise MemprofUserError(f"{where}: sliding-window layers need a 'sliding_window' size")


def _finalize_gemma2(config: dict[str, Any], where: str) -> None:
    _finalize(config, where, 2)


def _finalize_gemma3(config: dict[str, Any], where: str) -> None:
    pattern = config.get("sliding_window_pattern", 6)
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
        raise MemprofUserError(f"{where}: field 'sliding_window_pattern' must be a positive integer, got {pattern!r}")
    _finalize(config, where, pattern)


def _common(config: Config) -> dict[str, Any]:
    bias = config["attention_bias"]
    return dict(
        activation=config["hidden_activation"],
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=False,
        gemma_norm=True,
        sandwich_norm=True,
        embed_scale=True,
        attn_softcap=config.get("attn_logit_softcapping"),
        final_softcap=config.get("final_logit_softcapping"),
    )


def _describe_gemma2(config: Config) -> dec.NewDecoderDims:
    return dec.describe(config, dec.NewDecoderDims, **_common(config))


def _describe_gemma3(config: Config) -> dec.NewDecoderDims:
    return dec.describe(config, dec.NewDecoderDims, **_common(config), qk_norm=True, rope_per_layer_type=True)


def _tensors(d: dec.NewDecoderDims) -> list[ParamTensor]:
    """Gemma{2,3}DecoderLayer: self_attn (q, k, v, o[, q_norm, k_norm]), mlp (gate, up, down), then
    input_layernorm, post_attention_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm."""
    out = dec.embed(d).tensors()
    for i in range(d.num_layers):
        a = dec.attention_modules(d, i)
        assert a.q_proj and a.k_proj and a.v_proj
        out += tensors_of(a.q_proj, a.k_proj, a.v_proj, a.o_proj)
        if a.q_norm is not None and a.k_norm is not None:
            out += tensors_of(a.q_norm, a.k_norm)
        out += tensors_of(*dec.dense_mlp(d, i).values(), *dec.layer_norms(d, i).values())
    out += dec.final_norm(d).tensors()
    out += dec.head_tensors(d)
    return out


def _forward(tr: Trace, d: dec.NewDecoderDims, kernel: str) -> None:
    if d.attn_softcap is not None and kernel != "eager" and tr.attention == "sdpa":
        raise ParameterError(
            "gemma2 does not run with sdpa attention (transformers: Gemma2PreTrainedModel._supports_sdpa "
            "is False, sdpa has no soft-capping); use {attention} eager (its default) or flash on a GPU",
            "attention",
        )
    dec.forward(tr, d, kernel, (dec.FULL, dec.SLIDING))


GEMMA2 = Family(
    model_type="gemma2",
    task="causal-lm",
    head_class="Gemma2ForCausalLM",
    heads={
        "causal-lm": "Gemma2ForCausalLM",
        "seq-cls": "Gemma2ForSequenceClassification",
        "token-cls": "Gemma2ForTokenClassification",
    },
    defaults=GEMMA2_DEFAULTS,
    required=REQUIRED,
    describe=_describe_gemma2,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings", "attention_bias"),
    finalize=_finalize_gemma2,
    default_attention="eager",
)
GEMMA3 = Family(
    model_type="gemma3_text",
    task="causal-lm",
    head_class="Gemma3ForCausalLM",
    heads={  # transformers has no Gemma3TextForTokenClassification
        "causal-lm": "Gemma3ForCausalLM",
        "seq-cls": "Gemma3TextForSequenceClassification",
    },
    defaults=GEMMA3_DEFAULTS,
    required=REQUIRED,
    describe=_describe_gemma3,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings", "attention_bias"),
    finalize=_finalize_gemma3,
)
