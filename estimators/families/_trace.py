"""Building blocks of the families' forward replays: modules, attention variants, activations, heads.

Each helper records on a `Trace` (memprof.estimators.autograd) what one piece of Hugging Face
modeling code allocates and what autograd keeps; the module descriptors of `_base` supply the
parameters' names and sizes, so the replay and `named_parameters()` cannot drift apart.
"""

from __future__ import annotations

from ..autograd import T, Trace
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from ._base import Embedding, LayerNorm, Linear

# -- parameters and modules -----------------------------------------------------------------------


def param(tr: Trace, t: ParamTensor) -> T:
    """The trace's handle of parameter `t` (one per name: a tied weight is one tensor)."""
    return tr.param(t.name, t.numel, t.dtype)


def linear(tr: Trace, x: T, m: Linear) -> T:
    """x through the nn.Linear (or GPT-2 Conv1D) `m`; with an adapter (LoRA, quantized weights:
    memprof.estimators.adapters) through what the adapter makes of it."""
    tr.linears.append(m)
    if tr.adapter is not None:
        out: T = tr.adapter.linear(tr, x, m)
        return out
    bias = param(tr, m.bias) if m.bias is not None else None
    return tr.linear(x, param(tr, m.weight), m.out_features, bias)


def module_returns(tr: Trace, *inputs: T) -> None:
    """A submodule call (a layer's attention or MLP) returns: until here its inputs were referenced
    by the call itself, whatever autograd saved of them: `nn.Module._wrapped_call_impl(self, *args,
    **kwargs)` (torch/nn/modules/module.py) holds the arguments for the whole call, and so do the
    caller's locals (`hidden_states = self.mlp(hidden_states)` rebinds only when it returns). It
    matters where nothing saved them (a frozen or autocast linear keeps a copy, not its input) and
    a moment inside the call is measured: the forward's and the checkpointed recomputation's early
    stop (memprof.estimators.timeline, `_recompute`)."""
    tr.record("module_return", list(inputs), [])


def layer_norm(tr: Trace, x: T, m: LayerNorm) -> T:
    """x through the nn.LayerNorm `m`; without elementwise affine the kernel gets a ones weight."""
    if m.weight is None or m.bias is None:
        return tr.layer_norm(x, m.dim, tr.act(m.dim, tr.param_dtype, "ones", "const"), None)
    return tr.layer_norm(x, m.dim, param(tr, m.weight), param(tr, m.bias))


def embedding(tr: Trace, m: Embedding, indices: T) -> T:
    """The rows of the nn.Embedding `m` at `indices`."""
    return tr.embedding(param(tr, m.weight), indices, m.dim)


# -- inputs, positions, masks, cache ----------------------------------------------------------------


def token_inputs(tr: Trace) -> tuple[T, T]:
    """The batch of a language model: input_ids and labels, (b, s) int64, held by the loop."""
    bs = tr.batch_size * tr.seq_len
    ids = tr.act(bs, "int64", "input_ids", "index")
    labels = tr.act(bs, "int64", "labels", "index")
    tr.inputs(ids, labels)
    return ids, labels


def rotary(tr: Trace, module: str, rotary_dim: int, dtype: str) -> tuple[T, T, T]:
    """The rotary embedding module: its inv_freq buffers, then position ids and the (1, s, rotary_dim)
    cos and sin computed once per forward in the activation dtype and shared by all layers."""
    tr.buffer(module + ".inv_freq", rotary_dim // 2, "float32")
    tr.buffer(module + ".original_inv_freq", rotary_dim // 2, "float32")
    pos = tr.act(tr.seq_len, "int64", "position_ids", "index")
    tr.record("arange", [], [pos])
    cos = tr.act(tr.seq_len * rotary_dim, dtype, "rope_cos", "const")
    sin = tr.act(tr.seq_len * rotary_dim, dtype, "rope_sin", "const")
    tr.record("rotary", [pos], [cos, sin])
    return pos, cos, sin


def kv_cache(tr: Trace, use_cache: bool, k: T, v: T, numel: int) -> tuple[T, T]:
    """transformers' DynamicCache in a training forward: with `use_cache` (the config default for
    most decoders) each layer's k and v are concatenated into the cache, i.e. copied contiguous;
    attention then reads the copies and the model output keeps them alive. Gradient checkpointing
    turns the cache off."""
    if not use_cache or tr.checkpointing == "full":
        return k, v
    # transformers 5 (DynamicLayer.lazy_initialization) creates the key cache in k's dtype and the value
    # cache in v's: under autocast, keys are float32 after the rotary embedding and values stay 16-bit
    kc = tr.cast(k, k.dtype, numel, force=True, name="cache_keys")
    vc = tr.cast(v, v.dtype, numel, force=True, name="cache_values")
    kc.contig = vc.contig = True  # torch.cat output
    tr.held += [kc, vc]
    return kc, vc


def make_mask(tr: Trace, kernel: str) -> T | None:
    """The additive causal mask transformers builds for eager attention: (b, 1, s, s) in the
    activation dtype, alive for the whole layer loop. sdpa and flash use is_causal and no tensor."""
    if kernel != "eager":
        return None
    m = tr.act(tr.batch_size * tr.seq_len * tr.seq_len, tr.param_dtype, "causal_mask", "const")
    tr.record("causal_mask", [], [m])
    return m


# -- attention, activations, heads ------------------------------------------------------------------


def attention(
    tr: Trace,
    q: T,
    k: T,
    v: T,
    heads: int,
    kv_heads: int,
    head_dim: int,
    kernel: str,
    p: float,
    mask: T | None,
    *,
    probs_dtype: str | None = None,
    softmax_dtype: str | None = None,
    softcap: bool = False,
    sdpa_mask: T | None = None,
) -> T:
    """Scaled dot-product attention, returning the (b, s, heads*head_dim) input of the out projection.

    eager (transformers' eager_attention_forward): repeat_kv copies k and v to full head count for
    grouped-query attention; matmul operands that are transposed views are copied contiguous (each
    operand one saved tensor either way); scores, mask add, softmax (saved, in `softmax_dtype`, e.g.
    fp32), cast to `probs_dtype`, dropout (mask saved), probs @ v (probs and v saved), then the
    transpose(1, 2).contiguous() copy. "math": sdpa's decomposition (q and k each scaled by
    sqrt(scale), safe softmax). "flash"/"efficient": one fused kernel saving q, k, v, output, lse.

    softcap (Gemma 2's attn_logit_softcapping, eager only): scores / cap, tanh (its output saved),
    * cap, before the mask. sdpa_mask: the boolean mask transformers hands sdpa (a sliding window
    shorter than the sequence): with a mask, transformers' sdpa_attention_forward repeats grouped k
    and v to full head count (use_gqa_in_sdpa needs no mask), the kernel saves the mask converted to
    the query's dtype, and on CUDA the flash kernel (no mask support) gives way to memory-efficient.
    """
    b, s = tr.batch_size, tr.seq_len
    nq = b * heads * s * head_dim
    scores_n = b * heads * s * s
    tr.core = True
    if kernel in ("eager", "math"):
        if kernel == "eager":
            if heads > kv_heads:
                k = tr.expand_copy(k, nq, "repeat_kv")
                v = tr.expand_copy(v, nq, "repeat_kv")
            qi, ki = tr.contiguous(tr.lowp(q), nq), tr.contiguous(tr.lowp(k), nq)
            scores = tr.scale(tr.matmul(qi, ki, scores_n))
            if softcap:
                scores = tr.scale(tr.unary("tanh", tr.scale(scores, "div_scalar"), "result"))
        else:
            # sdpa's math backend: 16-bit q/k/v are computed in fp32 (the acc dtype), q and k are
            # each scaled by sqrt(scale); grouped kv heads are expanded to full size
            q = tr.lowp(q)  # autocast casts sdpa's inputs once, before the kernel
            acc = "float32" if q.dtype in ("bfloat16", "float16") else q.dtype
            if heads > kv_heads:
                k = tr.expand_copy(k, nq, "repeat_kv")
                v = tr.expand_copy(v, nq, "repeat_kv")
            qi = tr.scale(tr.cast(q, acc, nq), "q_scaled", nq)
            ki = tr.scale(tr.cast(tr.lowp(k), acc, nq), "k_scaled", nq)
            v = tr.contiguous(tr.cast(tr.lowp(v), acc, nq), nq)
            scores = tr.matmul(qi, ki, scores_n, autocast=False)
        if mask is not None:
            scores = tr.add(scores, mask)
        probs = tr.softmax(scores, softmax_dtype)
        if probs_dtype is not None and kernel == "eager":
            probs = tr.to(probs, probs_dtype)
        probs = tr.dropout(probs, p)
        if kernel == "eager":
            vi = tr.contiguous(tr.lowp(v), nq)
            out = tr.matmul(probs, vi, nq)
        else:
            out = tr.matmul(probs, v, nq, autocast=False)
        if kernel == "math":
            out = tr.cast(out, q.dtype, nq)  # back to the input dtype
        out = tr.copy(out, "attn_out")  # transpose(1, 2).contiguous() / reshape of (b, h, s, d)
    elif sdpa_mask is not None:
        if heads > kv_heads:
            k = tr.expand_copy(k, nq, "repeat_kv")
            v = tr.expand_copy(v, nq, "repeat_kv")
        if kernel == "flash" and tr.device == "cuda":
            kernel = "efficient"
        out = tr.sdpa_fused(q, k, v, nq, heads, kernel, mask=sdpa_mask)
    else:
        out = tr.sdpa_fused(q, k, v, nq, heads, kernel)
    tr.core = False
    return out


def activation(tr: Trace, name: str, x: T) -> T:
    """transformers' ACT2FN: fused kernels save their input (relu its output); gelu_new is a python
    formula whose every factor autograd keeps."""
    if name in ("gelu", "gelu_pytorch_tanh", "silu", "swish"):
        return tr.unary(name, x, "self")
    if name == "relu":
        return tr.unary(name, x, "result")
    if name == "gelu_new":
        return _gelu_python(tr, x)
    raise MemprofUserError(
        f"activation {name!r} is not modelled; supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu, swish"
    )


def _gelu_python(tr: Trace, x: T) -> T:
    """NewGELUActivation: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))."""
    half = tr.scale(x)
    cube = tr.unary("pow", x, "self")
    inner = tr.add(x, tr.scale(cube))
    th = tr.unary("tanh", tr.scale(inner), "result")
    one_plus = tr.scale(th, "add_scalar")
    return tr.mul(half, one_plus)


def causal_lm_head(tr: Trace, x: T, head_weight: T, vocab: int, labels: T) -> None:
    """lm_head (no bias) -> logits kept by the output -> ForCausalLMLoss on fp32 logits. The model's
    last hidden state `x` stays alive until the forward returns (a local of the *ForCausalLM.forward)."""
    x.forward_local = True  # type: ignore[attr-defined]  # read by timeline._Sim
    tr.module = "lm_head"
    logits = tr.linear(x, head_weight, vocab)
    tr.held.append(logits)
    tr.module = "loss"
    padded = tr.act(tr.batch_size * (tr.seq_len + 1), "int64", "padded_labels", "index")
    tr.record("pad", [labels], [padded])
    if tr.batch_size == 1:
        # labels[..., 1:] of a single row is already contiguous: the target is the padded tensor
        loss = tr.cross_entropy(logits, vocab, tr.seq_len, labels=padded)
    else:
        loss = tr.cross_entropy(logits, vocab, tr.batch_size * tr.seq_len)
        tr.ops[-2].inputs = (padded,)  # the shifted copy is made from the padded labels
    tr.held.append(loss)
