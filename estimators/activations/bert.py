"""BERT (transformers' BertForMaskedLM): post-LayerNorm encoder, GELU MLP, dropout, tied MLM decoder.

Follows transformers/models/bert/modeling_bert.py: word + token_type + position embeddings ->
LayerNorm -> dropout -> layers (query/key/value -> attention (no mask without padding) -> dense ->
dropout -> LayerNorm(x + residual) -> intermediate dense -> act -> output dense -> dropout ->
LayerNorm(x + residual)) -> cls.predictions.transform (dense, act, LayerNorm) -> decoder (tied) ->
CrossEntropyLoss.
"""
from __future__ import annotations

from ._common import activation, attention, get, token_inputs

MODEL_TYPES = ("bert",)


def attention_dropout(config) -> float:
    return config.get("attention_probs_dropout_prob", 0.1) or 0.0



def forward(tr, config, attn_kernel: str) -> None:
    h = get(config, "hidden_size")
    layers = get(config, "num_hidden_layers")
    heads = get(config, "num_attention_heads")
    d = h // heads
    inter = get(config, "intermediate_size")
    vocab = get(config, "vocab_size")
    act_name = config.get("hidden_act", "gelu")
    p = config.get("hidden_dropout_prob", 0.1) or 0.0
    p_attn = attention_dropout(config) if tr.training else 0.0
    b, s = tr.batch_size, tr.seq_len
    bs = b * s

    ids, labels = token_inputs(tr)
    tr.module = "bert.embeddings"
    max_pos = get(config, "max_position_embeddings")
    tr.buffer("bert.embeddings.position_ids", max_pos, "int64")
    tr.buffer("bert.embeddings.token_type_ids", max_pos, "int64")
    word = tr.param("bert.embeddings.word_embeddings.weight", vocab * h)
    # token_type_ids: the zero buffer gathered at the position ids, (1, s) int64, expanded to (b, s);
    # position_ids: a slice of the arange buffer (a buffer, no new memory)
    tt_ids = tr.act(s, "int64", "token_type_ids", "index")
    tr.record("gather", [], [tt_ids])
    pos_ids = tr.act(0, "int64", "position_ids_buffer", "index")
    x = tr.embedding(word, ids, h)
    tt = tr.act(bs * h, tr.param_dtype, "embedding")
    tr.record("embedding", [tr.param("bert.embeddings.token_type_embeddings.weight",
                                     config.get("type_vocab_size", 2) * h), tt_ids], [tt],
              [("indices", tt_ids)])
    x = tr.add(x, tt)
    pe = tr.act(s * h, tr.param_dtype, "embedding")
    tr.record("embedding", [tr.param("bert.embeddings.position_embeddings.weight",
                                     get(config, "max_position_embeddings") * h), pos_ids], [pe],
              [("indices", pos_ids)])
    x = tr.add(x, pe)

    lin = tr.module_linear

    def ln(t, name):
        return tr.module_layer_norm(t, name, h)

    x = ln(x, "bert.embeddings.LayerNorm")
    x = tr.dropout(x, p)
    for i in range(layers):
        tr.layer = i
        pre = f"bert.encoder.layer.{i}."
        tr.module = pre[:-1]
        tr.record("layer_inputs", [x], [])
        tr.module = pre + "attention"
        q = lin(x, pre + "attention.self.query", h, h)
        k = lin(x, pre + "attention.self.key", h, h)
        v = lin(x, pre + "attention.self.value", h, h)
        a = attention(tr, q, k, v, heads, heads, d, attn_kernel, p_attn, None)
        a = lin(a, pre + "attention.output.dense", h, h)
        a = tr.dropout(a, p)
        x = ln(tr.add(a, x), pre + "attention.output.LayerNorm")
        tr.module = pre + "mlp"
        y = lin(x, pre + "intermediate.dense", h, inter)
        y = activation(tr, act_name, y)
        y = lin(y, pre + "output.dense", inter, h)
        y = tr.dropout(y, p)
        x = ln(tr.add(y, x), pre + "output.LayerNorm")
    tr.layer = None
    tr.module = "cls.predictions"
    x = lin(x, "cls.predictions.transform.dense", h, h)
    x = activation(tr, act_name, x)
    x = ln(x, "cls.predictions.transform.LayerNorm")
    logits = tr.linear(x, word, vocab, tr.param("cls.predictions.bias", vocab))
    tr.held.append(logits)
    tr.module = "loss"
    # BertForMaskedLM calls CrossEntropyLoss on the logits as they are (no .float())
    loss = tr.cross_entropy(logits, vocab, bs, labels=labels, upcast=False)
    tr.held.append(loss)
