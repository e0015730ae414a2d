"""Llama-style decoders (llama, mistral, qwen2): RMSNorm, rotary q/k, grouped-query attention, SwiGLU.

Follows transformers/models/llama/modeling_llama.py (mistral and qwen2 share it; qwen2 adds q/k/v
biases, which save nothing): embed_tokens -> layers (input_layernorm, q/k/v_proj, rotary, attention,
o_proj, residual add; post_attention_layernorm, down_proj(act(gate_proj(x)) * up_proj(x)), residual
add) -> norm -> lm_head -> ForCausalLMLoss.
"""
from __future__ import annotations

from ._common import activation, attention, causal_lm_head, get, kv_cache, make_mask, rotary, token_inputs

MODEL_TYPES = ("llama", "mistral", "qwen2")


def attention_dropout(config) -> float:
    return config.get("attention_dropout", 0.0) or 0.0


def _head_dim(config) -> int:
    return config.get("head_dim") or get(config, "hidden_size") // get(config, "num_attention_heads")


def rms_norm(tr, x, h: int, weight):
    """LlamaRMSNorm: x.float(); x * rsqrt(mean(x**2) + eps); weight * x.to(input dtype).

    Saves the fp32 input (pow and mul share it), the fp32 rstd per row, and the normalised tensor."""
    x32 = tr.to(x, "float32")
    sq = tr.unary("pow", x32, "self")
    var = tr.act(x.numel // h, "float32", "variance")
    tr.record("mean", [sq], [var])
    rstd = tr.unary("rsqrt", tr.scale(var, "add_scalar"), "result")
    normed = tr.mul(x32, rstd)
    normed = tr.to(normed, x.dtype)
    return tr.mul(weight, normed)


def rope(tr, x, cos, sin):
    """apply_rotary_pos_emb for one of q/k: x * cos + rotate_half(x) * sin (cos/sin are saved)."""
    a = tr.mul(x, cos)
    neg = tr.act(x.numel // 2, x.dtype, "neg")
    tr.record("neg", [x], [neg])
    rot = tr.act(x.numel, x.dtype, "rotate_half")
    tr.record("cat", [neg, x], [rot])
    return tr.add(a, tr.mul(rot, sin))


def forward(tr, config, attn_kernel: str) -> None:
    h = get(config, "hidden_size")
    layers = get(config, "num_hidden_layers")
    heads = get(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    d = _head_dim(config)
    inter = get(config, "intermediate_size")
    vocab = get(config, "vocab_size")
    act_name = config.get("hidden_act", "silu")
    model_type = config.get("model_type", "llama")
    qkv_bias = config.get("attention_bias", model_type == "qwen2")
    o_bias = config.get("attention_bias", False) if model_type != "qwen2" else False
    mlp_bias = config.get("mlp_bias", False)
    p_attn = attention_dropout(config) if tr.training else 0.0

    ids, labels = token_inputs(tr)
    tr.module = "model.embed_tokens"
    emb = tr.param("model.embed_tokens.weight", vocab * h)
    x = tr.embedding(emb, ids, h)
    tr.module = "model.rotary_emb"
    pos, cos, sin = rotary(tr, "model.rotary_emb", d, x.dtype)
    mask = make_mask(tr, attn_kernel)

    lin = tr.module_linear

    for i in range(layers):
        tr.layer = i
        pre = f"model.layers.{i}."
        tr.module = pre[:-1]
        tr.record("layer_inputs", [x, pos, cos, sin] + ([mask] if mask is not None else []), [])
        residual = x
        tr.module = pre + "input_layernorm"
        y = rms_norm(tr, x, h, tr.param(pre + "input_layernorm.weight", h))
        tr.module = pre + "self_attn"
        q = lin(y, pre + "self_attn.q_proj", h, heads * d, qkv_bias)
        k = lin(y, pre + "self_attn.k_proj", h, kv_heads * d, qkv_bias)
        v = lin(y, pre + "self_attn.v_proj", h, kv_heads * d, qkv_bias)
        q = rope(tr, q, cos, sin)
        k = rope(tr, k, cos, sin)
        k, v = kv_cache(tr, config, k, v, k.numel)
        a = attention(tr, q, k, v, heads, kv_heads, d, attn_kernel, p_attn, mask,
                      softmax_dtype="float32", probs_dtype=q.dtype)
        a = lin(a, pre + "self_attn.o_proj", heads * d, h, o_bias)
        x = tr.add(residual, a)
        residual = x
        tr.module = pre + "post_attention_layernorm"
        y = rms_norm(tr, x, h, tr.param(pre + "post_attention_layernorm.weight", h))
        tr.module = pre + "mlp"
        g = activation(tr, act_name, lin(y, pre + "mlp.gate_proj", h, inter, mlp_bias))
        u = lin(y, pre + "mlp.up_proj", h, inter, mlp_bias)
        y = lin(tr.mul(g, u), pre + "mlp.down_proj", inter, h, mlp_bias)
        x = tr.add(residual, y)
    tr.layer = None
    tr.module = "model.norm"
    x = rms_norm(tr, x, h, tr.param("model.norm.weight", h))
    tied = config.get("tie_word_embeddings", False)
    head = emb if tied else tr.param("lm_head.weight", vocab * h)
    causal_lm_head(tr, x, head, vocab, labels)
