"""T5 (`t5`), the encoder-decoder, as T5ForConditionalGeneration builds it (transformers/models/t5/
modeling_t5.py, transformers 5.24).

Parameters: `shared` (the vocabulary embedding, which the encoder's and decoder's embed_tokens and the
lm_head all share: T5Config.__post_init__ forces tie_word_embeddings, `tie_word_embeddings: false`
only turns off the decoder output's scaling); per encoder block a self-attention (q, k, v, o without
bias, inner size heads x d_kv; block 0 also has the relative_attention_bias embedding, buckets x heads)
and its T5LayerNorm (a weight, no bias), then the feed-forward (DenseReluDense: wi, or wi_0 and wi_1
for a gated activation, and wo) and its norm; decoder blocks add a cross-attention (EncDecAttention)
and its norm between the two; a final_layer_norm per stack.

Forward (training, with labels): the encoder runs on input_ids (`seq_len` tokens), the decoder on the
labels shifted right (`target_len` tokens, seq_len unless told). T5LayerNorm: fp32 variance of x,
x * rsqrt(var + eps) (x in its own dtype, promoted), cast back when the weight is 16-bit, times the
weight. Dropout (dropout_rate, 0.1 by default) follows the embeddings, each attention's
probabilities, each residual branch, the feed-forward activation and each stack's final norm.
Attention has no 1/sqrt(d) scaling (scaling 1.0, still a multiplication); block 0 of each stack
computes the relative position bias (an embedding lookup of int64 buckets, (1, heads, q, k), shared
with the later blocks), the decoder's cross-attention bias is a zeros tensor; eager attention adds the
bias (and the decoder's causal mask), sdpa gets the bias as its float mask (create_position_bias_mask:
a contiguous copy, or the causal `where` in the decoder). The feed-forward casts its activation to
wo's dtype when they differ (under autocast: the 16-bit activation back to fp32 before wo). The
decoder caches k and v of both attentions (EncoderDecoderCache, with use_cache), which the output
keeps. The decoder output is scaled by d_model**-0.5 (tied), projected by `shared`, and
CrossEntropyLoss runs on the logits as they are (not upcast; fp32 under autocast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..autograd import T, Trace
from ..errors import MemprofUserError, ParameterError
from ..tensors import ParamTensor
from . import _trace as t
from ._base import Config, Dims, Embedding, Family, Linear, RMSNorm, tensors_of

# transformers T5Config defaults (configuration_t5.py)
DEFAULTS: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 6,
    "num_decoder_layers": None,
    "num_heads": 8,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "feed_forward_proj": "relu",
    "is_encoder_decoder": True,
    "use_cache": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "classifier_dropout": 0.0,
    "decoder_start_token_id": 0,
}
REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
OPTIONAL_INTS = (
    "num_decoder_layers",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "n_positions",
)


@dataclass(frozen=True, kw_only=True)
class T5Dims(Dims):
    vocab_size: int
    max_positions: int
    num_decoder_layers: int
    buckets: int
    gated: bool
    dropout: float
    scale_output: bool
    use_cache: bool


def _finalize(config: dict[str, Any], where: str) -> None:
    """T5Config.__post_init__: num_decoder_layers defaults to num_layers; feed_forward_proj is `act` or
    `gated-act` (gated-gelu runs gelu_new)."""
    if config.get("num_decoder_layers") is None:
        config["num_decoder_layers"] = config["num_layers"]
    proj = config["feed_forward_proj"]
    parts = proj.split("-") if isinstance(proj, str) else []
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise MemprofUserError(
            f"{where}: feed_forward_proj {proj!r} is not valid; use an activation name or 'gated-<activation>'"
        )


def _describe(config: Config) -> T5Dims:
    parts = config["feed_forward_proj"].split("-")
    act = "gelu_new" if config["feed_forward_proj"] == "gated-gelu" else parts[-1]
    return T5Dims(
        hidden_size=config["d_model"],
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        num_kv_heads=config["num_heads"],
        head_dim=config["d_kv"],
        intermediate_size=config["d_ff"],
        vocab_size=config["vocab_size"],
        # relative positions have no learned limit: the published configs' n_positions (512, the length
        # T5 was trained at) is the default sequence and fit's ceiling; longer ones are estimated too
        max_positions=config.get("n_positions") or 512,
        tie_word_embeddings=True,
        activation=act,
        gated_mlp=parts[0] == "gated" and len(parts) == 2,
        norm="rmsnorm",
        attention_dropout=config["dropout_rate"] or 0.0,
        num_decoder_layers=config["num_decoder_layers"],
        buckets=config["relative_attention_num_buckets"],
        gated=parts[0] == "gated" and len(parts) == 2,
        dropout=config["dropout_rate"] or 0.0,
        scale_output=config.get("tie_word_embeddings", True) is not False,
        use_cache=config["use_cache"],
    )


# -- modules ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attention:
    prefix: str
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    bias: Embedding | None
    norm: RMSNorm

    def tensors(self) -> list[ParamTensor]:
        mods: list[Any] = [self.q, self.k, self.v, self.o] + ([self.bias] if self.bias else [])
        return tensors_of(*mods, self.norm)


def _attention(d: T5Dims, layer_prefix: str, name: str, relative: bool) -> _Attention:
    p, h, inner = f"{layer_prefix}.{name}", d.hidden_size, d.num_heads * d.head_dim
    return _Attention(
        p,
        q=Linear(f"{p}.q", h, inner, False),
        k=Linear(f"{p}.k", h, inner, False),
        v=Linear(f"{p}.v", h, inner, False),
        o=Linear(f"{p}.o", inner, h, False),
        bias=Embedding(f"{p}.relative_attention_bias", d.buckets, d.num_heads) if relative else None,
        norm=RMSNorm(p.rsplit(".", 1)[0] + ".layer_norm", h),
    )


@dataclass(frozen=True)
class _FF:
    wi: tuple[Linear, ...]
    wo: Linear
    norm: RMSNorm

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(*self.wi, self.wo, self.norm)


def _ff(d: T5Dims, prefix: str) -> _FF:
    p, h, ff = f"{prefix}.DenseReluDense", d.hidden_size, d.intermediate_size
    wi = (
        (Linear(f"{p}.wi_0", h, ff, False), Linear(f"{p}.wi_1", h, ff, False))
        if d.gated
        else (Linear(f"{p}.wi", h, ff, False),)
    )
    return _FF(wi, Linear(f"{p}.wo", ff, h, False), RMSNorm(f"{prefix}.layer_norm", h))


def _shared(d: T5Dims) -> Embedding:
    return Embedding("shared", d.vocab_size, d.hidden_size)


def _encoder_block(d: T5Dims, i: int) -> tuple[_Attention, _FF]:
    p = f"encoder.block.{i}.layer"
    return _attention(d, f"{p}.0", "SelfAttention", i == 0), _ff(d, f"{p}.1")


def _decoder_block(d: T5Dims, i: int) -> tuple[_Attention, _Attention, _FF]:
    p = f"decoder.block.{i}.layer"
    return (
        _attention(d, f"{p}.0", "SelfAttention", i == 0),
        _attention(d, f"{p}.1", "EncDecAttention", False),
        _ff(d, f"{p}.2"),
    )


def _tensors(d: T5Dims) -> list[ParamTensor]:
    out = _shared(d).tensors()
    for i in range(d.num_layers):
        a, f = _encoder_block(d, i)
        out += a.tensors() + f.tensors()
    out += RMSNorm("encoder.final_layer_norm", d.hidden_size).tensors()
    for i in range(d.num_decoder_layers):
        a, c, f = _decoder_block(d, i)
        out += a.tensors() + c.tensors() + f.tensors()
    out += RMSNorm("decoder.final_layer_norm", d.hidden_size).tensors()
    return out


# -- forward --------------------------------------------------------------------------------------


def _layer_norm(tr: Trace, x: T, m: RMSNorm) -> T:
    """T5LayerNorm: variance of x.float(); x * rsqrt(var + eps) (promoted); .to(weight dtype) when the
    weight is 16-bit; weight * x. Saves the fp32 copy (pow), rstd, x (mul) and the normalised tensor."""
    x32 = tr.to(x, "float32")
    sq = tr.unary("pow", x32, "self")
    var = tr.act(x.numel // m.dim, "float32", "variance")
    tr.record("mean", [sq], [var])
    rstd = tr.unary("rsqrt", tr.scale(var, "add_scalar"), "result")
    h = tr.mul(x, rstd)
    w = t.param(tr, m.weight)
    if w.dtype in ("bfloat16", "float16"):
        h = tr.to(h, w.dtype)
    return tr.mul(w, h)


def _relative_bias(tr: Trace, m: Embedding, q_len: int, k_len: int) -> T:
    """compute_bias: int64 bucket indices of (q, k) relative positions (their arithmetic: int64 and fp32
    temporaries), looked up in relative_attention_bias: a (q, k, heads) tensor viewed as (1, heads, q, k)."""
    n = q_len * k_len
    rel = tr.act(n, "int64", "relative_position", "index")
    tr.record("relative_position", [], [rel])
    scratch = tr.act(n, "float32", "relative_position_log", "const")
    tr.record("log", [rel], [scratch])
    buckets = tr.act(n, "int64", "relative_position_bucket", "index")
    tr.record("relative_position_bucket", [rel, scratch], [buckets])
    return tr.embedding(t.param(tr, m.weight), buckets, m.dim)  # (q*k, heads)


def _attend(
    tr: Trace, q: T, k: T, v: T, q_len: int, k_len: int, d: T5Dims, kernel: str, bias: T, mask: T | None, causal: bool
) -> T:
    """Attention of q (q_len rows) over k, v (k_len rows) with the position bias (and an eager mask)."""
    b, heads, dk = tr.batch_size, d.num_heads, d.head_dim
    nq, nk, scores_n = b * heads * q_len * dk, b * heads * k_len * dk, b * heads * q_len * k_len
    p = d.dropout if tr.training else 0.0
    tr.core = True
    if kernel == "eager":
        qi, ki = tr.contiguous(tr.lowp(q), nq), tr.contiguous(tr.lowp(k), nk)
        scores = tr.scale(tr.matmul(qi, ki, scores_n))  # * scaling (1.0)
        scores = tr.add(scores, bias)
        if mask is not None:
            scores = tr.add(scores, mask)
        probs = tr.dropout(tr.softmax(scores), p)
        vi = tr.contiguous(tr.lowp(v), nk)
        out = tr.copy(tr.matmul(probs, vi, nq), "attn_out")
    else:
        # create_position_bias_mask: the bias as sdpa's float mask, contiguous (the decoder's causal
        # `where` makes a new tensor; the encoder's permuted view is copied; the cross-attention zeros
        # are already contiguous)
        n_bias = heads * q_len * k_len
        if causal:
            tri = tr.act(q_len * k_len, "bool", "causal_mask", "const")
            tr.record("causal_mask", [], [tri])
            fmask = tr.act(n_bias, bias.dtype, "position_bias_mask", bias.kind)
            tr.record("where", [tri, bias], [fmask], [("condition", tri)])
        elif bias.kind == "const":
            fmask = bias
        else:
            fmask = tr.copy(bias, "position_bias_mask")
        q, k, v = tr.lowp(q), tr.lowp(k), tr.lowp(v)
        fmask = tr.lowp(fmask)  # autocast casts every floating input of sdpa
        if kernel == "flash" and fmask.requires_grad and tr.device == "cpu":
            kernel = "math"  # the CPU flash kernel gives no gradient to a mask: the relative bias needs one
        elif kernel == "flash" and tr.device == "cuda":
            kernel = "efficient"  # CUDA's flash kernel takes no mask; memory-efficient takes a bias
        if kernel == "math":
            acc = "float32" if q.dtype in ("bfloat16", "float16") else q.dtype
            qi = tr.scale(tr.cast(q, acc, nq), "q_scaled", nq)
            ki = tr.scale(tr.cast(k, acc, nk), "k_scaled", nk)
            vi = tr.contiguous(tr.cast(v, acc, nk), nk)
            scores = tr.matmul(qi, ki, scores_n, autocast=False)
            scores = tr.add(scores, tr.cast(fmask, acc, n_bias))
            probs = tr.dropout(tr.softmax(scores), p)
            out = tr.cast(tr.matmul(probs, vi, nq, autocast=False), q.dtype, nq)
            out = tr.copy(out, "attn_out")
        else:
            # as Trace.sdpa_fused, with the query's own length and the mask: q, k, v, output, a fp32
            # log-sum-exp per query row (CUDA's memory-efficient kernel pads the rows to 32), the mask
            out = tr.act(nq, q.dtype, "sdpa_out")
            rows = -(-q_len // 32) * 32 if kernel == "efficient" else q_len
            lse = tr.act(b * heads * rows, "float32", "logsumexp", "const")
            saved = [("query", q), ("key", k), ("value", v), ("output", out), ("logsumexp", lse), ("attn_mask", fmask)]
            outs = [out, lse]
            if tr.device != "cpu":  # philox seed and offset
                rng = tr.act(2, "int64", "philox", "index")
                outs.append(rng)
                saved.append(("philox", rng))
            tr.record("sdpa_" + kernel, [q, k, v, fmask], outs, saved)
            out = tr.copy(out, "attn_out") if getattr(q, "contig", False) else out
    tr.core = False
    return out


def _self_or_cross(
    tr: Trace,
    x: T,
    a: _Attention,
    d: T5Dims,
    kernel: str,
    src: T,
    q_len: int,
    k_len: int,
    bias: T | None,
    mask: T | None,
    cache: bool,
    causal: bool,
) -> tuple[T, T]:
    """One T5LayerSelfAttention / T5LayerCrossAttention: norm, q/k/v, (cache), attention, o, residual."""
    tr.module = a.norm.name
    normed = _layer_norm(tr, x, a.norm)
    tr.module = a.prefix
    kv_in = normed if src is x else src
    q = t.linear(tr, normed, a.q)
    k = t.linear(tr, kv_in, a.k)
    v = t.linear(tr, kv_in, a.v)
    k, v = t.kv_cache(tr, cache, k, v, k.numel)
    if bias is None:
        if a.bias is not None:
            bias = _relative_bias(tr, a.bias, q_len, k_len)
        else:  # T5Attention without relative bias: zeros (1, heads, q, k) of the query's dtype
            kind = "act" if tr.checkpointing == "full" else "const"  # requires_grad under checkpointing
            bias = tr.act(d.num_heads * q_len * k_len, q.dtype, "position_bias_zeros", kind)
            tr.record("zeros", [], [bias])
    out = _attend(tr, q, k, v, q_len, k_len, d, kernel, bias, mask, causal)
    o = t.linear(tr, out, a.o)
    return tr.add(x, tr.dropout(o, d.dropout if tr.training else 0.0)), bias


def _feed_forward(tr: Trace, x: T, f: _FF, d: T5Dims) -> T:
    p = d.dropout if tr.training else 0.0
    tr.module = f.norm.name
    y = _layer_norm(tr, x, f.norm)
    tr.module = f.wo.name.rsplit(".", 1)[0]
    if d.gated:
        h = tr.mul(t.activation(tr, d.activation, t.linear(tr, y, f.wi[0])), t.linear(tr, y, f.wi[1]))
    else:
        h = t.activation(tr, d.activation, t.linear(tr, y, f.wi[0]))
    h = tr.dropout(h, p)
    wo = t.param(tr, f.wo.weight)
    h = tr.to(h, wo.dtype)  # `hidden_states.to(self.wo.weight.dtype)` when they differ
    return tr.add(x, tr.dropout(t.linear(tr, h, f.wo), p))


def _forward(tr: Trace, d: T5Dims, kernel: str) -> None:
    if tr.attention == "flash":
        raise ParameterError(
            "t5 does not run with flash_attention_2 (transformers: T5PreTrainedModel._supports_flash_attn is "
            "False: its relative position bias is an additive mask); use {attention} sdpa or eager",
            "attention",
        )
    b, s = tr.batch_size, tr.seq_len
    tgt = tr.target_len or s
    p = d.dropout if tr.training else 0.0
    ids = tr.act(b * s, "int64", "input_ids", "index")
    labels = tr.act(b * tgt, "int64", "labels", "index")
    tr.inputs(ids, labels)
    shared = t.param(tr, _shared(d).weight)
    # -- encoder (seq_len tokens)
    tr.module = "encoder.embed_tokens"
    x = tr.dropout(tr.embedding(shared, ids, d.hidden_size), p)
    bias: T | None = None
    for i in range(d.num_layers):
        a, f = _encoder_block(d, i)
        tr.layer = i
        tr.module = f"encoder.block.{i}"
        tr.record("layer_inputs", [x] + ([bias] if bias is not None else []), [])
        x, bias = _self_or_cross(tr, x, a, d, kernel, x, s, s, bias, None, False, False)
        x = _feed_forward(tr, x, f, d)
    tr.layer = None
    tr.module = "encoder.final_layer_norm"
    enc = tr.dropout(_layer_norm(tr, x, RMSNorm("encoder.final_layer_norm", d.hidden_size)), p)
    # -- decoder (target_len tokens): labels shifted right
    tr.module = "decoder"
    dec_ids = tr.act(b * tgt, "int64", "decoder_input_ids", "index")
    shifted = tr.act(b * max(tgt - 1, 0), "int64", "shifted_labels", "index")
    tr.record("clone", [labels], [shifted])
    pad = tr.act(b * tgt, "bool", "shifted_is_ignore", "const")
    tr.record("eq", [dec_ids], [pad])
    tr.record("shift_right", [shifted, pad], [dec_ids])
    tr.module = "decoder.embed_tokens"
    y = tr.embedding(shared, dec_ids, d.hidden_size)
    mask = None
    if kernel == "eager":
        mask = tr.act(b * tgt * tgt, y.dtype, "causal_mask", "const")
        tr.record("causal_mask", [], [mask])
    y = tr.dropout(y, p)
    cache = d.use_cache
    self_bias: T | None = None
    cross_bias: T | None = None
    for i in range(d.num_decoder_layers):
        a, c, f = _decoder_block(d, i)
        tr.layer = d.num_layers + i
        tr.module = f"decoder.block.{i}"
        held = [m for m in (self_bias, cross_bias, mask) if m is not None]
        tr.record("layer_inputs", [y, enc, *held], [])
        y, self_bias = _self_or_cross(tr, y, a, d, kernel, y, tgt, tgt, self_bias, mask, cache, True)
        y, cross_bias = _self_or_cross(tr, y, c, d, kernel, enc, tgt, s, cross_bias, None, cache, False)
        y = _feed_forward(tr, y, f, d)
    tr.layer = None
    tr.module = "decoder.final_layer_norm"
    y = tr.dropout(_layer_norm(tr, y, RMSNorm("decoder.final_layer_norm", d.hidden_size)), p)
    if d.scale_output:
        y = tr.scale(y)  # sequence_output * model_dim**-0.5
    tr.module = "lm_head"
    logits = tr.linear(y, shared, d.vocab_size)
    tr.held.append(logits)
    tr.module = "loss"
    loss = tr.cross_entropy(logits, d.vocab_size, b * tgt, labels=labels, upcast=False)
    tr.held.append(loss)


FAMILY = Family(
    model_type="t5",
    task="seq2seq-lm",
    head_class="T5ForConditionalGeneration",
    defaults=DEFAULTS,
    required=REQUIRED,
    describe=_describe,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("use_cache",),
    finalize=_finalize,
)
