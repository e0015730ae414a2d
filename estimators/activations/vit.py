"""ViT (transformers' ViTForImageClassification): patch conv, class token, pre-LayerNorm encoder.

Follows transformers/models/vit/modeling_vit.py: projection Conv2d(patch) -> flatten/transpose ->
cat(cls_token) -> + position_embeddings -> dropout -> layers (layernorm_before -> q/k/v -> attention
(no mask) -> o_proj -> dropout -> residual add -> layernorm_after -> fc1 -> act -> fc2 -> dropout ->
residual add) -> layernorm -> classifier on token 0 -> cross-entropy. The sequence length is the
number of patches plus one (from image_size and patch_size); settings.seq_len is not used.
"""
from __future__ import annotations

from ._common import activation, attention, get

MODEL_TYPES = ("vit",)


def attention_dropout(config) -> float:
    return config.get("attention_probs_dropout_prob", 0.0) or 0.0


def _head_dim(config) -> int:
    return config.get("head_dim") or get(config, "hidden_size") // get(config, "num_attention_heads")


def sequence_length(config) -> int:
    image, patch = get(config, "image_size"), get(config, "patch_size")
    return (image // patch) ** 2 + 1


def forward(tr, config, attn_kernel: str) -> None:
    h = get(config, "hidden_size")
    layers = get(config, "num_hidden_layers")
    heads = get(config, "num_attention_heads")
    d = _head_dim(config)
    inter = get(config, "intermediate_size")
    image, patch = get(config, "image_size"), get(config, "patch_size")
    channels = config.get("num_channels", 3)
    labels_n = config.get("num_labels") or 2
    act_name = config.get("hidden_act", "gelu")
    p = config.get("hidden_dropout_prob", 0.0) or 0.0
    p_attn = attention_dropout(config) if tr.training else 0.0
    qkv_bias = config.get("qkv_bias", True)
    b = tr.batch_size
    tr.seq_len = s = sequence_length(config)
    bs = b * s
    n_patches = s - 1

    pixels = tr.act(b * channels * image * image, tr.param_dtype, "pixel_values", "const")
    labels = tr.act(b, "int64", "labels", "index")
    tr.inputs(pixels, labels)
    tr.module = "vit.embeddings.patch_embeddings"
    w = tr.param("vit.embeddings.patch_embeddings.projection.weight", h * channels * patch * patch)
    bias = tr.param("vit.embeddings.patch_embeddings.projection.bias", h)
    px, wc, bc = tr.lowp(pixels), tr.lowp(w), tr.lowp(bias)
    conv = tr.act(b * n_patches * h, px.dtype, "patch_conv")
    tr.record("conv2d", [px, wc, bc], [conv], [("input", px)] + ([("weight", wc)] if wc is not w else []))
    tr.module = "vit.embeddings"
    cls = tr.param("vit.embeddings.cls_token", h)
    x = tr.act(bs * h, conv.dtype if conv.dtype == cls.dtype else "float32", "cat_cls")
    tr.record("cat", [cls, conv], [x])
    x = tr.add(x, tr.param("vit.embeddings.position_embeddings", s * h))
    x = tr.dropout(x, p)

    lin = tr.module_linear

    def ln(t, name):
        return tr.module_layer_norm(t, name, h)

    for i in range(layers):
        tr.layer = i
        pre = f"vit.encoder.layer.{i}."
        tr.module = pre[:-1]
        tr.record("layer_inputs", [x], [])
        tr.module = pre + "attention"
        residual = x
        y = ln(x, pre + "layernorm_before")
        q = lin(y, pre + "attention.q_proj", h, heads * d, qkv_bias)
        k = lin(y, pre + "attention.k_proj", h, heads * d, qkv_bias)
        v = lin(y, pre + "attention.v_proj", h, heads * d, qkv_bias)
        a = attention(tr, q, k, v, heads, heads, d, attn_kernel, p_attn, None,
                      softmax_dtype="float32", probs_dtype=q.dtype)
        a = lin(a, pre + "attention.o_proj", heads * d, h)
        a = tr.dropout(a, p)
        x = tr.add(a, residual)
        tr.module = pre + "mlp"
        residual = x
        y = ln(x, pre + "layernorm_after")
        y = lin(y, pre + "mlp.fc1", h, inter)
        y = activation(tr, act_name, y)
        y = lin(y, pre + "mlp.fc2", inter, h)
        y = tr.dropout(y, p)
        x = tr.add(y, residual)
    tr.layer = None
    tr.module = "vit.layernorm"
    x = ln(x, "vit.layernorm")
    tr.module = "classifier"
    # sequence_output[:, 0, :] is a strided view of the normed output: the linear saves that
    # storage (fp32), or under autocast a bf16 copy of the b rows
    w = tr.param("classifier.weight", h * labels_n)
    first = tr.cast(x, tr.compute_dtype, b * h) if tr.autocast else x
    logits = tr.act(b * labels_n, tr.compute_dtype if tr.autocast else x.dtype, "logits")
    wc, bc = tr.lowp(w), tr.lowp(tr.param("classifier.bias", labels_n))
    tr.record("linear", [first, wc, bc], [logits], [("input", first)] + ([("weight", wc)] if wc is not w else []))
    tr.held.append(logits)
    tr.module = "loss"
    loss = tr.cross_entropy(logits, labels_n, b, labels=labels, upcast=False)
    tr.held.append(loss)
