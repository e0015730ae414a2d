"""Llama (`model_type` llama) as LlamaForCausalLM: RMSNorm, rotary positions, SwiGLU MLP, GQA.

Mistral and Qwen2 reuse `decoder_tensors` with their own bias flags.
"""
from __future__ import annotations

from ..tensors import ParamTensor
from ._base import Config, Dims, Family, embedding, linear, require_divisible, rms_norm

# transformers LlamaConfig defaults (configuration_llama.py)
DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "hidden_act": "silu",
    "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True,
    "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2, "pretraining_tp": 1,
    "tie_word_embeddings": False, "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0,
    "mlp_bias": False, "head_dim": None,
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings")


def finalize_gqa(config: dict, where: str) -> None:
    """What every Llama-like __post_init__ does: head_dim and num_key_value_heads default from heads."""
    if config.get("head_dim") is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    if config.get("num_key_value_heads") is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    require_divisible(config, where, "num_attention_heads", "num_key_value_heads")


def _finalize(config: dict, where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")  # LlamaConfig.validate_architecture
    finalize_gqa(config, where)


def decoder_tensors(config: Config, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> list[ParamTensor]:
    h, inter, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q_out, kv_out = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    out = embedding("model.embed_tokens", config["vocab_size"], h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out += linear(f"{p}.self_attn.q_proj", h, q_out, qkv_bias)
        out += linear(f"{p}.self_attn.k_proj", h, kv_out, qkv_bias)
        out += linear(f"{p}.self_attn.v_proj", h, kv_out, qkv_bias)
        out += linear(f"{p}.self_attn.o_proj", q_out, h, o_bias)
        out += linear(f"{p}.mlp.gate_proj", h, inter, mlp_bias)
        out += linear(f"{p}.mlp.up_proj", h, inter, mlp_bias)
        out += linear(f"{p}.mlp.down_proj", inter, h, mlp_bias)
        out += rms_norm(f"{p}.input_layernorm", h) + rms_norm(f"{p}.post_attention_layernorm", h)
    out += rms_norm("model.norm", h)
    if not config["tie_word_embeddings"]:  # tied: lm_head.weight IS model.embed_tokens.weight
        out.append(ParamTensor("lm_head.weight", (config["vocab_size"], h)))
    return out


def decoder_dims(config: Config) -> Dims:
    return Dims(hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
                num_heads=config["num_attention_heads"], num_kv_heads=config["num_key_value_heads"],
                head_dim=config["head_dim"], intermediate_size=config["intermediate_size"],
                vocab_size=config["vocab_size"], max_positions=config["max_position_embeddings"],
                tie_word_embeddings=config["tie_word_embeddings"], activation=config["hidden_act"],
                gated_mlp=True, norm="rmsnorm")


def _tensors(config: Config) -> list[ParamTensor]:
    bias = config["attention_bias"]
    return decoder_tensors(config, qkv_bias=bias, o_bias=bias, mlp_bias=config["mlp_bias"])


FAMILY = Family(
    model_type="llama", task="causal-lm", head_class="LlamaForCausalLM", defaults=DEFAULTS,
    required=REQUIRED, optional_ints=OPTIONAL_INTS, bools=("tie_word_embeddings", "attention_bias", "mlp_bias"),
    finalize=_finalize, tensors=_tensors, dims=decoder_dims,
)
