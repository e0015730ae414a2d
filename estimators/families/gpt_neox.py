"""GPT-NeoX / Pythia (`model_type` gpt_neox) as GPTNeoXForCausalLM.

Fused query_key_value projection, LayerNorm, rotary positions (no position parameters), a separate
untied output matrix by default. transformers 5 names it `lm_head` (4.x called it `embed_out`; same
shape). `use_parallel_residual` changes the dataflow, not the parameters.

Forward (transformers/models/gpt_neox/modeling_gpt_neox.py): embed_in -> emb_dropout -> layers
(input_layernorm -> query_key_value -> chunk -> rotary on the first rotary_ndims of q and k, then
cat with the pass-through part -> attention -> dense -> post_attention_dropout; parallel residual:
post_attention_layernorm(x) -> dense_h_to_4h -> act -> dense_4h_to_h -> post_mlp_dropout;
x + attn + mlp) -> final_layer_norm -> lm_head -> ForCausalLMLoss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..autograd import T, Trace, promote
from ..tensors import ParamTensor
from . import _heads
from . import _trace as t
from ._base import Config, Dims, Embedding, Family, LayerNorm, Linear, require_divisible, tensors_of

# transformers GPTNeoXConfig defaults (configuration_gpt_neox.py)
DEFAULTS = {
    "vocab_size": 50432,
    "hidden_size": 6144,
    "num_hidden_layers": 44,
    "num_attention_heads": 64,
    "intermediate_size": 24576,
    "hidden_act": "gelu",
    "rotary_pct": 0.25,
    "rotary_emb_base": 10000,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "classifier_dropout": 0.1,
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "use_cache": True,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": None,
    "tie_word_embeddings": False,
    "use_parallel_residual": True,
    "attention_bias": True,
    "is_decoder": False,
}


@dataclass(frozen=True, kw_only=True)
class GPTNeoXDims(Dims):
    vocab_size: int
    max_positions: int
    attention_bias: bool
    use_parallel_residual: bool
    hidden_dropout: float
    partial_rotary_factor: Any  # as the config gives it; see rotary_ndims
    use_cache: bool

    @property
    def rotary_ndims(self) -> int:
        """The leading dimensions of each head that get rotary positions."""
        return int(self.head_dim * float(self.partial_rotary_factor))


def _finalize(config: dict[str, Any], where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")


def _partial_rotary_factor(config: Config) -> Any:
    """transformers 5 keeps it in rope_parameters; 4.x configs say rotary_pct."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    factor = rope.get("partial_rotary_factor") if isinstance(rope, Mapping) else None
    for v in (factor, config.get("partial_rotary_factor"), config.get("rotary_pct")):
        if v is not None:
            return v
    return 0.25


def _describe(config: Config) -> GPTNeoXDims:
    h, heads = config["hidden_size"], config["num_attention_heads"]
    return GPTNeoXDims(
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
        attention_dropout=config.get("attention_dropout", 0.0) or 0.0,
        attention_bias=config["attention_bias"],
        use_parallel_residual=config["use_parallel_residual"],
        hidden_dropout=config.get("hidden_dropout", 0.0) or 0.0,
        partial_rotary_factor=_partial_rotary_factor(config),
        use_cache=config["use_cache"],
    )


# -- modules --------------------------------------------------------------------------------------


def _embed_in(d: GPTNeoXDims) -> Embedding:
    return Embedding("gpt_neox.embed_in", d.vocab_size, d.hidden_size)


def _final_layer_norm(d: GPTNeoXDims) -> LayerNorm:
    return LayerNorm("gpt_neox.final_layer_norm", d.hidden_size)


def _lm_head(d: GPTNeoXDims) -> Linear:
    return Linear("lm_head", d.hidden_size, d.vocab_size, has_bias=False)


ROTARY = "gpt_neox.rotary_emb"  # buffers only


@dataclass(frozen=True)
class _Layer:
    prefix: str
    input_layernorm: LayerNorm
    post_attention_layernorm: LayerNorm
    query_key_value: Linear
    dense: Linear
    dense_h_to_4h: Linear
    dense_4h_to_h: Linear

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(
            self.input_layernorm,
            self.post_attention_layernorm,
            self.query_key_value,
            self.dense,
            self.dense_h_to_4h,
            self.dense_4h_to_h,
        )


def _layer(d: GPTNeoXDims, i: int) -> _Layer:
    p, h, inter, bias = f"gpt_neox.layers.{i}", d.hidden_size, d.intermediate_size, d.attention_bias
    return _Layer(
        p,
        input_layernorm=LayerNorm(f"{p}.input_layernorm", h),
        post_attention_layernorm=LayerNorm(f"{p}.post_attention_layernorm", h),
        query_key_value=Linear(f"{p}.attention.query_key_value", h, 3 * h, bias),
        dense=Linear(f"{p}.attention.dense", h, h, bias),
        dense_h_to_4h=Linear(f"{p}.mlp.dense_h_to_4h", h, inter),
        dense_4h_to_h=Linear(f"{p}.mlp.dense_4h_to_h", inter, h),
    )


def _tensors(d: GPTNeoXDims) -> list[ParamTensor]:
    out = _embed_in(d).tensors()
    for i in range(d.num_layers):
        out += _layer(d, i).tensors()
    out += _final_layer_norm(d).tensors()
    if d.head in _heads.CLASSIFIERS:  # GPTNeoXForSequenceClassification / GPTNeoXForTokenClassification
        return out + _heads.tensors(d, d.hidden_size)
    if not d.tie_word_embeddings:
        out += _lm_head(d).tensors()
    return out


# -- forward --------------------------------------------------------------------------------------


def _rope_partial(tr: Trace, x: T, full: int, rot: int, cos: T, sin: T) -> T:
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


def _mul_const(tr: Trace, x: T, numel: int, const: T) -> T:
    """x[..., :rotary_ndims] * cos: saves only the constant; x may be a wider view."""
    out = tr.act(numel, promote(x.dtype, const.dtype), "mul")
    tr.record("mul", [x, const], [out], [("other", const)])
    return out


def _forward(tr: Trace, d: GPTNeoXDims, attn_kernel: str) -> None:
    h, heads = d.hidden_size, d.num_heads
    rd = d.rotary_ndims
    p_hidden = d.hidden_dropout
    p_attn = d.attention_dropout if tr.training else 0.0
    bs = tr.batch_size * tr.seq_len
    nq = bs * h

    ids, labels = t.token_inputs(tr)
    tr.module = _embed_in(d).name
    emb = t.param(tr, _embed_in(d).weight)
    x = tr.dropout(tr.embedding(emb, ids, h), p_hidden)
    pos, cos, sin = t.rotary(tr, ROTARY, rd, x.dtype)
    mask = t.make_mask(tr, attn_kernel)

    for i in range(d.num_layers):
        layer = _layer(d, i)
        tr.layer = i
        tr.module = layer.prefix
        tr.record("layer_inputs", [x, pos, cos, sin] + ([mask] if mask is not None else []), [])
        tr.module = layer.prefix + ".attention"
        y = t.layer_norm(tr, x, layer.input_layernorm)
        qkv = t.linear(tr, y, layer.query_key_value)
        rot_n = bs * heads * rd
        q = _rope_partial(tr, qkv, nq, rot_n, cos, sin)
        k = _rope_partial(tr, qkv, nq, rot_n, cos, sin)
        k, v = t.kv_cache(tr, d.use_cache, k, qkv, nq)
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
        a = t.linear(tr, a, layer.dense)
        t.module_returns(tr, y)  # attention(input_layernorm(x)) returns (GPTNeoXLayer.forward)
        a = tr.dropout(a, p_hidden)
        tr.module = layer.prefix + ".mlp"
        if d.use_parallel_residual:
            y = t.layer_norm(tr, x, layer.post_attention_layernorm)
        else:
            a = tr.add(a, x)
            y = t.layer_norm(tr, a, layer.post_attention_layernorm)
        ff = t.activation(tr, d.activation, t.linear(tr, y, layer.dense_h_to_4h))
        ff = t.linear(tr, ff, layer.dense_4h_to_h)
        t.module_returns(tr, y)  # mlp(post_attention_layernorm(...)) returns
        ff = tr.dropout(ff, p_hidden)
        x = tr.add(tr.add(ff, a), x) if d.use_parallel_residual else tr.add(ff, a)
    tr.layer = None
    tr.module = _final_layer_norm(d).name
    x = t.layer_norm(tr, x, _final_layer_norm(d))
    if d.head in _heads.CLASSIFIERS:
        _heads.classify(tr, d, x, ids, labels, d.hidden_size)
        return
    head = emb if d.tie_word_embeddings else t.param(tr, _lm_head(d).weight)
    t.causal_lm_head(tr, x, head, d.vocab_size, labels)


FAMILY = Family(
    model_type="gpt_neox",
    task="causal-lm",
    head_class="GPTNeoXForCausalLM",
    heads={
        "causal-lm": "GPTNeoXForCausalLM",
        "seq-cls": "GPTNeoXForSequenceClassification",
        "token-cls": "GPTNeoXForTokenClassification",
    },
    defaults=DEFAULTS,
    required=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=("max_position_embeddings",),
    bools=("tie_word_embeddings", "attention_bias", "use_parallel_residual"),
    finalize=_finalize,
)
