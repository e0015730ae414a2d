"""GPT-2 (`model_type` gpt2) as GPT2LMHeadModel: learned positions, LayerNorm, Conv1D projections.

Forward (transformers/models/gpt2/modeling_gpt2.py): wte + wpe -> drop -> blocks (ln_1, c_attn,
attention, c_proj, resid_dropout, residual add; ln_2, c_fc, activation, c_proj, dropout, residual add)
-> ln_f -> lm_head (tied to wte) -> ForCausalLMLoss. Cross-attention modules (add_cross_attention)
own parameters but do not run without encoder states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..autograd import Trace
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import _heads
from . import _trace as t
from ._base import Config, Conv1D, Dims, Embedding, Family, LayerNorm, Linear, Module, require_divisible, tensors_of

# transformers GPT2Config defaults (configuration_gpt2.py)
DEFAULTS = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "summary_activation": None,
    "summary_proj_to_labels": True,
    "summary_first_dropout": 0.1,
    "scale_attn_weights": True,
    "use_cache": True,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "pad_token_id": None,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
ATTRIBUTE_MAP = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


@dataclass(frozen=True, kw_only=True)
class GPT2Dims(Dims):
    vocab_size: int
    max_positions: int
    add_cross_attention: bool
    embd_pdrop: float
    resid_pdrop: float
    reorder_and_upcast_attn: bool
    use_cache: bool


def _finalize(config: dict[str, Any], where: str) -> None:
    require_divisible(config, where, "n_embd", "n_head")


def _describe(config: Config) -> GPT2Dims:
    h, heads = config["n_embd"], config["n_head"]
    return GPT2Dims(
        hidden_size=h,
        num_layers=config["n_layer"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=config["n_inner"] if config["n_inner"] is not None else 4 * h,
        vocab_size=config["vocab_size"],
        max_positions=config["n_positions"],
        tie_word_embeddings=config["tie_word_embeddings"],
        activation=config["activation_function"],
        gated_mlp=False,
        norm="layernorm",
        attention_dropout=config["attn_pdrop"],
        add_cross_attention=config["add_cross_attention"],
        embd_pdrop=config["embd_pdrop"],
        resid_pdrop=config["resid_pdrop"],
        reorder_and_upcast_attn=config["reorder_and_upcast_attn"],
        use_cache=config["use_cache"],
    )


# -- modules --------------------------------------------------------------------------------------


def _wte(d: GPT2Dims) -> Embedding:
    return Embedding("transformer.wte", d.vocab_size, d.hidden_size)


def _wpe(d: GPT2Dims) -> Embedding:
    return Embedding("transformer.wpe", d.max_positions, d.hidden_size)


def _ln_f(d: GPT2Dims) -> LayerNorm:
    return LayerNorm("transformer.ln_f", d.hidden_size)


def _lm_head(d: GPT2Dims) -> Linear:
    """Untied only: tied, lm_head.weight IS transformer.wte.weight, listed once."""
    return Linear("lm_head", d.hidden_size, d.vocab_size, has_bias=False)


@dataclass(frozen=True)
class _Block:
    prefix: str
    ln_1: LayerNorm
    c_attn: Conv1D
    attn_proj: Conv1D
    ln_2: LayerNorm
    cross: tuple[Module, ...]  # crossattention.{c_attn, q_attn, c_proj}, ln_cross_attn
    c_fc: Conv1D
    mlp_proj: Conv1D

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(self.ln_1, self.c_attn, self.attn_proj, self.ln_2, *self.cross, self.c_fc, self.mlp_proj)


def _block(d: GPT2Dims, i: int) -> _Block:
    p, h, inner = f"transformer.h.{i}", d.hidden_size, d.intermediate_size
    cross: tuple[Module, ...] = ()
    if d.add_cross_attention:
        cross = (
            Conv1D(f"{p}.crossattention.c_attn", h, 2 * h),
            Conv1D(f"{p}.crossattention.q_attn", h, h),
            Conv1D(f"{p}.crossattention.c_proj", h, h),
            LayerNorm(f"{p}.ln_cross_attn", h),
        )
    return _Block(
        p,
        ln_1=LayerNorm(f"{p}.ln_1", h),
        c_attn=Conv1D(f"{p}.attn.c_attn", h, 3 * h),
        attn_proj=Conv1D(f"{p}.attn.c_proj", h, h),
        ln_2=LayerNorm(f"{p}.ln_2", h),
        cross=cross,
        c_fc=Conv1D(f"{p}.mlp.c_fc", h, inner),
        mlp_proj=Conv1D(f"{p}.mlp.c_proj", inner, h),
    )


def _tensors(d: GPT2Dims) -> list[ParamTensor]:
    out = tensors_of(_wte(d), _wpe(d))
    for i in range(d.num_layers):
        out += _block(d, i).tensors()
    out += _ln_f(d).tensors()
    if d.head in _heads.CLASSIFIERS:  # GPT2ForSequenceClassification / GPT2ForTokenClassification
        return out + _heads.tensors(d, d.hidden_size)
    if not d.tie_word_embeddings:
        out += _lm_head(d).tensors()
    return out


# -- forward --------------------------------------------------------------------------------------


def _forward(tr: Trace, d: GPT2Dims, attn_kernel: str) -> None:
    if d.reorder_and_upcast_attn and attn_kernel == "eager":
        raise MemprofUserError(
            "gpt2 with reorder_and_upcast_attn=true is not modelled (its eager attention "
            "keeps fp32 scores); use --attention sdpa or a config without it"
        )
    h, heads = d.hidden_size, d.num_heads
    bs = tr.batch_size * tr.seq_len

    ids, labels = t.token_inputs(tr)
    tr.module = "transformer"
    wte = t.param(tr, _wte(d).weight)
    x = tr.embedding(wte, ids, h)
    pos = tr.act(tr.seq_len, "int64", "position_ids", "index")
    tr.record("arange", [], [pos])
    x = tr.add(x, t.embedding(tr, _wpe(d), pos))
    x = tr.dropout(x, d.embd_pdrop)
    mask = t.make_mask(tr, attn_kernel)
    for i in range(d.num_layers):
        blk = _block(d, i)
        tr.layer = i
        tr.module = blk.prefix
        tr.record("layer_inputs", [x, pos] + ([mask] if mask is not None else []), [])
        tr.module = blk.ln_1.name
        residual = x
        y = t.layer_norm(tr, x, blk.ln_1)
        tr.module = blk.prefix + ".attn"
        qkv = t.linear(tr, y, blk.c_attn)
        # q, k, v are transposed views of the fused projection (one storage, 3h wide)
        k, v = t.kv_cache(tr, d.use_cache, qkv, qkv, bs * h)
        a = t.attention(
            tr,
            qkv,
            k,
            v,
            heads,
            heads,
            d.head_dim,
            attn_kernel,
            d.attention_dropout if tr.training else 0.0,
            mask,
            probs_dtype=qkv.dtype,
        )
        a = tr.dropout(t.linear(tr, a, blk.attn_proj), d.resid_pdrop)
        t.module_returns(tr, y)  # attn(y) returns (GPT2Block.forward holds ln_1's output until then)
        x = tr.add(a, residual)
        tr.module = blk.ln_2.name
        residual = x
        y = t.layer_norm(tr, x, blk.ln_2)
        tr.module = blk.prefix + ".mlp"
        ff = t.activation(tr, d.activation, t.linear(tr, y, blk.c_fc))
        ff = tr.dropout(t.linear(tr, ff, blk.mlp_proj), d.resid_pdrop)
        t.module_returns(tr, y)  # mlp(y) returns
        x = tr.add(ff, residual)
    tr.layer = None
    tr.module = _ln_f(d).name
    x = t.layer_norm(tr, x, _ln_f(d))
    if d.head in _heads.CLASSIFIERS:
        _heads.classify(tr, d, x, ids, labels, d.hidden_size)
        return
    head = wte if d.tie_word_embeddings else t.param(tr, _lm_head(d).weight)
    t.causal_lm_head(tr, x, head, d.vocab_size, labels)


FAMILY = Family(
    model_type="gpt2",
    task="causal-lm",
    head_class="GPT2LMHeadModel",
    heads={
        "causal-lm": "GPT2LMHeadModel",
        "seq-cls": "GPT2ForSequenceClassification",
        "token-cls": "GPT2ForTokenClassification",
    },
    defaults=DEFAULTS,
    required=("vocab_size", "n_embd", "n_layer", "n_head"),
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=("n_positions", "n_inner"),
    bools=("tie_word_embeddings", "add_cross_attention"),
    attribute_map=ATTRIBUTE_MAP,
    finalize=_finalize,
)
