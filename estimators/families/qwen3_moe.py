"""Qwen3-MoE (`qwen3_moe`), as Qwen3MoeForCausalLM builds it (transformers/models/qwen3_moe/
modeling_qwen3_moe.py).

Qwen3's attention (QK-norm, biases with attention_bias) with sparse mixture-of-experts MLPs (`_moe`:
what is saved, and why the routing split changes no byte): Qwen3MoeSparseMoeBlock registers `experts`
before the router `gate`; the router renormalizes the top-k weights only with norm_topk_prob and casts
them to the logits' dtype. A layer in `mlp_only_layers`, or off the `decoder_sparse_step` grid, has a
dense Qwen3MoeMLP of `intermediate_size` instead. head_dim is the config's field when it states one
(Qwen3-30B-A3B: 128), else hidden / heads. `output_router_logits` (the auxiliary loss) is refused.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Trace
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import _decoder as dec
from ._base import Config, Family, require_divisible, tensors_of
from ._moe import ROUTING_NOTE, MoEDims, mlp_forward, mlp_tensors
from .mixtral import check_top_k, refuse_unmodelled

# transformers Qwen3MoeConfig defaults (configuration_qwen3_moe.py)
DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
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
    "attention_dropout": 0.0,
    "decoder_sparse_step": 1,
    "moe_intermediate_size": 768,
    "num_experts_per_tok": 8,
    "num_local_experts": 128,  # Qwen3MoeConfig's num_experts (attribute_map: the stored name)
    "norm_topk_prob": False,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "mlp_only_layers": None,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_INTS = (
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "moe_intermediate_size",
    "num_experts_per_tok",
    "num_local_experts",
    "decoder_sparse_step",
)


def _finalize(config: dict[str, Any], where: str) -> None:
    """Qwen3MoeConfig.__post_init__ (sliding window only with use_sliding_window; mlp_only_layers
    defaults to none) and Qwen3MoeAttention's head_dim (the field, else hidden / heads)."""
    if not config.get("use_sliding_window"):
        config["sliding_window"] = None
    if config.get("mlp_only_layers") is None:
        config["mlp_only_layers"] = []
    dense = config["mlp_only_layers"]
    if not isinstance(dense, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in dense):
        raise MemprofUserError(f"{where}: field 'mlp_only_layers' must be a list of layer indices, got {dense!r}")
    require_divisible(config, where, "num_attention_heads", "num_key_value_heads")
    if config.get("head_dim") is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    sliding = config.get("sliding_window") is not None
    config["layer_types"] = [dec.SLIDING if sliding else dec.FULL] * config["num_hidden_layers"]
    refuse_unmodelled(config, where)
    check_top_k(config, where, "num_local_experts")


def _describe(config: Config) -> MoEDims:
    step, experts = config["decoder_sparse_step"], config["num_local_experts"]
    dense = tuple(
        i
        for i in range(config["num_hidden_layers"])
        if i in config["mlp_only_layers"] or not (experts > 0 and (i + 1) % step == 0)
    )
    bias = config["attention_bias"]
    return dec.describe(
        config,
        MoEDims,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=False,
        qk_norm=True,
        num_experts=experts,
        top_k=config["num_experts_per_tok"],
        expert_intermediate=config["moe_intermediate_size"],
        norm_topk=config["norm_topk_prob"],
        weights_to_logits_dtype=True,
        dense_layers=dense,
        gate_first=False,
    )


def _tensors(d: MoEDims) -> list[ParamTensor]:
    """Qwen3MoeDecoderLayer: self_attn (q, k, v, o, q_norm, k_norm), mlp, input / post_attention norms."""
    out = dec.embed(d).tensors()
    for i in range(d.num_layers):
        a = dec.attention_modules(d, i)
        assert a.q_proj and a.k_proj and a.v_proj and a.q_norm and a.k_norm
        out += tensors_of(a.q_proj, a.k_proj, a.v_proj, a.o_proj, a.q_norm, a.k_norm)
        out += mlp_tensors(d, i) + tensors_of(*dec.layer_norms(d, i).values())
    out += dec.final_norm(d).tensors()
    out += dec.head_tensors(d)
    return out


def _forward(tr: Trace, d: MoEDims, kernel: str) -> None:
    dec.forward(tr, d, kernel, (d.layer_types[0],), mlp=mlp_forward)


FAMILY = Family(
    model_type="qwen3_moe",
    task="causal-lm",
    head_class="Qwen3MoeForCausalLM",
    heads={
        "causal-lm": "Qwen3MoeForCausalLM",
        "seq-cls": "Qwen3MoeForSequenceClassification",
        "token-cls": "Qwen3MoeForTokenClassification",
    },
    defaults=DEFAULTS,
    required=REQUIRED,
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings", "attention_bias", "use_sliding_window", "norm_topk_prob", "output_router_logits"),
    attribute_map={"num_experts": "num_local_experts"},
    finalize=_finalize,
    estimate_notes=(ROUTING_NOTE,),
)
