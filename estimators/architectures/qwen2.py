"""Qwen2 / Qwen2.5 (`model_type` qwen2) as Qwen2ForCausalLM: the Llama layout with q/k/v biases."""
from __future__ import annotations

from ..tensors import ParamTensor
from ._base import Config, Family
from .llama import OPTIONAL_INTS, REQUIRED, decoder_dims, decoder_tensors, finalize_gqa

# transformers Qwen2Config defaults (configuration_qwen2.py). Note num_key_value_heads defaults to 32, not
# to num_attention_heads, when the field is absent.
DEFAULTS = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
    "max_position_embeddings": 32768, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True,
    "tie_word_embeddings": False, "rope_theta": 10000.0, "use_sliding_window": False, "sliding_window": 4096,
    "max_window_layers": 28, "attention_dropout": 0.0, "pad_token_id": None, "bos_token_id": None,
    "eos_token_id": None,
}


def _tensors(config: Config) -> list[ParamTensor]:
    return decoder_tensors(config, qkv_bias=True, o_bias=False, mlp_bias=False)


FAMILY = Family(
    model_type="qwen2", task="causal-lm", head_class="Qwen2ForCausalLM", defaults=DEFAULTS,
    required=REQUIRED, optional_ints=OPTIONAL_INTS, bools=("tie_word_embeddings",),
    finalize=finalize_gqa, tensors=_tensors, dims=decoder_dims,
)
