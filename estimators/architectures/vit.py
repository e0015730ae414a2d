"""ViT (`model_type` vit) as ViTForImageClassification.

Conv2d patch embedding, a CLS token and learned position embeddings for patches + 1 (all owned by
ViTEmbeddings itself, so they precede the patch projection), pre-LN layers, final LayerNorm, no pooler
(add_pooling_layer=False), and a linear classifier over num_labels (none when num_labels is 0).
"""
from __future__ import annotations

from ..errors import MemprofUserError
from ..tensors import ParamTensor
from ._base import Config, Dims, Family, layer_norm, linear, require_divisible

# transformers ViTConfig defaults (configuration_vit.py) plus PreTrainedConfig's num_labels default of 2
DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16,
    "num_channels": 3, "qkv_bias": True, "encoder_stride": 16, "pooler_output_size": None,
    "pooler_act": "tanh",
}


def _pair(config: dict, key: str, where: str) -> tuple[int, int]:
    value = config[key]
    values = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise MemprofUserError(f"{where}: {key} must be a positive integer or a list of two, got {value!r}")
    return values[0], values[1]


def _finalize(config: dict, where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")
    if config.get("head_dim") is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    if not config.get("pooler_output_size"):
        config["pooler_output_size"] = config["hidden_size"]
    id2label = config.get("id2label")
    if id2label is not None:  # PreTrainedConfig: the label map decides num_labels
        if not isinstance(id2label, dict):
            raise MemprofUserError(f"{where}: id2label must be an object mapping ids to names")
        config["num_labels"] = len(id2label)
    elif config.get("num_labels") is None:
        config["num_labels"] = 2
    labels = config["num_labels"]
    if not isinstance(labels, int) or isinstance(labels, bool) or labels < 0:
        raise MemprofUserError(f"{where}: num_labels must be a non-negative integer, got {labels!r}")
    image, patch = _pair(config, "image_size", where), _pair(config, "patch_size", where)
    if image[0] < patch[0] or image[1] < patch[1]:
        raise MemprofUserError(f"{where}: image_size {image} is smaller than patch_size {patch}")


def num_patches(config: Config) -> int:
    image, patch = _pair(dict(config), "image_size", ""), _pair(dict(config), "patch_size", "")
    return (image[1] // patch[1]) * (image[0] // patch[0])


def _tensors(config: Config) -> list[ParamTensor]:
    h, inter, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    attn = config["num_attention_heads"] * d
    patch = _pair(dict(config), "patch_size", "")
    e = "vit.embeddings"
    out = [ParamTensor(f"{e}.cls_token", (1, 1, h)),
           ParamTensor(f"{e}.position_embeddings", (1, num_patches(config) + 1, h)),
           ParamTensor(f"{e}.patch_embeddings.projection.weight", (h, config["num_channels"], *patch)),
           ParamTensor(f"{e}.patch_embeddings.projection.bias", (h,))]
    for i in range(config["num_hidden_layers"]):
        p = f"vit.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj"):
            out += linear(f"{p}.attention.{name}", h, attn, config["qkv_bias"])
        out += linear(f"{p}.attention.o_proj", attn, h)
        out += layer_norm(f"{p}.layernorm_before", h) + layer_norm(f"{p}.layernorm_after", h)
        out += linear(f"{p}.mlp.fc1", h, inter) + linear(f"{p}.mlp.fc2", inter, h)
    out += layer_norm("vit.layernorm", h)
    if config["num_labels"] > 0:
        out += linear("classifier", h, config["num_labels"])
    return out


def _dims(config: Config) -> Dims:
    return Dims(hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
                num_heads=config["num_attention_heads"], num_kv_heads=config["num_attention_heads"],
                head_dim=config["head_dim"], intermediate_size=config["intermediate_size"], vocab_size=None,
                max_positions=None, tie_word_embeddings=False, activation=config["hidden_act"],
                gated_mlp=False, norm="layernorm", num_patches=num_patches(config),
                num_labels=config["num_labels"])


FAMILY = Family(
    model_type="vit", task="image-classification", head_class="ViTForImageClassification", defaults=DEFAULTS,
    required=("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
    optional_ints=("num_channels", "head_dim"), bools=("qkv_bias",),
    finalize=_finalize, tensors=_tensors, dims=_dims,
)
