"""OPT (transformers' OPTForCausalLM): learned positions (offset 2), separate q/k/v, ReLU MLP, dropout.

Follows transformers/models/opt/modeling_opt.py: embed_tokens (+ project_in when
word_embed_proj_dim != hidden_size) + embed_positions(cumsum of a ones mask) -> layers
(self_attn_layer_norm -> q_proj * scaling, k_proj, v_proj -> attention -> out_proj -> dropout ->
residual add -> final_layer_norm -> fc1 -> activation -> fc2 -> dropout -> residual add; post-norm
when do_layer_norm_before is false) -> final_layer_norm -> project_out -> lm_head -> loss.
"""
from __future__ import annotations

from ._common import activation, attention, causal_lm_head, get, kv_cache, make_mask, token_inputs

MODEL_TYPES = ("opt",)


def attention_dropout(config) -> float:
    return config.get("attention_dropout", 0.0) or 0.0



def forward(tr, config, attn_kernel: str) -> None:
    h = get(config, "hidden_size")
    layers = get(config, "num_hidden_layers")
    heads = get(config, "num_attention_heads")
    d = h // heads
    ffn = get(config, "ffn_dim")
    vocab = get(config, "vocab_size")
    proj = config.get("word_embed_proj_dim") or h
    act_name = config.get("activation_function", "relu")
    p = config.get("dropout", 0.1) or 0.0
    p_attn = attention_dropout(config) if tr.training else 0.0
    bias = config.get("enable_bias", True)
    pre_norm = config.get("do_layer_norm_before", True)
    affine = config.get("layer_norm_elementwise_affine", True)
    final_norm = pre_norm and not config.get("_remove_final_layer_norm", False)
    b, s = tr.batch_size, tr.seq_len
    bs = b * s

    ids, labels = token_inputs(tr)
    tr.module = "model.decoder.embed_tokens"
    emb_w = tr.param("model.decoder.embed_tokens.weight", vocab * proj)
    x = tr.embedding(emb_w, ids, proj)
    # position ids: cumsum over a (b, s) fp32 ones mask, times the mask, minus one, as int64
    ones = tr.act(bs, "float32", "position_attention_mask", "const")
    tr.record("ones", [], [ones])
    pos = tr.act(bs, "int64", "position_ids", "index")
    tr.record("cumsum", [ones], [pos])
    mask = make_mask(tr, attn_kernel)
    tr.module = "model.decoder.embed_positions"
    pos2 = tr.act(bs, "int64", "position_ids_offset", "index")
    tr.record("add_offset", [pos], [pos2])
    n_pos = get(config, "max_position_embeddings") + 2      # OPTLearnedPositionalEmbedding's offset
    pe = tr.embedding(tr.param("model.decoder.embed_positions.weight", n_pos * h), pos2, h)
    if proj != h:
        tr.module = "model.decoder.project_in"
        x = tr.linear(x, tr.param("model.decoder.project_in.weight", proj * h), h)
    x = tr.add(x, pe)

    def lin(t, name, n_in, n_out):
        return tr.module_linear(t, name, n_in, n_out, bias)

    def ln(t, name):
        w = tr.param(name + ".weight", h) if affine else tr.act(h, tr.param_dtype, "ones", "const")
        return tr.layer_norm(t, h, w, tr.param(name + ".bias", h) if affine else None)

    for i in range(layers):
        tr.layer = i
        pre = f"model.decoder.layers.{i}."
        tr.module = pre[:-1]
        tr.record("layer_inputs", [x, pos] + ([mask] if mask is not None else []), [])
        tr.module = pre + "self_attn"
        residual = x
        y = ln(x, pre + "self_attn_layer_norm") if pre_norm else x
        q = tr.scale(lin(y, pre + "self_attn.q_proj", h, h))
        k = lin(y, pre + "self_attn.k_proj", h, h)
        v = lin(y, pre + "self_attn.v_proj", h, h)
        k, v = kv_cache(tr, config, k, v, k.numel)
        a = attention(tr, q, k, v, heads, heads, d, attn_kernel, p_attn, mask,
                      softmax_dtype="float32", probs_dtype=q.dtype)
        a = lin(a, pre + "self_attn.out_proj", h, h)
        a = tr.dropout(a, p)
        x = tr.add(residual, a)
        if not pre_norm:
            x = ln(x, pre + "self_attn_layer_norm")
        tr.module = pre + "mlp"
        residual = x
        y = ln(x, pre + "final_layer_norm") if pre_norm else x
        y = lin(y, pre + "fc1", h, ffn)
        y = activation(tr, act_name, y)
        y = lin(y, pre + "fc2", ffn, h)
        y = tr.dropout(y, p)
        x = tr.add(residual, y)
        if not pre_norm:
            x = ln(x, pre + "final_layer_norm")
    tr.layer = None
    if final_norm:
        tr.module = "model.decoder.final_layer_norm"
        x = ln(x, "model.decoder.final_layer_norm")
    if proj != h:
        tr.module = "model.decoder.project_out"
        x = tr.linear(x, tr.param("model.decoder.project_out.weight", h * proj), proj)
    tied = config.get("tie_word_embeddings", True)
    head = emb_w if tied else tr.param("lm_head.weight", vocab * proj)
    causal_lm_head(tr, x, head, vocab, labels)
