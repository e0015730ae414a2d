"""GPT-2 (transformers' GPT2LMHeadModel): learned positions, pre-LayerNorm, fused qkv Conv1D, dropout.

Follows transformers/models/gpt2/modeling_gpt2.py: wte + wpe -> drop -> blocks (ln_1, c_attn, attention,
c_proj, resid_dropout, residual add; ln_2, c_fc, activation, c_proj, dropout, residual add) -> ln_f ->
lm_head (tied to wte) -> ForCausalLMLoss.
"""
from __future__ import annotations

from ..errors import MemprofUserError
from ._common import activation, attention, causal_lm_head, get, kv_cache, make_mask, token_inputs

MODEL_TYPES = ("gpt2",)


def attention_dropout(config) -> float:
    return config.get("attn_pdrop", 0.1)



def forward(tr, config, attn_kernel: str) -> None:
    h = get(config, "n_embd", "hidden_size")
    layers = get(config, "n_layer", "num_hidden_layers")
    heads = get(config, "n_head", "num_attention_heads")
    inner = config.get("n_inner") or 4 * h
    vocab = get(config, "vocab_size")
    act_name = config.get("activation_function", "gelu_new")
    p_resid = config.get("resid_pdrop", 0.1)
    p_embd = config.get("embd_pdrop", 0.1)
    p_attn = config.get("attn_pdrop", 0.1)
    if config.get("reorder_and_upcast_attn") and attn_kernel == "eager":
        raise MemprofUserError("gpt2 with reorder_and_upcast_attn=true is not modelled (its eager attention "
                               "keeps fp32 scores); use --attention sdpa or a config without it")
    b, s = tr.batch_size, tr.seq_len
    bs = b * s

    ids, labels = token_inputs(tr)
    tr.module = "transformer"
    wte = tr.param("transformer.wte.weight", vocab * h)
    x = tr.embedding(wte, ids, h)
    pos = tr.act(s, "int64", "position_ids", "index")
    tr.record("arange", [], [pos])
    n_pos = get(config, "n_positions", "max_position_embeddings")
    pe = tr.embedding(tr.param("transformer.wpe.weight", n_pos * h), pos, h)
    x = tr.add(x, pe)
    x = tr.dropout(x, p_embd)
    mask = make_mask(tr, attn_kernel)
    for i in range(layers):
        tr.layer = i
        pre = f"transformer.h.{i}."
        tr.module = pre[:-1]
        tr.record("layer_inputs", [x, pos] + ([mask] if mask is not None else []), [])
        tr.module = pre + "ln_1"
        residual = x
        y = tr.layer_norm(x, h, tr.param(pre + "ln_1.weight", h), tr.param(pre + "ln_1.bias", h))
        tr.module = pre + "attn"
        qkv = tr.linear(y, tr.param(pre + "attn.c_attn.weight", 3 * h * h), 3 * h,
                        tr.param(pre + "attn.c_attn.bias", 3 * h))
        # q, k, v are transposed views of the fused projection (one storage, 3h wide)
        k, v = kv_cache(tr, config, qkv, qkv, bs * h)
        a = attention(tr, qkv, k, v, heads, heads, h // heads, attn_kernel, p_attn if tr.training else 0.0,
                      mask, probs_dtype=qkv.dtype)
        a = tr.linear(a, tr.param(pre + "attn.c_proj.weight", h * h), h, tr.param(pre + "attn.c_proj.bias", h))
        a = tr.dropout(a, p_resid)
        x = tr.add(a, residual)
        tr.module = pre + "ln_2"
        residual = x
        y = tr.layer_norm(x, h, tr.param(pre + "ln_2.weight", h), tr.param(pre + "ln_2.bias", h))
        tr.module = pre + "mlp"
        y = tr.linear(y, tr.param(pre + "mlp.c_fc.weight", h * inner), inner, tr.param(pre + "mlp.c_fc.bias", inner))
        y = activation(tr, act_name, y)
        y = tr.linear(y, tr.param(pre + "mlp.c_proj.weight", inner * h), h, tr.param(pre + "mlp.c_proj.bias", h))
        y = tr.dropout(y, p_resid)
        x = tr.add(y, residual)
    tr.layer = None
    tr.module = "transformer.ln_f"
    x = tr.layer_norm(x, h, tr.param("transformer.ln_f.weight", h), tr.param("transformer.ln_f.bias", h))
    head = wte if config.get("tie_word_embeddings", True) else tr.param("lm_head.weight", vocab * h)
    causal_lm_head(tr, x, head, vocab, labels)
