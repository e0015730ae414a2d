"""OPT (`model_type` opt) as OPTForCausalLM.

Learned positions with OPT's offset of 2 rows; when word_embed_proj_dim differs from hidden_size
(OPT-350M) the embeddings live in the smaller width and project_in/project_out bridge to the model
width; do_layer_norm_before=False (post-LN, OPT-350M) drops the final LayerNorm.
"""
from __future__ import annotations

from ..tensors import ParamTensor
from ._base import Config, Dims, Family, embedding, layer_norm, linear, require_divisible

# transformers OPTConfig defaults (configuration_opt.py)
DEFAULTS = {
    "vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072,
    "max_position_embeddings": 2048, "do_layer_norm_before": True, "_remove_final_layer_norm": False,
    "word_embed_proj_dim": None, "dropout": 0.1, "attention_dropout": 0.0, "num_attention_heads": 12,
    "activation_function": "relu", "layerdrop": 0.0, "init_std": 0.02, "use_cache": True, "pad_token_id": 1,
    "bos_token_id": 2, "eos_token_id": 2, "enable_bias": True, "layer_norm_elementwise_affine": True,
    "tie_word_embeddings": True,
}
POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding allocates max_position_embeddings + 2 rows


def _finalize(config: dict, where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")
    if config.get("word_embed_proj_dim") is None:
        config["word_embed_proj_dim"] = config["hidden_size"]


def _tensors(config: Config) -> list[ParamTensor]:
    h, ffn, proj = config["hidden_size"], config["ffn_dim"], config["word_embed_proj_dim"]
    bias, affine = config["enable_bias"], config["layer_norm_elementwise_affine"]
    d = "model.decoder"
    out = embedding(f"{d}.embed_tokens", config["vocab_size"], proj)
    out += embedding(f"{d}.embed_positions", config["max_position_embeddings"] + POSITION_OFFSET, h)
    if proj != h:
        out += linear(f"{d}.project_out", h, proj, bias=False) + linear(f"{d}.project_in", proj, h, bias=False)
    # registered before the layers, so listed before them
    if config["do_layer_norm_before"] and not config["_remove_final_layer_norm"]:
        out += layer_norm(f"{d}.final_layer_norm", h, affine)
    for i in range(config["num_hidden_layers"]):
        p = f"{d}.layers.{i}"
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out += linear(f"{p}.self_attn.{name}", h, h, bias)
        out += layer_norm(f"{p}.self_attn_layer_norm", h, affine)
        out += linear(f"{p}.fc1", h, ffn, bias) + linear(f"{p}.fc2", ffn, h, bias)
        out += layer_norm(f"{p}.final_layer_norm", h, affine)
    if not config["tie_word_embeddings"]:
        out.append(ParamTensor("lm_head.weight", (config["vocab_size"], proj)))
    return out


def _dims(config: Config) -> Dims:
    h, heads = config["hidden_size"], config["num_attention_heads"]
    return Dims(hidden_size=h, num_layers=config["num_hidden_layers"], num_heads=heads, num_kv_heads=heads,
                head_dim=h // heads, intermediate_size=config["ffn_dim"], vocab_size=config["vocab_size"],
                max_positions=config["max_position_embeddings"],
                tie_word_embeddings=config["tie_word_embeddings"], activation=config["activation_function"],
                gated_mlp=False, norm="layernorm")


FAMILY = Family(
    model_type="opt", task="causal-lm", head_class="OPTForCausalLM", defaults=DEFAULTS,
    required=("vocab_size", "hidden_size", "ffn_dim", "num_hidden_layers", "num_attention_heads"),
    optional_ints=("max_position_embeddings", "word_embed_proj_dim"),
    bools=("tie_word_embeddings", "do_layer_norm_before", "_remove_final_layer_norm", "enable_bias",
           "layer_norm_elementwise_affine"),
    finalize=_finalize, tensors=_tensors, dims=_dims,
)
