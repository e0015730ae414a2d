"""ViT (`model_type` vit) as ViTForImageClassification.

Conv2d patch embedding, a CLS token and learned position embeddings for patches + 1 (all owned by
ViTEmbeddings itself, so they precede the patch projection), pre-LN layers, final LayerNorm, no pooler
(add_pooling_layer=False), and a linear classifier over num_labels (none when num_labels is 0).

Forward (transformers/models/vit/modeling_vit.py): projection Conv2d(patch) -> flatten/transpose ->
cat(cls_token) -> + position_embeddings -> dropout -> layers (layernorm_before -> q/k/v -> attention
(no mask) -> o_proj -> dropout -> residual add -> layernorm_after -> fc1 -> act -> fc2 -> dropout ->
residual add) -> layernorm -> classifier on token 0 -> cross-entropy. The sequence length is the
number of patches plus one (from image_size and patch_size); settings.seq_len is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..autograd import Trace
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import _trace as t
from ._base import Config, Conv2d, Dims, Family, LayerNorm, Linear, require_divisible, tensors_of

# transformers ViTConfig defaults (configuration_vit.py) plus PreTrainedConfig's num_labels default of 2
DEFAULTS = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
    "encoder_stride": 16,
    "pooler_output_size": None,
    "pooler_act": "tanh",
}


@dataclass(frozen=True, kw_only=True)
class ViTDims(Dims):
    num_patches: int
    num_labels: int
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    num_channels: int
    qkv_bias: bool
    hidden_dropout: float


def _pair(config: Config, key: str, where: str) -> tuple[int, int]:
    value = config[key]
    values = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise MemprofUserError(f"{where}: {key} must be a positive integer or a list of two, got {value!r}")
    return values[0], values[1]


def _finalize(config: dict[str, Any], where: str) -> None:
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


def _describe(config: Config) -> ViTDims:
    image, patch = _pair(config, "image_size", ""), _pair(config, "patch_size", "")
    return ViTDims(
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_attention_heads"],
        head_dim=config["head_dim"],
        intermediate_size=config["intermediate_size"],
        vocab_size=None,
        max_positions=None,
        tie_word_embeddings=False,
        activation=config["hidden_act"],
        gated_mlp=False,
        norm="layernorm",
        num_patches=(image[1] // patch[1]) * (image[0] // patch[0]),
        num_labels=config["num_labels"],
        attention_dropout=config.get("attention_probs_dropout_prob", 0.0) or 0.0,
        image_size=image,
        patch_size=patch,
        num_channels=config["num_channels"],
        qkv_bias=config["qkv_bias"],
        hidden_dropout=config.get("hidden_dropout_prob", 0.0) or 0.0,
    )


# -- modules --------------------------------------------------------------------------------------

EMBEDDINGS = "vit.embeddings"


def _cls_token(d: ViTDims) -> ParamTensor:
    return ParamTensor(f"{EMBEDDINGS}.cls_token", (1, 1, d.hidden_size))


def _position_embeddings(d: ViTDims) -> ParamTensor:
    return ParamTensor(f"{EMBEDDINGS}.position_embeddings", (1, d.num_patches + 1, d.hidden_size))


def _projection(d: ViTDims) -> Conv2d:
    return Conv2d(f"{EMBEDDINGS}.patch_embeddings.projection", d.num_channels, d.hidden_size, d.patch_size)


def _layernorm(d: ViTDims) -> LayerNorm:
    return LayerNorm("vit.layernorm", d.hidden_size)


def _classifier(d: ViTDims) -> Linear:
    """A parameter only when num_labels > 0 (else nn.Identity); the replay then assumes two labels."""
    return Linear("classifier", d.hidden_size, d.num_labels or 2)


@dataclass(frozen=True)
class _Layer:
    prefix: str
    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    layernorm_before: LayerNorm
    layernorm_after: LayerNorm
    fc1: Linear
    fc2: Linear

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(
            self.q_proj,
            self.k_proj,
            self.v_proj,
            self.o_proj,
            self.layernorm_before,
            self.layernorm_after,
            self.fc1,
            self.fc2,
        )


def _layer(d: ViTDims, i: int) -> _Layer:
    p, h, inter = f"vit.layers.{i}", d.hidden_size, d.intermediate_size
    attn = d.num_heads * d.head_dim
    return _Layer(
        p,
        q_proj=Linear(f"{p}.attention.q_proj", h, attn, d.qkv_bias),
        k_proj=Linear(f"{p}.attention.k_proj", h, attn, d.qkv_bias),
        v_proj=Linear(f"{p}.attention.v_proj", h, attn, d.qkv_bias),
        o_proj=Linear(f"{p}.attention.o_proj", attn, h),
        layernorm_before=LayerNorm(f"{p}.layernorm_before", h),
        layernorm_after=LayerNorm(f"{p}.layernorm_after", h),
        fc1=Linear(f"{p}.mlp.fc1", h, inter),
        fc2=Linear(f"{p}.mlp.fc2", inter, h),
    )


def _tensors(d: ViTDims) -> list[ParamTensor]:
    out = tensors_of(_cls_token(d), _position_embeddings(d), _projection(d))
    for i in range(d.num_layers):
        out += _layer(d, i).tensors()
    out += _layernorm(d).tensors()
    if d.num_labels > 0:
        out += _classifier(d).tensors()
    return out


# -- forward --------------------------------------------------------------------------------------


def _forward(tr: Trace, d: ViTDims, attn_kernel: str) -> None:
    h, heads, p = d.hidden_size, d.num_heads, d.hidden_dropout
    p_attn = d.attention_dropout if tr.training else 0.0
    b = tr.batch_size
    tr.seq_len = s = d.num_patches + 1
    bs = b * s

    pixels = tr.act(b * d.num_channels * d.image_size[0] * d.image_size[1], tr.param_dtype, "pixel_values", "const")
    labels = tr.act(b, "int64", "labels", "index")
    tr.inputs(pixels, labels)
    proj = _projection(d)
    tr.module = proj.name.rsplit(".", 1)[0]
    w, bias = t.param(tr, proj.weight), t.param(tr, proj.bias)
    px, wc, bc = tr.lowp(pixels), tr.lowp(w), tr.lowp(bias)
    conv = tr.act(b * d.num_patches * h, px.dtype, "patch_conv")
    tr.record("conv2d", [px, wc, bc], [conv], [("input", px)] + ([("weight", wc)] if wc is not w else []))
    tr.module = EMBEDDINGS
    cls = t.param(tr, _cls_token(d))
    x = tr.act(bs * h, conv.dtype if conv.dtype == cls.dtype else "float32", "cat_cls")
    tr.record("cat", [cls, conv], [x])
    x = tr.add(x, t.param(tr, _position_embeddings(d)))
    x = tr.dropout(x, p)

    for i in range(d.num_layers):
        layer = _layer(d, i)
        tr.layer = i
        tr.module = layer.prefix
        tr.record("layer_inputs", [x], [])
        tr.module = layer.prefix + ".attention"
        residual = x
        y = t.layer_norm(tr, x, layer.layernorm_before)
        q = t.linear(tr, y, layer.q_proj)
        k = t.linear(tr, y, layer.k_proj)
        v = t.linear(tr, y, layer.v_proj)
        a = t.attention(
            tr,
            q,
            k,
            v,
            heads,
            heads,
            d.head_dim,
            attn_kernel,
            p_attn,
            None,
            softmax_dtype="float32",
            probs_dtype=q.dtype,
        )
        a = tr.dropout(t.linear(tr, a, layer.o_proj), p)
        x = tr.add(a, residual)
        tr.module = layer.prefix + ".mlp"
        residual = x
        y = t.layer_norm(tr, x, layer.layernorm_after)
        y = t.activation(tr, d.activation, t.linear(tr, y, layer.fc1))
        y = tr.dropout(t.linear(tr, y, layer.fc2), p)
        x = tr.add(y, residual)
    tr.layer = None
    tr.module = _layernorm(d).name
    x = t.layer_norm(tr, x, _layernorm(d))
    x.forward_local = True  # type: ignore[attr-defined]  # sequence_output lives until the forward returns
    classifier = _classifier(d)
    labels_n = classifier.out_features
    tr.module = classifier.name
    # sequence_output[:, 0, :] is a strided view of the normed output: the linear saves that
    # storage (fp32), or under autocast a bf16 copy of the b rows
    w = t.param(tr, classifier.weight)
    first = tr.cast(x, tr.compute_dtype, b * h) if tr.autocast else x
    logits = tr.act(b * labels_n, tr.compute_dtype if tr.autocast else x.dtype, "logits")
    assert classifier.bias is not None
    wc, bc = tr.lowp(w), tr.lowp(t.param(tr, classifier.bias))
    tr.record("linear", [first, wc, bc], [logits], [("input", first)] + ([("weight", wc)] if wc is not w else []))
    tr.held.append(logits)
    tr.module = "loss"
    loss = tr.cross_entropy(logits, labels_n, b, labels=labels, upcast=False)
    tr.held.append(loss)


FAMILY = Family(
    model_type="vit",
    task="image-classification",
    head_class="ViTForImageClassification",
    defaults=DEFAULTS,
    required=("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=("num_channels", "head_dim"),
    bools=("qkv_bias",),
    finalize=_finalize,
)
