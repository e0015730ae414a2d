"""GPT-2 (`model_type` gpt2) as GPT2LMHeadModel: learned positions, LayerNorm, Conv1D projections."""
from __future__ import annotations

from ..tensors import ParamTensor
from ._base import Config, Dims, Family, conv1d, embedding, layer_norm, require_divisible

# transformers GPT2Config defaults (configuration_gpt2.py)
DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "summary_type": "cls_index",
    "summary_use_proj": True, "summary_activation": None, "summary_proj_to_labels": True,
    "summary_first_dropout": 0.1, "scale_attn_weights": True, "use_cache": True, "bos_token_id": 50256,
    "eos_token_id": 50256, "pad_token_id": None, "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
}
ATTRIBUTE_MAP = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                 "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}


def _finalize(config: dict, where: str) -> None:
    require_divisible(config, where, "n_embd", "n_head")


def _inner(config: Config) -> int:
    return config["n_inner"] if config["n_inner"] is not None else 4 * config["n_embd"]


def _tensors(config: Config) -> list[ParamTensor]:
    h, inner = config["n_embd"], _inner(config)
    out = embedding("transformer.wte", config["vocab_size"], h)
    out += embedding("transformer.wpe", config["n_positions"], h)
    for i in range(config["n_layer"]):
        p = f"transformer.h.{i}"
        out += layer_norm(f"{p}.ln_1", h)
        out += conv1d(f"{p}.attn.c_attn", h, 3 * h) + conv1d(f"{p}.attn.c_proj", h, h)
        out += layer_norm(f"{p}.ln_2", h)
        if config["add_cross_attention"]:
            out += conv1d(f"{p}.crossattention.c_attn", h, 2 * h)
            out += conv1d(f"{p}.crossattention.q_attn", h, h)
            out += conv1d(f"{p}.crossattention.c_proj", h, h)
            out += layer_norm(f"{p}.ln_cross_attn", h)
        out += conv1d(f"{p}.mlp.c_fc", h, inner) + conv1d(f"{p}.mlp.c_proj", inner, h)
    out += layer_norm("transformer.ln_f", h)
    if not config["tie_word_embeddings"]:  # tied: lm_head.weight IS transformer.wte.weight, listed once
        out.append(ParamTensor("lm_head.weight", (config["vocab_size"], h)))
    return out


def _dims(config: Config) -> Dims:
    h, heads = config["n_embd"], config["n_head"]
    return Dims(hidden_size=h, num_layers=config["n_layer"], num_heads=heads, num_kv_heads=heads,
                head_dim=h // heads, intermediate_size=_inner(config), vocab_size=config["vocab_size"],
                max_positions=config["n_positions"], tie_word_embeddings=config["tie_word_embeddings"],
                activation=config["activation_function"], gated_mlp=False, norm="layernorm")


FAMILY = Family(
    model_type="gpt2", task="causal-lm", head_class="GPT2LMHeadModel", defaults=DEFAULTS,
    required=("vocab_size", "n_embd", "n_layer", "n_head"), optional_ints=("n_positions", "n_inner"),
    bools=("tie_word_embeddings", "add_cross_attention"), attribute_map=ATTRIBUTE_MAP,
    finalize=_finalize, tensors=_tensors, dims=_dims,
)
