"""BERT (`model_type` bert) as BertForMaskedLM.

BertForMaskedLM builds BertModel with add_pooling_layer=False: no pooler. Its MLM head is a dense +
LayerNorm transform and a decoder tied to the word embeddings; the decoder's bias is tied to the
separate `cls.predictions.bias`, so named_parameters() lists only that one.
"""
from __future__ import annotations

from ..errors import MemprofUserError
from ..tensors import ParamTensor
from ._base import Config, Dims, Family, embedding, layer_norm, linear, require_divisible

# transformers BertConfig defaults (configuration_bert.py)
DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0, "use_cache": True,
    "classifier_dropout": None, "is_decoder": False, "add_cross_attention": False, "bos_token_id": None,
    "eos_token_id": None, "tie_word_embeddings": True,
}


def _finalize(config: dict, where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")
    if config["add_cross_attention"] and not config["is_decoder"]:
        raise MemprofUserError(f"{where}: add_cross_attention needs is_decoder=true (as transformers requires)")


def _attention(prefix: str, h: int) -> list[ParamTensor]:
    out = linear(f"{prefix}.self.query", h, h) + linear(f"{prefix}.self.key", h, h)
    out += linear(f"{prefix}.self.value", h, h)
    return out + linear(f"{prefix}.output.dense", h, h) + layer_norm(f"{prefix}.output.LayerNorm", h)


def _tensors(config: Config) -> list[ParamTensor]:
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    e = "bert.embeddings"
    out = embedding(f"{e}.word_embeddings", vocab, h)
    out += embedding(f"{e}.position_embeddings", config["max_position_embeddings"], h)
    out += embedding(f"{e}.token_type_embeddings", config["type_vocab_size"], h)
    out += layer_norm(f"{e}.LayerNorm", h)
    for i in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}"
        out += _attention(f"{p}.attention", h)
        if config["add_cross_attention"]:
            out += _attention(f"{p}.crossattention", h)
        out += linear(f"{p}.intermediate.dense", h, inter)
        out += linear(f"{p}.output.dense", inter, h) + layer_norm(f"{p}.output.LayerNorm", h)
    # BertLMPredictionHead: its own `bias` comes first (a module's parameters precede its children's)
    out.append(ParamTensor("cls.predictions.bias", (vocab,)))
    out += linear("cls.predictions.transform.dense", h, h) + layer_norm("cls.predictions.transform.LayerNorm", h)
    if not config["tie_word_embeddings"]:
        out += linear("cls.predictions.decoder", h, vocab)
    return out


def _dims(config: Config) -> Dims:
    h, heads = config["hidden_size"], config["num_attention_heads"]
    return Dims(hidden_size=h, num_layers=config["num_hidden_layers"], num_heads=heads, num_kv_heads=heads,
                head_dim=h // heads, intermediate_size=config["intermediate_size"],
                vocab_size=config["vocab_size"], max_positions=config["max_position_embeddings"],
                tie_word_embeddings=config["tie_word_embeddings"], activation=config["hidden_act"],
                gated_mlp=False, norm="layernorm")


FAMILY = Family(
    model_type="bert", task="masked-lm", head_class="BertForMaskedLM", defaults=DEFAULTS,
    required=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
    optional_ints=("max_position_embeddings", "type_vocab_size"),
    bools=("tie_word_embeddings", "is_decoder", "add_cross_attention"),
    finalize=_finalize, tensors=_tensors, dims=_dims,
)
