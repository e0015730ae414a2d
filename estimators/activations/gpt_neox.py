"""GPT-NeoX / Pythia (transformers' GPTNeoXForCausalLM): fused qkv, partial rotary, parallel residual.

Follows transformers/models/gpt_neox/modeling_gpt_neox.py: embed_in -> emb_dropout -> layers
(input_layernorm -> query_key_value -> chunk -> rotary on the first rotary_ndims of q and k, then
cat with the pass-through part -> attention -> dense -> post_attention_dropout; parallel residual:
post_attention_layernorm(x) -> dense_h_to_4h -> act -> dense_4h_to_h -> post_mlp_dropout;
x + attn + mlp) -> final_layer_norm -> lm_head -> ForCausalLMLoss.
"""
from __future__ import annotations

from ..architectures.gpt_neox import OUTPUT_NAME
from ._common import activation, attention, causal_lm_head, get, kv_cache, make_mask, rotary, token_inputs
from .ops import promote

MODEL_TYPES = ("gpt_neox",)


def attention_dropout(config) -> float:
    return config.get("attention_dropout", 0.0) or 0.0



def _rotary_fraction(config) -> float:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    for v in (rope.get("partial_rotary_factor"), config.get("partial_rotary_factor"), config.get("rotary_pct")):
        if v is not None:
            return float(v)
    return 0.25


def _rope_partial(tr, x, full: int, rot: int, cos, sin):
    """q_rot * cos + rotate_half(q_rot) * sin on the first rotary_ndims of each head (a view of the
    fused projection), then torch.cat with the pass-through part: only cos and sin are saved."""
    a = _mul_const(tr, x, rot, cos)
    neg = tr.act(rot // 2, x.dtype, "neg")
    tr.record("neg", [x], [neg])
    rh = tr.act(rot, x.dtype, "rotate_half")
    tr.record("cat", [neg, x], [rh])
    emb = tr.add(a, _mul_const(tr, rh, rot, sin))
    if rot == full:
        return emb
    out = tr.act(full, promote(emb.dtype, x.dtype), "rope_cat")
    out.contig = True
    tr.record("cat", [emb, x], [out])
    return out


def _mul_const(tr, x, numel, const):
    """x[..., :rotary_ndims] * cos: saves only the constant; x may be a wider view."""
    out = tr.act(numel, promote(x.dtype, const.dtype), "mul")
    tr.record("mul", [x, const], [out], [("other", const)])
    return out


def forward(tr, config, attn_kernel: str) -> None:
    h = get(config, "hidden_size")
    layers = get(config, "num_hidden_layers")
    heads = get(config, "num_attention_heads")
    d = h // heads
    inter = get(config, "intermediate_size")
    vocab = get(config, "vocab_size")
    rd = int(d * _rotary_fraction(config))
    act_name = config.get("hidden_act", "gelu")
    p_hidden = config.get("hidden_dropout", 0.0) or 0.0
    p_attn = attention_dropout(config) if tr.training else 0.0
    bias = config.get("attention_bias", True)
    parallel = config.get("use_parallel_residual", True)
    b, s = tr.batch_size, tr.seq_len
    bs = b * s
    nq = bs * h

    ids, labels = token_inputs(tr)
    tr.module = "gpt_neox.embed_in"
    x = tr.embedding(tr.param("gpt_neox.embed_in.weight", vocab * h), ids, h)
    x = tr.dropout(x, p_hidden)
    pos, cos, sin = rotary(tr, "gpt_neox.rotary_emb", rd, x.dtype)
    mask = make_mask(tr, attn_kernel)

    lin = tr.module_linear

    def ln(t, name):
        return tr.module_layer_norm(t, name, h)

    for i in range(layers):
        tr.layer = i
        pre = f"gpt_neox.layers.{i}."
        tr.module = pre[:-1]
        tr.record("layer_inputs", [x, pos, cos, sin] + ([mask] if mask is not None else []), [])
        tr.module = pre + "attention"
        y = ln(x, pre + "input_layernorm")
        qkv = lin(y, pre + "attention.query_key_value", h, 3 * h, bias)
        rot_n = bs * heads * rd
        q = _rope_partial(tr, qkv, nq, rot_n, cos, sin)
        k = _rope_partial(tr, qkv, nq, rot_n, cos, sin)
        k, v = kv_cache(tr, config, k, qkv, nq)
        a = attention(tr, q, k, v, heads, heads, d, attn_kernel, p_attn, mask,
                      softmax_dtype="float32", probs_dtype=q.dtype)
        a = lin(a, pre + "attention.dense", h, h, bias)
        a = tr.dropout(a, p_hidden)
        tr.module = pre + "mlp"
        if parallel:
            y = ln(x, pre + "post_attention_layernorm")
        else:
            a = tr.add(a, x)
            y = ln(a, pre + "post_attention_layernorm")
        y = lin(y, pre + "mlp.dense_h_to_4h", h, inter)
        y = activation(tr, act_name, y)
        y = lin(y, pre + "mlp.dense_4h_to_h", inter, h)
        y = tr.dropout(y, p_hidden)
        x = tr.add(tr.add(y, a), x) if parallel else tr.add(y, a)
    tr.layer = None
    tr.module = "gpt_neox.final_layer_norm"
    x = ln(x, "gpt_neox.final_layer_norm")
    tied = config.get("tie_word_embeddings", False)
    head = tr.params["gpt_neox.embed_in.weight"] if tied else tr.param(OUTPUT_NAME, vocab * h)
    causal_lm_head(tr, x, head, vocab, labels)
