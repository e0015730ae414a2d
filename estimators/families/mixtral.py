"""Mixtral (`mixtral`), as MixtralForCausalLM builds it (transformers/models/mixtral/modeling_mixtral.py).

The Mistral layout (no biases, GQA, optional sliding window on every layer) whose MLPs are sparse
mixtures of experts (`_moe`: what is saved, and why the routing split changes no byte):
MixtralSparseMoeBlock registers the router `gate` before `experts`; its router always renormalizes the
top-k weights and keeps them in fp32. `router_jitter_noise` (a multiplicative training noise) and
`output_router_logits` (the auxiliary load-balancing loss) are not modelled: a config turning either
on is refused.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Trace
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import _decoder as dec
from ._base import Config, Family, require_divisible, tensors_of
from ._moe import ROUTING_NOTE, MoEDims, mlp_forward, mlp_tensors

# transformers MixtralConfig defaults (configuration_mixtral.py)
DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": None,
    "hidden_act": "silu",
    "max_position_embeddings": 4096 * 32,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "use_cache": True,
    "pad_token_id": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "sliding_window": None,
    "attention_dropout": 0.0,
    "num_experts_per_tok": 2,
    "num_local_experts": 8,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "router_jitter_noise": 0.0,
    "rope_parameters": None,
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_INTS = (
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "sliding_window",
    "num_experts_per_tok",
    "num_local_experts",
)


def refuse_unmodelled(config: Config, where: str) -> None:
    """The router's auxiliary loss and jitter noise change the step; memprof does not replay them."""
    if config.get("output_router_logits"):
        raise MemprofUserError(
            f"{where}: output_router_logits (the router's load-balancing loss) is not modelled; set it to false"
        )
    if config.get("router_jitter_noise"):
        raise MemprofUserError(f"{where}: router_jitter_noise is not modelled; set it to 0")


def check_top_k(config: Config, where: str, experts: str) -> None:
    if config["num_experts_per_tok"] > config[experts]:
        raise MemprofUserError(
            f"{where}: num_experts_per_tok ({config['num_experts_per_tok']}) is more than {experts} ({config[experts]})"
        )


def _finalize(config: dict[str, Any], where: str) -> None:
    """MixtralConfig.__post_init__: num_key_value_heads defaults to the heads; MixtralAttention's
    head_dim is the field or hidden / heads; with a sliding_window every layer uses the sliding mask."""
    if config.get("num_key_value_heads") is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    require_divisible(config, where, "num_attention_heads", "num_key_value_heads")
    if config.get("head_dim") is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    sliding = config.get("sliding_window") is not None
    config["layer_types"] = [dec.SLIDING if sliding else dec.FULL] * config["num_hidden_layers"]
    refuse_unmodelled(config, where)
    check_top_k(config, where, "num_local_experts")


def _describe(config: Config) -> MoEDims:
    return dec.describe(
        config,
        MoEDims,
        qkv_bias=False,
        o_bias=False,
        mlp_bias=False,
        num_experts=config["num_local_experts"],
        top_k=config["num_experts_per_tok"],
        expert_intermediate=config["intermediate_size"],
        norm_topk=True,
        weights_to_logits_dtype=False,
        gate_first=True,
    )


def _tensors(d: MoEDims) -> list[ParamTensor]:
    """MixtralDecoderLayer: self_attn (q, k, v, o), mlp (gate, experts), input / post_attention norms."""
    out = dec.embed(d).tensors()
    for i in range(d.num_layers):
        a = dec.attention_modules(d, i)
        assert a.q_proj and a.k_proj and a.v_proj
        out += tensors_of(a.q_proj, a.k_proj, a.v_proj, a.o_proj)
        out += mlp_tensors(d, i) + tensors_of(*dec.layer_norms(d, i).values())
    out += dec.final_norm(d).tensors()
    out += dec.head_tensors(d)
    return out


def _forward(tr: Trace, d: MoEDims, kernel: str) -> None:
    dec.forward(tr, d, kernel, (d.layer_types[0],), mlp=mlp_forward)


FAMILY = Family(
    model_type="mixtral",
    task="causal-lm",
    head_class="MixtralForCausalLM",
    heads={
        "causal-lm": "MixtralForCausalLM",
        "seq-cls": "MixtralForSequenceClassification",
        "token-cls": "MixtralForTokenClassification",
    },
    defaults=DEFAULTS,
    required=REQUIRED,
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings", "output_router_logits"),
    attribute_map={"num_experts": "num_local_experts"},
    finalize=_finalize,
    estimate_notes=(ROUTING_NOTE,),
)
