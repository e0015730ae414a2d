"""Mistral (`model_type` mistral) as MistralForCausalLM: the Llama layout without any bias."""
from __future__ import annotations

from ..tensors import ParamTensor
from ._base import Config, Family
from .llama import OPTIONAL_INTS, REQUIRED, decoder_dims, decoder_tensors, finalize_gqa

# transformers MistralConfig defaults (configuration_mistral.py)
DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": None, "hidden_act": "silu",
    "max_position_embeddings": 4096 * 32, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True,
    "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
    "rope_theta": 10000.0, "sliding_window": 4096, "attention_dropout": 0.0,
}


def _tensors(config: Config) -> list[ParamTensor]:
    return decoder_tensors(config, qkv_bias=False, o_bias=False, mlp_bias=False)


FAMILY = Family(
    model_type="mistral", task="causal-lm", head_class="MistralForCausalLM", defaults=DEFAULTS,
    required=REQUIRED, optional_ints=OPTIONAL_INTS, bools=("tie_word_embeddings",),
    finalize=finalize_gqa, tensors=_tensors, dims=decoder_dims,
)
