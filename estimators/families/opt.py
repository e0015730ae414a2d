"""OPT (`model_type` opt) as OPTForCausalLM.

Learned positions with OPT's offset of 2 rows; when word_embed_proj_dim differs from hidden_size
(OPT-350M) the embeddings live in the smaller width and project_in/project_out bridge to the model
width; do_layer_norm_before=False (post-LN, OPT-350M) drops the final LayerNorm.

Forward (transformers/models/opt/modeling_opt.py): embed_tokens (+ project_in when
word_embed_proj_dim != hidden_size) + embed_positions(cumsum of a ones mask) -> layers
(self_attn_layer_norm -> q_proj * scaling, k_proj, v_proj -> attention -> out_proj -> dropout ->
residual add -> final_layer_norm -> fc1 -> activation -> fc2 -> dropout -> residual add; post-norm
when do_layer_norm_before is false) -> final_layer_norm -> project_out -> lm_head -> loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..autograd import Trace
from ..tensors import ParamTensor
from . import _heads
from . import _trace as t
from ._base import Config, Dims, Embedding, Family, LayerNorm, Linear, require_divisible, tensors_of

# transformers OPTConfig defaults (configuration_opt.py)
DEFAULTS = {
    "vocab_size": 50272,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "ffn_dim": 3072,
    "max_position_embeddings": 2048,
    "do_layer_norm_before": True,
    "_remove_final_layer_norm": False,
    "word_embed_proj_dim": None,
    "dropout": 0.1,
    "attention_dropout": 0.0,
    "num_attention_heads": 12,
    "activation_function": "relu",
    "layerdrop": 0.0,
    "init_std": 0.02,
    "use_cache": True,
    "pad_token_id": 1,
    "bos_token_id": 2,
    "eos_token_id": 2,
    "enable_bias": True,
    "layer_norm_elementwise_affine": True,
    "tie_word_embeddings": True,
}
POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding allocates max_position_embeddings + 2 rows


@dataclass(frozen=True, kw_only=True)
class OPTDims(Dims):
    vocab_size: int
    max_positions: int
    word_embed_proj_dim: int
    enable_bias: bool
    layer_norm_elementwise_affine: bool
    do_layer_norm_before: bool  # pre-LN; False: post-LN (OPT-350M)
    final_layer_norm: bool  # the decoder's final LayerNorm exists
    dropout: float
    use_cache: bool


def _finalize(config: dict[str, Any], where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")
    if config.get("word_embed_proj_dim") is None:
        config["word_embed_proj_dim"] = config["hidden_size"]


def _describe(config: Config) -> OPTDims:
    h, heads = config["hidden_size"], config["num_attention_heads"]
    pre_norm = config["do_layer_norm_before"]
    return OPTDims(
        hidden_size=h,
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=config["ffn_dim"],
        vocab_size=config["vocab_size"],
        max_positions=config["max_position_embeddings"],
        tie_word_embeddings=config["tie_word_embeddings"],
        activation=config["activation_function"],
        gated_mlp=False,
        norm="layernorm",
        attention_dropout=config.get("attention_dropout", 0.0) or 0.0,
        word_embed_proj_dim=config["word_embed_proj_dim"],
        enable_bias=config["enable_bias"],
        layer_norm_elementwise_affine=config["layer_norm_elementwise_affine"],
        do_layer_norm_before=pre_norm,
        final_layer_norm=pre_norm and not config["_remove_final_layer_norm"],
        dropout=config.get("dropout", 0.1) or 0.0,
        use_cache=config["use_cache"],
    )


# -- modules --------------------------------------------------------------------------------------

DECODER = "model.decoder"


def _embed_tokens(d: OPTDims) -> Embedding:
    return Embedding(f"{DECODER}.embed_tokens", d.vocab_size, d.word_embed_proj_dim)


def _embed_positions(d: OPTDims) -> Embedding:
    return Embedding(f"{DECODER}.embed_positions", d.max_positions + POSITION_OFFSET, d.hidden_size)


def _project_out(d: OPTDims) -> Linear:
    """Only when word_embed_proj_dim != hidden_size (as project_in)."""
    return Linear(f"{DECODER}.project_out", d.hidden_size, d.word_embed_proj_dim, has_bias=False)


def _project_in(d: OPTDims) -> Linear:
    return Linear(f"{DECODER}.project_in", d.word_embed_proj_dim, d.hidden_size, has_bias=False)


def _final_layer_norm(d: OPTDims) -> LayerNorm:
    """Only with d.final_layer_norm."""
    return LayerNorm(f"{DECODER}.final_layer_norm", d.hidden_size, d.layer_norm_elementwise_affine)


def _lm_head(d: OPTDims) -> Linear:
    return Linear("lm_head", d.word_embed_proj_dim, d.vocab_size, has_bias=False)


@dataclass(frozen=True)
class _Layer:
    prefix: str
    k_proj: Linear
    v_proj: Linear
    q_proj: Linear
    out_proj: Linear
    self_attn_layer_norm: LayerNorm
    fc1: Linear
    fc2: Linear
    final_layer_norm: LayerNorm

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(
            self.k_proj,
            self.v_proj,
            self.q_proj,
            self.out_proj,
            self.self_attn_layer_norm,
            self.fc1,
            self.fc2,
            self.final_layer_norm,
        )


def _layer(d: OPTDims, i: int) -> _Layer:
    p, h, ffn = f"{DECODER}.layers.{i}", d.hidden_size, d.intermediate_size
    bias, affine = d.enable_bias, d.layer_norm_elementwise_affine
    return _Layer(
        p,
        k_proj=Linear(f"{p}.self_attn.k_proj", h, h, bias),
        v_proj=Linear(f"{p}.self_attn.v_proj", h, h, bias),
        q_proj=Linear(f"{p}.self_attn.q_proj", h, h, bias),
        out_proj=Linear(f"{p}.self_attn.out_proj", h, h, bias),
        self_attn_layer_norm=LayerNorm(f"{p}.self_attn_layer_norm", h, affine),
        fc1=Linear(f"{p}.fc1", h, ffn, bias),
        fc2=Linear(f"{p}.fc2", ffn, h, bias),
        final_layer_norm=LayerNorm(f"{p}.final_layer_norm", h, affine),
    )


def _tensors(d: OPTDims) -> list[ParamTensor]:
    out = tensors_of(_embed_tokens(d), _embed_positions(d))
    if d.word_embed_proj_dim != d.hidden_size:
        out += tensors_of(_project_out(d), _project_in(d))
    # registered before the layers, so listed before them
    if d.final_layer_norm:
        out += _final_layer_norm(d).tensors()
    for i in range(d.num_layers):
        out += _layer(d, i).tensors()
    if d.head in _heads.CLASSIFIERS:  # OPTForSequenceClassification: score on word_embed_proj_dim
        return out + _heads.tensors(d, d.word_embed_proj_dim)
    if not d.tie_word_embeddings:
        out += _lm_head(d).tensors()
    return out


# -- forward --------------------------------------------------------------------------------------


def _forward(tr: Trace, d: OPTDims, attn_kernel: str) -> None:
    h, heads, proj, p = d.hidden_size, d.num_heads, d.word_embed_proj_dim, d.dropout
    p_attn = d.attention_dropout if tr.training else 0.0
    pre_norm = d.do_layer_norm_before
    bs = tr.batch_size * tr.seq_len

    ids, labels = t.token_inputs(tr)
    tr.module = _embed_tokens(d).name
    emb = t.param(tr, _embed_tokens(d).weight)
    x = tr.embedding(emb, ids, proj)
    # position ids: cumsum over a (b, s) fp32 ones mask, times the mask, minus one, as int64
    ones = tr.act(bs, "float32", "position_attention_mask", "const")
    tr.record("ones", [], [ones])
    pos = tr.act(bs, "int64", "position_ids", "index")
    tr.record("cumsum", [ones], [pos])
    mask = t.make_mask(tr, attn_kernel)
    tr.module = _embed_positions(d).name
    pos2 = tr.act(bs, "int64", "position_ids_offset", "index")
    tr.record("add_offset", [pos], [pos2])
    pe = t.embedding(tr, _embed_positions(d), pos2)
    if proj != h:
        tr.module = _project_in(d).name
        x = t.linear(tr, x, _project_in(d))
    x = tr.add(x, pe)

    for i in range(d.num_layers):
        layer = _layer(d, i)
        tr.layer = i
        tr.module = layer.prefix
        tr.record("layer_inputs", [x, pos] + ([mask] if mask is not None else []), [])
        tr.module = layer.prefix + ".self_attn"
        residual = x
        y = t.layer_norm(tr, x, layer.self_attn_layer_norm) if pre_norm else x
        q = tr.scale(t.linear(tr, y, layer.q_proj))
        k = t.linear(tr, y, layer.k_proj)
        v = t.linear(tr, y, layer.v_proj)
        k, v = t.kv_cache(tr, d.use_cache, k, v, k.numel)
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
            mask,
            softmax_dtype="float32",
            probs_dtype=q.dtype,
        )
        a = tr.dropout(t.linear(tr, a, layer.out_proj), p)
        x = tr.add(residual, a)
        if not pre_norm:
            x = t.layer_norm(tr, x, layer.self_attn_layer_norm)
        tr.module = layer.prefix + ".mlp"
        residual = x
        y = t.layer_norm(tr, x, layer.final_layer_norm) if pre_norm else x
        y = t.activation(tr, d.activation, t.linear(tr, y, layer.fc1))
        y = tr.dropout(t.linear(tr, y, layer.fc2), p)
        x = tr.add(residual, y)
        if not pre_norm:
            x = t.layer_norm(tr, x, layer.final_layer_norm)
    tr.layer = None
    if d.final_layer_norm:
        tr.module = _final_layer_norm(d).name
        x = t.layer_norm(tr, x, _final_layer_norm(d))
    if proj != h:
        tr.module = _project_out(d).name
        x = t.linear(tr, x, _project_out(d))
    if d.head in _heads.CLASSIFIERS:
        _heads.classify(tr, d, x, ids, labels, d.word_embed_proj_dim)
        return
    head = emb if d.tie_word_embeddings else t.param(tr, _lm_head(d).weight)
    t.causal_lm_head(tr, x, head, d.vocab_size, labels)


FAMILY = Family(
    model_type="opt",
    task="causal-lm",
    head_class="OPTForCausalLM",
    heads={"causal-lm": "OPTForCausalLM", "seq-cls": "OPTForSequenceClassification"},
    defaults=DEFAULTS,
    required=("vocab_size", "hidden_size", "ffn_dim", "num_hidden_layers", "num_attention_heads"),
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=("max_position_embeddings", "word_embed_proj_dim"),
    bools=(
        "tie_word_embeddings",
        "do_layer_norm_before",
        "_remove_final_layer_norm",
        "enable_bias",
        "layer_norm_elementwise_affine",
    ),
    finalize=_finalize,
)
