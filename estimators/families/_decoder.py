"""The decoder layout shared by the newer Llama-like families: Qwen3, Gemma 2, Gemma 3 (text), Phi-3,
Mixtral and Qwen3-MoE (the family modules hold their config defaults, their parameter lists and the
few switches below; this module replays their forward).

All are `*ForCausalLM` over embed_tokens -> layers -> norm -> lm_head, with RMSNorm, rotary positions,
grouped-query attention and a gated MLP (or a mixture of experts). Where they differ, as their
transformers 5 modeling files write it (models/<family>/modeling_<family>.py):

- QK-norm (Qwen3, Gemma 3): an RMSNorm over head_dim on q and k, before the rotary embedding;
- Gemma's RMSNorm computes in fp32 and multiplies by (1 + weight.float()), a new (dim,) tensor
  autograd saves, then casts back (`output.type_as(x)`); Llama's multiplies the weight after the cast;
- sandwich norms (Gemma 2/3): post_attention_layernorm on the attention output, pre_ and
  post_feedforward_layernorm around the MLP;
- the scaled word embedding (Gemma): embed_tokens(ids) * embed_scale.to(weight.dtype);
- soft-capping (Gemma 2): attention logits (eager) and final logits are / cap, tanh, * cap;
- sliding-window layers (Gemma 2/3 alternate; Qwen3 and Phi-3 when configured): transformers builds
  one mask per layer type (masking_utils): eager gets a (b, 1, s, s) additive mask of the embeddings'
  dtype per type; sdpa gets none for full attention and, for a window shorter than the sequence
  (`_ignore_causal_mask_sdpa`: kv_length >= window refuses the skip), a boolean (1, 1, s, s) mask
  expanded to (b, 1, s, s); flash_attention_2 gets no mask tensor;
- Gemma 3's two rotary embeddings (one per layer type: its own inv_freq buffers, cos and sin);
- Phi-3's fused qkv_proj (q, k, v are slices of one output) and gate_up_proj (chunked in two), its
  rotary embedding applied to q[..., :rotary_dim] and concatenated with the rest (a copy even when the
  rest is empty), and resid_pdrop dropout on both residual branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..autograd import T, Trace, promote
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import _heads
from . import _trace as t
from ._base import Config, Embedding, Linear, RMSNorm
from .llama import DecoderDims, rms_norm, rope

FULL, SLIDING = "full_attention", "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)


@dataclass(frozen=True, kw_only=True)
class NewDecoderDims(DecoderDims):
    """The Llama description plus the switches of the module docstring."""

    layer_types: tuple[str, ...]
    sliding_window: int | None
    qk_norm: bool = False
    gemma_norm: bool = False  # (1 + weight) RMSNorm in fp32
    sandwich_norm: bool = False
    embed_scale: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None
    fused_qkv: bool = False
    fused_gate_up: bool = False
    resid_dropout: float = 0.0
    rotary_dim: int = 0  # 0: head_dim
    rope_per_layer_type: bool = False


def check_layer_types(config: dict[str, Any], where: str) -> None:
    """layer_types, when a config states it: one of LAYER_TYPES per layer."""
    types = config.get("layer_types")
    if types is None:
        return
    if (
        not isinstance(types, list)
        or len(types) != config["num_hidden_layers"]
        or any(x not in LAYER_TYPES for x in types)
    ):
        raise MemprofUserError(
            f"{where}: field 'layer_types' must list one of {', '.join(LAYER_TYPES)} for each of the "
            f"{config['num_hidden_layers']} layers"
        )


DD = TypeVar("DD", bound=NewDecoderDims)


def describe(config: Config, cls: type[DD], **switches: Any) -> DD:
    """The description (`cls`, a NewDecoderDims) of a normalized config (head_dim, num_key_value_heads,
    layer_types filled in); `switches` set the other fields."""
    return cls(
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"],
        intermediate_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        max_positions=config["max_position_embeddings"],
        tie_word_embeddings=config["tie_word_embeddings"],
        activation=switches.pop("activation", None) or config.get("hidden_act", "silu"),
        gated_mlp=True,
        norm="rmsnorm",
        attention_dropout=config.get("attention_dropout", 0.0) or 0.0,
        use_cache=config["use_cache"],
        layer_types=tuple(config["layer_types"]),
        sliding_window=config.get("sliding_window"),
        **switches,
    )


# -- modules ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attention:
    """self_attn of one layer: separate q/k/v projections or Phi-3's fused qkv_proj, optional q/k norms."""

    prefix: str
    q_proj: Linear | None
    k_proj: Linear | None
    v_proj: Linear | None
    qkv_proj: Linear | None
    o_proj: Linear
    q_norm: RMSNorm | None
    k_norm: RMSNorm | None


def attention_modules(d: NewDecoderDims, i: int) -> Attention:
    p, h = f"model.layers.{i}.self_attn", d.hidden_size
    q_out, kv_out = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    fused = d.fused_qkv
    return Attention(
        p,
        q_proj=None if fused else Linear(f"{p}.q_proj", h, q_out, d.qkv_bias),
        k_proj=None if fused else Linear(f"{p}.k_proj", h, kv_out, d.qkv_bias),
        v_proj=None if fused else Linear(f"{p}.v_proj", h, kv_out, d.qkv_bias),
        qkv_proj=Linear(f"{p}.qkv_proj", h, q_out + 2 * kv_out, False) if fused else None,
        o_proj=Linear(f"{p}.o_proj", q_out, h, d.o_bias),
        q_norm=RMSNorm(f"{p}.q_norm", d.head_dim) if d.qk_norm else None,
        k_norm=RMSNorm(f"{p}.k_norm", d.head_dim) if d.qk_norm else None,
    )


def embed(d: NewDecoderDims) -> Embedding:
    return Embedding("model.embed_tokens", d.vocab_size, d.hidden_size)


def final_norm(d: NewDecoderDims) -> RMSNorm:
    return RMSNorm("model.norm", d.hidden_size)


def lm_head(d: NewDecoderDims) -> Linear:
    return Linear("lm_head", d.hidden_size, d.vocab_size, has_bias=False)


def layer_norms(d: NewDecoderDims, i: int) -> dict[str, RMSNorm]:
    p, h = f"model.layers.{i}", d.hidden_size
    names = ["input_layernorm", "post_attention_layernorm"]
    if d.sandwich_norm:
        names += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    return {n: RMSNorm(f"{p}.{n}", h) for n in names}


def dense_mlp(d: NewDecoderDims, i: int) -> dict[str, Linear]:
    p, h, inter = f"model.layers.{i}.mlp", d.hidden_size, d.intermediate_size
    if d.fused_gate_up:
        return {
            "gate_up_proj": Linear(f"{p}.gate_up_proj", h, 2 * inter, False),
            "down_proj": Linear(f"{p}.down_proj", inter, h, False),
        }
    return {
        "gate_proj": Linear(f"{p}.gate_proj", h, inter, d.mlp_bias),
        "up_proj": Linear(f"{p}.up_proj", h, inter, d.mlp_bias),
        "down_proj": Linear(f"{p}.down_proj", inter, h, d.mlp_bias),
    }


# -- forward pieces -----------------------------------------------------------------------------------


def norm(tr: Trace, x: T, m: RMSNorm, d: NewDecoderDims) -> T:
    return gemma_rms_norm(tr, x, m) if d.gemma_norm else rms_norm(tr, x, m)


def gemma_rms_norm(tr: Trace, x: T, m: RMSNorm) -> T:
    """Gemma2RMSNorm / Gemma3RMSNorm: out = x.float() * rsqrt(mean(x.float()**2) + eps);
    out * (1.0 + weight.float()); out.type_as(x). Saves the fp32 input, rstd, the normalised tensor
    and the (dim,) `1 + weight` (a new tensor that requires grad)."""
    x32 = tr.to(x, "float32")
    sq = tr.unary("pow", x32, "self")
    var = tr.act(x.numel // m.dim, "float32", "variance")
    tr.record("mean", [sq], [var])
    rstd = tr.unary("rsqrt", tr.scale(var, "add_scalar"), "result")
    normed = tr.mul(x32, rstd)
    w = t.param(tr, m.weight)
    if w.dtype != "float32":  # weight.float() of a 16-bit parameter: a copy
        w32 = tr.act(w.numel, "float32", m.weight.name + ".float32")
        tr.record("to_copy", [w], [w32])
        w = w32
    one_plus = tr.scale(w, "add_scalar")
    return tr.to(tr.mul(normed, one_plus), x.dtype)


def scaled_embedding(tr: Trace, x: T, module: str) -> T:
    """Gemma's embed_tokens(ids) * embed_scale.to(weight.dtype): a 0-d buffer, which `model.to()` casts
    with the weights, so the cast is a no-op and the multiplication saves only the buffer."""
    tr.buffer(module + ".embed_scale", 1, tr.param_dtype)
    out = tr.act(x.numel, x.dtype, "embed_scaled")
    tr.record("mul", [x], [out])
    return out


def rotary(tr: Trace, d: NewDecoderDims, dtype: str) -> tuple[T, dict[str, tuple[T, T]]]:
    """The position ids, and cos and sin per layer type (Gemma 3 keeps one rotary embedding per type:
    its buffers are `<type>_inv_freq` and `<type>_original_inv_freq`), computed once per forward."""
    rd = d.rotary_dim or d.head_dim
    module = "model.rotary_emb"
    if not d.rope_per_layer_type:
        pos, cos, sin = t.rotary(tr, module, rd, dtype)
        return pos, dict.fromkeys(LAYER_TYPES, (cos, sin))
    pos = tr.act(tr.seq_len, "int64", "position_ids", "index")
    tr.record("arange", [], [pos])
    out: dict[str, tuple[T, T]] = {}
    for lt in sorted(set(d.layer_types)):
        tr.buffer(f"{module}.{lt}_inv_freq", rd // 2, "float32")
        tr.buffer(f"{module}.{lt}_original_inv_freq", rd // 2, "float32")
        cos = tr.act(tr.seq_len * rd, dtype, f"rope_cos_{lt}", "const")
        sin = tr.act(tr.seq_len * rd, dtype, f"rope_sin_{lt}", "const")
        tr.record("rotary", [pos], [cos, sin])
        out[lt] = (cos, sin)
    return pos, out


def masks(tr: Trace, d: NewDecoderDims, kernel: str, types: Sequence[str]) -> dict[str, tuple[T | None, T | None]]:
    """Per layer type: (the eager additive mask, the boolean sdpa mask); see the module docstring.
    `types`: the masks the model builds, in its order."""
    out: dict[str, tuple[T | None, T | None]] = {}
    b, s = tr.batch_size, tr.seq_len
    for lt in types:
        if kernel == "eager":
            m = tr.act(b * s * s, tr.param_dtype, f"{lt}_mask", "const")
            tr.record("causal_mask", [], [m])
            out[lt] = (m, None)
        elif lt == SLIDING and tr.attention == "sdpa" and d.sliding_window is not None and s >= d.sliding_window:
            m = tr.act(s * s, "bool", "sliding_window_mask", "const")
            tr.record("sliding_window_mask", [], [m])
            out[lt] = (None, m)
        else:
            out[lt] = (None, None)
    return out


def slice_rope(tr: Trace, x: T, numel: int, rot: int, cos: T, sin: T) -> T:
    """Phi-3's apply_rotary_pos_emb on a slice of the fused projection: (x_rot * cos) +
    (rotate_half(x_rot) * sin), then torch.cat with x[..., rotary_dim:] (a contiguous copy, also
    when that rest is empty). Only cos and sin are saved."""
    a = _mul_const(tr, x, rot, cos)
    neg = tr.act(rot // 2, x.dtype, "neg")
    tr.record("neg", [x], [neg])
    rh = tr.act(rot, x.dtype, "rotate_half")
    tr.record("cat", [neg, x], [rh])
    emb = tr.add(a, _mul_const(tr, rh, rot, sin))
    out = tr.act(numel, promote(emb.dtype, x.dtype), "rope_cat")
    out.contig = True
    tr.record("cat", [emb, x], [out])
    return out


def _mul_const(tr: Trace, x: T, numel: int, const: T) -> T:
    out = tr.act(numel, promote(x.dtype, const.dtype), "mul")
    tr.record("mul", [x, const], [out], [("other", const)])
    return out


def gated_mlp(tr: Trace, y: T, d: NewDecoderDims, mods: dict[str, Linear]) -> T:
    """down_proj(act(gate_proj(y)) * up_proj(y)), or Phi-3's gate_up_proj chunked in two:
    up * act(gate), whose gate and up are views of one output (act saves that storage, mul saves it
    and the activation's output)."""
    if not d.fused_gate_up:
        g = t.activation(tr, d.activation, t.linear(tr, y, mods["gate_proj"]))
        u = t.linear(tr, y, mods["up_proj"])
        return t.linear(tr, tr.mul(g, u), mods["down_proj"])
    gu = t.linear(tr, y, mods["gate_up_proj"])
    n = gu.numel // 2
    if d.activation not in ("silu", "swish", "gelu", "gelu_pytorch_tanh"):
        raise MemprofUserError(f"activation {d.activation!r} is not modelled for a fused gate_up_proj")
    act = tr.act(n, gu.dtype, d.activation)
    tr.record(d.activation, [gu], [act], [("self", gu)])
    prod = tr.act(n, gu.dtype, "mul")
    tr.record("mul", [gu, act], [prod], [("self", gu), ("other", act)])
    return t.linear(tr, prod, mods["down_proj"])


def final_head(tr: Trace, x: T, weight: T, d: NewDecoderDims, labels: T) -> None:
    """lm_head, Gemma 2's final soft-capping (logits / cap, tanh, * cap: the capped logits are the
    output), then ForCausalLMLoss, as `_trace.causal_lm_head`."""
    if d.final_softcap is None:
        t.causal_lm_head(tr, x, weight, d.vocab_size, labels)
        return
    tr.module = "lm_head"
    raw = tr.linear(x, weight, d.vocab_size)
    capped = tr.scale(tr.unary("tanh", tr.scale(raw, "div_scalar"), "result"))
    tr.held.append(capped)
    tr.module = "loss"
    padded = tr.act(tr.batch_size * (tr.seq_len + 1), "int64", "padded_labels", "index")
    tr.record("pad", [labels], [padded])
    if tr.batch_size == 1:
        loss = tr.cross_entropy(capped, d.vocab_size, tr.seq_len, labels=padded)
    else:
        loss = tr.cross_entropy(capped, d.vocab_size, tr.batch_size * tr.seq_len)
        tr.ops[-2].inputs = (padded,)
    tr.held.append(loss)


MLP = Callable[[Trace, T, NewDecoderDims, int], T]


def forward(tr: Trace, d: NewDecoderDims, kernel: str, mask_types: Sequence[str], mlp: MLP | None = None) -> None:
    """The whole forward: embeddings, layers, final norm, head and loss. `mlp(tr, y, d, layer)`
    replaces the dense gated MLP (mixtures of experts)."""
    heads, kv_heads, hd = d.num_heads, d.num_kv_heads, d.head_dim
    p_attn = d.attention_dropout if tr.training else 0.0
    p_resid = d.resid_dropout if tr.training else 0.0
    bs = tr.batch_size * tr.seq_len
    nq, nkv = bs * heads * hd, bs * kv_heads * hd

    ids, labels = t.token_inputs(tr)
    tr.module = embed(d).name
    emb = t.param(tr, embed(d).weight)
    x = tr.embedding(emb, ids, d.hidden_size)
    if d.embed_scale:
        x = scaled_embedding(tr, x, embed(d).name)
    tr.module = "model"
    layer_masks = masks(tr, d, kernel, mask_types)
    tr.module = "model.rotary_emb"
    pos, rope_by_type = rotary(tr, d, x.dtype)

    for i in range(d.num_layers):
        lt = d.layer_types[i]
        cos, sin = rope_by_type[lt]
        eager_mask, sdpa_mask = layer_masks.get(lt, (None, None))
        attn, norms = attention_modules(d, i), layer_norms(d, i)
        tr.layer = i
        tr.module = f"model.layers.{i}"
        tr.record("layer_inputs", [x, pos, cos, sin, *(m for m in (eager_mask, sdpa_mask) if m is not None)], [])
        residual = x
        tr.module = norms["input_layernorm"].name
        y = norm(tr, x, norms["input_layernorm"], d)
        tr.module = attn.prefix
        if attn.qkv_proj is not None:
            qkv = t.linear(tr, y, attn.qkv_proj)
            rot = bs * heads * (d.rotary_dim or hd)
            rot_k = bs * kv_heads * (d.rotary_dim or hd)
            q = slice_rope(tr, qkv, nq, rot, cos, sin)
            k = slice_rope(tr, qkv, nkv, rot_k, cos, sin)
            k, v = t.kv_cache(tr, d.use_cache, k, qkv, nkv)
        else:
            assert attn.q_proj is not None and attn.k_proj is not None and attn.v_proj is not None
            q = t.linear(tr, y, attn.q_proj)
            k = t.linear(tr, y, attn.k_proj)
            v = t.linear(tr, y, attn.v_proj)
            if attn.q_norm is not None and attn.k_norm is not None:
                q = norm(tr, q, attn.q_norm, d)
                k = norm(tr, k, attn.k_norm, d)
            q = rope(tr, q, cos, sin)
            k = rope(tr, k, cos, sin)
            k, v = t.kv_cache(tr, d.use_cache, k, v, k.numel)
        a = t.attention(
            tr,
            q,
            k,
            v,
            heads,
            kv_heads,
            hd,
            kernel,
            p_attn,
            eager_mask,
            softmax_dtype="float32",
            probs_dtype=q.dtype,
            softcap=d.attn_softcap is not None and kernel == "eager",
            sdpa_mask=sdpa_mask,
        )
        o = t.linear(tr, a, attn.o_proj)
        t.module_returns(tr, y)  # self_attn(hidden_states=y) returns
        if d.sandwich_norm:
            tr.module = norms["post_attention_layernorm"].name
            o = norm(tr, o, norms["post_attention_layernorm"], d)
        x = tr.add(residual, tr.dropout(o, p_resid))
        residual = x
        pre = norms["pre_feedforward_layernorm" if d.sandwich_norm else "post_attention_layernorm"]
        tr.module = pre.name
        y = norm(tr, x, pre, d)
        tr.module = f"model.layers.{i}.mlp"
        m = mlp(tr, y, d, i) if mlp is not None else gated_mlp(tr, y, d, dense_mlp(d, i))
        t.module_returns(tr, y)  # mlp(y) returns
        if d.sandwich_norm:
            tr.module = norms["post_feedforward_layernorm"].name
            m = norm(tr, m, norms["post_feedforward_layernorm"], d)
        x = tr.add(residual, tr.dropout(m, p_resid))
    tr.layer = None
    tr.module = final_norm(d).name
    x = norm(tr, x, final_norm(d), d)
    if d.head in _heads.CLASSIFIERS:  # Generic{Sequence,Token}Classification (transformers/modeling_layers.py)
        _heads.classify(tr, d, x, ids, labels, d.hidden_size)
        return
    head = emb if d.tie_word_embeddings else t.param(tr, lm_head(d).weight)
    final_head(tr, x, head, d, labels)


def head_tensors(d: NewDecoderDims) -> list[ParamTensor]:
    """The parameters after the final norm: lm_head (none when tied to the embedding), or a
    classification head's `score` (Generic{Sequence,Token}Classification: no lm_head then)."""
    if d.head in _heads.CLASSIFIERS:
        return _heads.tensors(d, d.hidden_size)
    return [] if d.tie_word_embeddings else lm_head(d).tensors()
