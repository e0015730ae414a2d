"""GPT-NeoX / Pythia (`model_type` gpt_neox) as GPTNeoXForCausalLM.

Fused query_key_value projection, LayerNorm, rotary positions (no position parameters), a separate
untied output matrix by default. transformers 5 names it `lm_head` (4.x called it `embed_out`; same
shape). `use_parallel_residual` changes the dataflow, not the parameters.
"""
from __future__ import annotations

from ..tensors import ParamTensor
from ._base import Config, Dims, Family, embedding, layer_norm, linear, require_divisible

# transformers GPTNeoXConfig defaults (configuration_gpt_neox.py)
DEFAULTS = {
    "vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44, "num_attention_heads": 64,
    "intermediate_size": 24576, "hidden_act": "gelu", "rotary_pct": 0.25, "rotary_emb_base": 10000,
    "attention_dropout": 0.0, "hidden_dropout": 0.0, "classifier_dropout": 0.1,
    "max_position_embeddings": 2048, "initializer_range": 0.02, "layer_norm_eps": 1e-5, "use_cache": True,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": None, "tie_word_embeddings": False,
    "use_parallel_residual": True, "attention_bias": True, "is_decoder": False,
}
OUTPUT_NAME = "lm_head.weight"


def _finalize(config: dict, where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")


def _tensors(config: Config) -> list[ParamTensor]:
    h, inter, bias = config["hidden_size"], config["intermediate_size"], config["attention_bias"]
    out = embedding("gpt_neox.embed_in", config["vocab_size"], h)
    for i in range(config["num_hidden_layers"]):
        p = f"gpt_neox.layers.{i}"
        out += layer_norm(f"{p}.input_layernorm", h) + layer_norm(f"{p}.post_attention_layernorm", h)
        out += linear(f"{p}.attention.query_key_value", h, 3 * h, bias)
        out += linear(f"{p}.attention.dense", h, h, bias)
        out += linear(f"{p}.mlp.dense_h_to_4h", h, inter) + linear(f"{p}.mlp.dense_4h_to_h", inter, h)
    out += layer_norm("gpt_neox.final_layer_norm", h)
    if not config["tie_word_embeddings"]:
        out.append(ParamTensor(OUTPUT_NAME, (config["vocab_size"], h)))
    return out


def _dims(config: Config) -> Dims:
    h, heads = config["hidden_size"], config["num_attention_heads"]
    return Dims(hidden_size=h, num_layers=config["num_hidden_layers"], num_heads=heads, num_kv_heads=heads,
                head_dim=h // heads, intermediate_size=config["intermediate_size"],
                vocab_size=config["vocab_size"], max_positions=config["max_position_embeddings"],
                tie_word_embeddings=config["tie_word_embeddings"], activation=config["hidden_act"],
                gated_mlp=False, norm="layernorm")


FAMILY = Family(
    model_type="gpt_neox", task="causal-lm", head_class="GPTNeoXForCausalLM", defaults=DEFAULTS,
    required=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
    optional_ints=("max_position_embeddings",),
    bools=("tie_word_embeddings", "attention_bias", "use_parallel_residual"),
    finalize=_finalize, tensors=_tensors, dims=_dims,
)
