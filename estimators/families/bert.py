"""BERT (`model_type` bert) as BertForMaskedLM.

BertForMaskedLM builds BertModel with add_pooling_layer=False: no pooler. Its MLM head is a dense +
LayerNorm transform and a decoder tied to the word embeddings; the decoder's bias is tied to the
separate `cls.predictions.bias`, so named_parameters() lists only that one.

Forward (transformers/models/bert/modeling_bert.py): word + token_type + position embeddings ->
LayerNorm -> dropout -> layers (query/key/value -> attention (no mask without padding) -> dense ->
dropout -> LayerNorm(x + residual) -> intermediate dense -> act -> output dense -> dropout ->
LayerNorm(x + residual)) -> cls.predictions.transform (dense, act, LayerNorm) -> decoder (tied) ->
CrossEntropyLoss. Cross-attention modules (add_cross_attention) do not run without encoder states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..autograd import Trace
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import _heads
from . import _trace as t
from ._base import Config, Dims, Embedding, Family, LayerNorm, Linear, require_divisible, tensors_of

# transformers BertConfig defaults (configuration_bert.py)
DEFAULTS = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "use_cache": True,
    "classifier_dropout": None,
    "is_decoder": False,
    "add_cross_attention": False,
    "bos_token_id": None,
    "eos_token_id": None,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True, kw_only=True)
class BertDims(Dims):
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    add_cross_attention: bool
    hidden_dropout: float


def _finalize(config: dict[str, Any], where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")
    if config["add_cross_attention"] and not config["is_decoder"]:
        raise MemprofUserError(f"{where}: add_cross_attention needs is_decoder=true (as transformers requires)")


def _describe(config: Config) -> BertDims:
    h, heads = config["hidden_size"], config["num_attention_heads"]
    return BertDims(
        hidden_size=h,
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        max_positions=config["max_position_embeddings"],
        tie_word_embeddings=config["tie_word_embeddings"],
        activation=config["hidden_act"],
        gated_mlp=False,
        norm="layernorm",
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1) or 0.0,
        type_vocab_size=config["type_vocab_size"],
        add_cross_attention=config["add_cross_attention"],
        hidden_dropout=config.get("hidden_dropout_prob", 0.1) or 0.0,
    )


# -- modules --------------------------------------------------------------------------------------

EMBEDDINGS = "bert.embeddings"
HEAD = "cls.predictions"


@dataclass(frozen=True)
class _Embeddings:
    word: Embedding
    position: Embedding
    token_type: Embedding
    layer_norm: LayerNorm

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(self.word, self.position, self.token_type, self.layer_norm)


def _embeddings(d: BertDims) -> _Embeddings:
    e, h = EMBEDDINGS, d.hidden_size
    return _Embeddings(
        Embedding(f"{e}.word_embeddings", d.vocab_size, h),
        Embedding(f"{e}.position_embeddings", d.max_positions, h),
        Embedding(f"{e}.token_type_embeddings", d.type_vocab_size, h),
        LayerNorm(f"{e}.LayerNorm", h),
    )


@dataclass(frozen=True)
class _Attention:
    query: Linear
    key: Linear
    value: Linear
    dense: Linear
    layer_norm: LayerNorm

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(self.query, self.key, self.value, self.dense, self.layer_norm)


def _attention(prefix: str, h: int) -> _Attention:
    return _Attention(
        Linear(f"{prefix}.self.query", h, h),
        Linear(f"{prefix}.self.key", h, h),
        Linear(f"{prefix}.self.value", h, h),
        Linear(f"{prefix}.output.dense", h, h),
        LayerNorm(f"{prefix}.output.LayerNorm", h),
    )


@dataclass(frozen=True)
class _Layer:
    prefix: str
    attention: _Attention
    crossattention: _Attention | None
    intermediate: Linear
    output: Linear
    output_layer_norm: LayerNorm

    def tensors(self) -> list[ParamTensor]:
        cross = self.crossattention.tensors() if self.crossattention is not None else []
        return self.attention.tensors() + cross + tensors_of(self.intermediate, self.output, self.output_layer_norm)


def _layer(d: BertDims, i: int) -> _Layer:
    p, h, inter = f"bert.encoder.layer.{i}", d.hidden_size, d.intermediate_size
    cross = _attention(f"{p}.crossattention", h) if d.add_cross_attention else None
    return _Layer(
        p,
        _attention(f"{p}.attention", h),
        cross,
        Linear(f"{p}.intermediate.dense", h, inter),
        Linear(f"{p}.output.dense", inter, h),
        LayerNorm(f"{p}.output.LayerNorm", h),
    )


@dataclass(frozen=True)
class _Head:
    """BertLMPredictionHead: its own `bias` comes first (a module's parameters precede its children's)."""

    bias: ParamTensor
    dense: Linear
    layer_norm: LayerNorm
    decoder: Linear | None  # None when tied to the word embeddings (bias tied to `bias`)

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(self.bias, self.dense, self.layer_norm, *([self.decoder] if self.decoder else []))


def _head(d: BertDims) -> _Head:
    h = d.hidden_size
    return _Head(
        ParamTensor(f"{HEAD}.bias", (d.vocab_size,)),
        Linear(f"{HEAD}.transform.dense", h, h),
        LayerNorm(f"{HEAD}.transform.LayerNorm", h),
        None if d.tie_word_embeddings else Linear(f"{HEAD}.decoder", h, d.vocab_size),
    )


def _tensors(d: BertDims) -> list[ParamTensor]:
    out = _embeddings(d).tensors()
    for i in range(d.num_layers):
        out += _layer(d, i).tensors()
    if d.head in _heads.CLASSIFIERS:  # BertForSequenceClassification (with the pooler) / ...TokenClassification
        return out + _heads.pooler_tensors(d) + _heads.tensors(d, d.hidden_size)
    return out + _head(d).tensors()


# -- forward --------------------------------------------------------------------------------------


def _forward(tr: Trace, d: BertDims, attn_kernel: str) -> None:
    h, heads, p = d.hidden_size, d.num_heads, d.hidden_dropout
    p_attn = d.attention_dropout if tr.training else 0.0
    s = tr.seq_len
    bs = tr.batch_size * s
    emb = _embeddings(d)

    ids, labels = t.token_inputs(tr)
    tr.module = EMBEDDINGS
    tr.buffer(f"{EMBEDDINGS}.position_ids", d.max_positions, "int64")
    tr.buffer(f"{EMBEDDINGS}.token_type_ids", d.max_positions, "int64")
    word = t.param(tr, emb.word.weight)
    # token_type_ids: the zero buffer gathered at the position ids, (1, s) int64, expanded to (b, s);
    # position_ids: a slice of the arange buffer (a buffer, no new memory)
    tt_ids = tr.act(s, "int64", "token_type_ids", "index")
    tr.record("gather", [], [tt_ids])
    pos_ids = tr.act(0, "int64", "position_ids_buffer", "index")
    x = tr.embedding(word, ids, h)
    tt = tr.act(bs * h, tr.param_dtype, "embedding")
    tr.record("embedding", [t.param(tr, emb.token_type.weight), tt_ids], [tt], [("indices", tt_ids)])
    x = tr.add(x, tt)
    pe = tr.act(s * h, tr.param_dtype, "embedding")
    tr.record("embedding", [t.param(tr, emb.position.weight), pos_ids], [pe], [("indices", pos_ids)])
    x = tr.add(x, pe)
    x = tr.dropout(t.layer_norm(tr, x, emb.layer_norm), p)
    for i in range(d.num_layers):
        layer = _layer(d, i)
        att = layer.attention
        tr.layer = i
        tr.module = layer.prefix
        tr.record("layer_inputs", [x], [])
        tr.module = layer.prefix + ".attention"
        q = t.linear(tr, x, att.query)
        k = t.linear(tr, x, att.key)
        v = t.linear(tr, x, att.value)
        a = t.attention(tr, q, k, v, heads, heads, d.head_dim, attn_kernel, p_attn, None)
        a = tr.dropout(t.linear(tr, a, att.dense), p)
        x = t.layer_norm(tr, tr.add(a, x), att.layer_norm)
        tr.module = layer.prefix + ".mlp"
        y = t.activation(tr, d.activation, t.linear(tr, x, layer.intermediate))
        y = tr.dropout(t.linear(tr, y, layer.output), p)
        x = t.layer_norm(tr, tr.add(y, x), layer.output_layer_norm)
    tr.layer = None
    if d.head in _heads.CLASSIFIERS:
        _heads.classify(tr, d, x, ids, labels, h)
        return
    tr.module = HEAD
    x.forward_local = True  # type: ignore[attr-defined]  # outputs[0] lives until BertForMaskedLM.forward returns
    head = _head(d)
    x = t.activation(tr, d.activation, t.linear(tr, x, head.dense))
    x = t.layer_norm(tr, x, head.layer_norm)
    if head.decoder is None:
        logits = tr.linear(x, word, d.vocab_size, t.param(tr, head.bias))
    else:
        logits = t.linear(tr, x, head.decoder)
    tr.held.append(logits)
    tr.module = "loss"
    # BertForMaskedLM calls CrossEntropyLoss on the logits as they are (no .float())
    loss = tr.cross_entropy(logits, d.vocab_size, bs, labels=labels, upcast=False)
    tr.held.append(loss)


FAMILY = Family(
    model_type="bert",
    task="masked-lm",
    head_class="BertForMaskedLM",
    heads={
        "masked-lm": "BertForMaskedLM",
        "seq-cls": "BertForSequenceClassification",
        "token-cls": "BertForTokenClassification",
    },
    defaults=DEFAULTS,
    required=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=("max_position_embeddings", "type_vocab_size"),
    bools=("tie_word_embeddings", "is_decoder", "add_cross_attention"),
    finalize=_finalize,
)
