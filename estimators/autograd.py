"""The per-operation vocabulary: what each operation allocates and what autograd saves for backward.

A family module (memprof.estimators.families: gpt2.py, llama.py, ...) replays a model's forward as a
sequence of these operations on `T` handles (element count and dtype, no data). Each operation records
its inputs, outputs and the tensors autograd keeps for backward, following torch's derivatives.yaml and
the kernels PyTorch picks:

- linear / addmm / mm saves its input and its weight; the weight is the parameter itself (no new
  memory) unless autocast made a low-precision copy, which is then saved (and cached per forward);
- layer_norm saves its input, mean and rstd (one per row; fp32 on CUDA and for mixed dtypes, the
  input dtype on the CPU when input and weight agree); embedding saves its int64 indices;
- softmax, tanh, relu save their output; gelu (fused), silu, pow save their input;
- mul saves each operand the other needs for its gradient; add, views and reshapes save nothing;
- dropout saves a mask only: on CUDA `native_dropout` keeps a bool mask (1 byte per element); on the
  CPU `torch.nn.functional.dropout` runs `input * noise` and keeps the noise in the input's dtype;
- scaled_dot_product_attention saves q, k, v, its output and a fp32 log-sum-exp (flash and
  memory-efficient kernels), or, with the math backend, every tensor of the decomposition;
- cross_entropy = log_softmax (saves its output, fp32 when upcast or under autocast) + nll_loss
  (saves the int64 targets and a scalar weight);
- under autocast, linear/matmul/sdpa/conv inputs are cast to the compute dtype: activations on every
  call (three projections of one input make three copies), weights once per forward;
- under CUDA autocast (device "cuda"), its own op lists (memprof.estimators.autocast) also apply: ops
  on the fp32 lists get float32 copies of 16-bit inputs and save those (layer_norm, pow, nll_loss),
  softmax without a dtype runs with dtype=float32, and cross_entropy decomposes into a 16-bit
  log_softmax plus an fp32 nll_loss; CPU autocast (device "cpu") keeps its own, different table.

The `Trace` keeps these records in execution order; `saved_tensors` and the timeline read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .dtypes import dtype_bytes

# A checkpointed region: a layer index (full checkpointing) or ("core", layer) (selective).
Region = int | tuple[str, int]


@dataclass(eq=False)
class T:
    """One tensor of the replayed forward (storage identity is object identity)."""

    numel: int
    dtype: str
    name: str
    kind: str = "act"  # "act" (activation), "param", "const" (no grad), "index" (integer)
    layer: int | None = None
    contig: bool = False  # known to be contiguous (a matmul can use it without a copy)
    is_input: bool = False  # part of the batch handed to the model
    grad: bool = True  # False: autograd does not track it (a frozen weight, or computed from frozen ones only)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)

    @property
    def requires_grad(self) -> bool:
        return self.kind in ("act", "param") and self.grad


@dataclass(eq=False)
class Op:
    """One executed operation: what it read, what it allocated, what autograd kept for backward."""

    op: str
    module: str
    layer: int | None
    inputs: tuple[T, ...]
    outputs: tuple[T, ...]
    saved: tuple[tuple[str, T], ...]
    core: bool = False  # part of the attention core (recomputed by selective checkpointing)
    region: Region | None = None  # checkpoint region it belongs to (set by build_trace)
    backward_scratch: int = 0  # bytes its backward allocates and frees within itself (a dequantized weight)


_HALF_DTYPES = ("float16", "bfloat16")
# the replay's elementwise op names -> the aten overload CUDA autocast sees (x ** 3 is pow.Tensor_Scalar)
_ATEN_UNARY = {"pow": "aten::pow.Tensor_Scalar"}


def promote(*dtypes: str) -> str:
    """Type promotion between floating dtypes (fp32 wins over the 16-bit types)."""
    ds = set(dtypes)
    if len(ds) == 1:
        return dtypes[0]
    for d in ("float64", "float32"):
        if d in ds:
            return d
    return "float32"  # bfloat16 with float16 promotes to float32


@dataclass
class Trace:
    """The replay of one forward pass under given settings."""

    batch_size: int
    seq_len: int
    param_dtype: str
    compute_dtype: str
    autocast: bool
    device: str
    training: bool
    ops: list[Op] = field(default_factory=list)
    held: list[T] = field(default_factory=list)  # kept by the caller: batch, logits, kv cache, loss (last)
    params: dict[str, T] = field(default_factory=dict)
    buffers: dict[str, int] = field(default_factory=dict)  # module buffers: name -> bytes
    weight_casts: dict[str, T] = field(default_factory=dict)  # autocast weight cache, per forward
    layer: int | None = None
    module: str = ""
    core: bool = False
    checkpointing: str = "none"
    sharded_params: bool = False  # ZeRO-3 / FSDP full-shard: weights are gathered per layer (see lowp)
    # adapters (memprof.estimators.adapters): frozen base weights, LoRA branches, quantized linears;
    # None: full training, every parameter trainable
    adapter: Any = None
    linears: list[Any] = field(default_factory=list)  # the Linear descriptors run through families._trace.linear
    attention: str = "sdpa"  # transformers' attn_implementation (a family's masks depend on it)
    target_len: int | None = None  # encoder-decoder: the decoder's length (None: seq_len)

    # -- tensors ------------------------------------------------------------------------------
    def act(self, numel: int, dtype: str, name: str, kind: str = "act") -> T:
        return T(numel, dtype, name, kind, self.layer)

    def param(self, name: str, numel: int, dtype: str | None = None, trainable: bool | None = None) -> T:
        """The parameter `name` (one handle per name, so a tied weight is one tensor); `dtype` None:
        the training precision's parameter dtype; `trainable` None: frozen when an adapter freezes
        the base model, else trainable."""
        if name not in self.params:
            if trainable is None:
                trainable = self.adapter is None
            self.params[name] = T(numel, dtype or self.param_dtype, name, "param", None, grad=trainable)
        return self.params[name]

    def buffer(self, name: str, numel: int, dtype: str) -> None:
        """A registered module buffer (resident like a parameter, no gradient)."""
        self.buffers[name] = numel * dtype_bytes(dtype)

    def inputs(self, *tensors: T) -> None:
        """The batch handed to the model: it exists before forward and the loop keeps it."""
        for t in tensors:
            t.is_input = True
        self.held += list(tensors)
        self.record("inputs", [], list(tensors))

    def record(self, op: str, inputs: Sequence[T], outputs: Sequence[T], saved: Sequence[tuple[str, T]] = ()) -> None:
        if self.adapter is not None and inputs and not any(t.requires_grad for t in inputs):
            # no input requires grad (frozen weights, inputs computed from them): autograd records
            # no node, saves nothing, and the outputs do not require grad either
            for t in outputs:
                t.grad = False
            saved = ()
        self.ops.append(Op(op, self.module, self.layer, tuple(inputs), tuple(outputs), tuple(saved), core=self.core))

    # -- autocast -----------------------------------------------------------------------------
    def lowp(self, x: T) -> T:
        """The input of an autocast lower-precision op (matmul, linear, sdpa): a copy if needed.

        Activations are cast on every call; leaf parameters are cast once per forward (autocast's
        weight cache), which is why a tied weight is copied only once.
        """
        if not self.autocast or x.dtype == self.compute_dtype or x.kind == "index":
            return x
        if x.kind == "param" and not x.grad:
            # autocast caches only casts of leaves that require grad (torch/csrc/autograd/autocast_mode.cpp,
            # cached_cast): a frozen weight is cast again on every call
            c = T(x.numel, self.compute_dtype, x.name + "@" + self.compute_dtype, "const", self.layer)
            self.record("to_copy", [x], [c])
            return c
        if x.kind == "param":
            if self.sharded_params:
                # the gathered full weight (and its cast) lives for its layer only and is gathered
                # again in backward: FSDP/ZeRO-3 free it even while autograd refers to it, so the
                # cast neither stays in autocast's cache nor counts as saved (the gathered layers
                # are a buffer of the estimate)
                return T(x.numel, self.compute_dtype, x.name, "param", None)
            if x.name not in self.weight_casts:
                c = T(x.numel, self.compute_dtype, x.name + "@" + self.compute_dtype, "act", self.layer)
                self.weight_casts[x.name] = c
                self.record("to_copy", [x], [c])
            return self.weight_casts[x.name]
        return self.to(x, self.compute_dtype)

    @property
    def cuda_autocast(self) -> bool:
        """CUDA autocast's op lists apply (estimators/autocast.py), not CPU autocast's."""
        return self.autocast and self.device == "cuda"

    def fp32_input(self, aten_op: str, x: T) -> T:
        """x as CUDA autocast hands it to `aten_op`: a float32 copy of a 16-bit x when the op is on
        one of its fp32 lists (layer_norm, pow, rsqrt, nll_loss, ...: autocast_mode.cpp's
        `fp32` policy, cached_cast to float32, never cached). Unchanged under CPU autocast (its
        lists differ: tests/test_autocast.py) and for every other op."""
        if not self.cuda_autocast or x.kind == "index" or x.dtype not in _HALF_DTYPES:
            return x
        from .autocast import cast_policy

        if cast_policy(aten_op) in ("fp32", "fp32_append_dtype"):
            return self.to(x, "float32")
        return x

    def to(self, x: T, dtype: str) -> T:
        if x.dtype == dtype:
            return x
        y = self.act(x.numel, dtype, x.name + "." + dtype, x.kind)
        y.contig = getattr(x, "contig", False)  # .to() preserves the memory layout
        self.record("to_copy", [x], [y])
        return y

    # -- operations ---------------------------------------------------------------------------
    def embedding(self, weight: T, indices: T, dim: int) -> T:
        out = self.act(indices.numel * dim, weight.dtype, "embedding")
        self.record("embedding", [weight, indices], [out], [("indices", indices)])
        if self.adapter is not None and indices.is_input and self.adapter.input_requires_grad(self):
            out.grad = True  # PreTrainedModel.enable_input_require_grads: a hook sets requires_grad on the output
        return out

    def linear(self, x: T, weight: T, out_features: int, bias: T | None = None) -> T:
        xi, wi = self.lowp(x), self.lowp(weight)
        if bias is not None:
            bias = self.lowp(bias)
        rows = x.numel // (weight.numel // out_features)
        out = self.act(rows * out_features, xi.dtype if self.autocast else promote(x.dtype, weight.dtype), "linear")
        # mm / addmm save each operand only for the other's gradient (torchgen's saved-variable
        # guards, `grad_fn->should_compute_output`): a frozen weight's linear keeps no input
        saved = [("input", xi)] if weight.requires_grad else []
        if wi.kind != "param" and x.requires_grad:
            saved.append(("weight", wi))
        ins = [xi, wi] + ([bias] if bias is not None else [])
        self.record("linear", ins, [out], saved)
        return out

    def matmul(self, a: T, b: T, out_numel: int, autocast: bool = True) -> T:
        """A batched matmul of two activations (both saved). autocast=False inside composite
        kernels (sdpa's math backend), where autocast no longer applies."""
        if autocast:
            a, b = self.lowp(a), self.lowp(b)
        out = self.act(out_numel, promote(a.dtype, b.dtype), "matmul")
        # bmm keeps each operand for the other's gradient only (as linear does)
        saved = ([("self", a)] if b.requires_grad else []) + ([("mat2", b)] if a.requires_grad else [])
        self.record("matmul", [a, b], [out], saved)
        return out

    def copy(self, x: T, name: str = "contiguous") -> T:
        """A materialised view (reshape/contiguous/repeat of a non-contiguous tensor)."""
        y = self.act(x.numel, x.dtype, name, x.kind)
        self.record("copy", [x], [y])
        return y

    def cast(self, x: T, dtype: str, numel: int, force: bool = False, name: str = "") -> T:
        """x.to(dtype) of a `numel`-element view of x (no copy when nothing changes, unless forced)."""
        if x.dtype == dtype and not force:
            return x  # .to() of the same dtype is a no-op (views stay views)
        y = self.act(numel, dtype, name or x.name + "." + dtype, x.kind)
        # .to() keeps the strides of a dense tensor; a slice (not dense) comes out contiguous
        y.contig = getattr(x, "contig", False) if x.numel == numel else True
        self.record("to_copy", [x], [y])
        return y

    def contiguous(self, x: T, numel: int) -> T:
        """A matmul operand: a fresh contiguous copy unless it already is one (marked `contig`).

        `numel` is the operand's size, smaller than x's storage when x is a slice (q of a fused qkv)."""
        if getattr(x, "contig", False) and x.numel == numel:
            return x
        y = self.act(numel, x.dtype, x.name + ".contiguous", x.kind)
        y.contig = True
        self.record("copy", [x], [y])
        return y

    def expand_copy(self, x: T, numel: int, name: str) -> T:
        y = self.act(numel, x.dtype, name, x.kind)
        y.contig = True
        self.record("copy", [x], [y])
        return y

    def add(self, a: T, b: T) -> T:
        out = self.act(max(a.numel, b.numel), promote(a.dtype, b.dtype), "add")
        self.record("add", [a, b], [out])
        return out

    def mul(self, a: T, b: T) -> T:
        out = self.act(max(a.numel, b.numel), promote(a.dtype, b.dtype), "mul")
        saved: list[tuple[str, T]] = []
        if b.requires_grad:
            saved.append(("self", a))
        if a.requires_grad:
            saved.append(("other", b))
        self.record("mul", [a, b], [out], saved)
        return out

    def scale(self, x: T, name: str = "mul_scalar", numel: int | None = None) -> T:
        """x * python scalar (or + scalar): a new tensor, nothing saved."""
        out = self.act(numel or x.numel, x.dtype, name)
        self.record(name, [x], [out])
        return out

    def unary(self, op: str, x: T, saves: str) -> T:
        """Elementwise op saving its input ("self"), its output ("result") or nothing ("").

        Under CUDA autocast an op of its fp32 list (pow, rsqrt, exp, ...) runs on a float32 copy of a
        16-bit input, which is then what it saves (`fp32_input`)."""
        x = self.fp32_input(_ATEN_UNARY.get(op, "aten::" + op), x)
        out = self.act(x.numel, x.dtype, op)
        saved = [("self", x)] if saves == "self" else [("result", out)] if saves == "result" else []
        self.record(op, [x], [out], saved)
        return out

    def dropout(self, x: T, p: float) -> T:
        if not self.training or p <= 0:
            return x
        out = self.act(x.numel, x.dtype, "dropout")
        if self.device == "cpu":
            mask = self.act(x.numel, x.dtype, "dropout_noise", "const")
        else:
            mask = self.act(x.numel, "bool", "dropout_mask", "const")
        self.record("dropout", [x], [out, mask], [("mask", mask)])
        return out

    def layer_norm(self, x: T, hidden: int, weight: T, bias: T | None) -> T:
        x = self.fp32_input("aten::layer_norm", x)  # CUDA autocast: layer_norm is on its fp32 list
        rows = x.numel // hidden
        # mean/rstd: CUDA keeps them in the accumulation type (fp32 for 16-bit inputs); the CPU
        # kernel keeps the input dtype when weight and input agree, fp32 when they are mixed
        if x.dtype in ("float32", "float64") or (self.device == "cpu" and weight.dtype == x.dtype):
            stats_dtype = x.dtype
        else:
            stats_dtype = "float32"
        out = self.act(x.numel, x.dtype, "layer_norm")
        mean = self.act(rows, stats_dtype, "ln_mean", "const")
        rstd = self.act(rows, stats_dtype, "ln_rstd", "const")
        ins = [x, weight] + ([bias] if bias is not None else [])
        self.record("layer_norm", ins, [out, mean, rstd], [("input", x), ("mean", mean), ("rstd", rstd)])
        return out

    def softmax(self, x: T, dtype: str | None = None) -> T:
        """softmax(x, dtype=...): the input is cast first (a copy whose gradient is cast back in
        backward), except on CUDA from float16 to float32, which the kernel converts inside
        (aten/src/ATen/native/SoftMax.cpp, softmax: `input_.is_cuda() && input_.scalar_type() ==
        ScalarType::Half && dtype == ScalarType::Float`; bfloat16 takes the toType copy).

        CUDA autocast runs softmax.int as fp32_set_opt_dtype: with no dtype given, a 16-bit input
        is softmaxed with dtype=float32, so the output autograd saves is float32."""
        if dtype is None and self.cuda_autocast and x.dtype in _HALF_DTYPES:
            dtype = "float32"
        in_kernel = self.device == "cuda" and x.dtype == "float16" and dtype == "float32"
        if dtype and dtype != x.dtype and not in_kernel:
            x = self.to(x, dtype)
        out = self.act(x.numel, dtype or x.dtype, "softmax")
        self.record("softmax", [x], [out], [("result", out)])
        return out

    def sdpa_fused(self, q: T, k: T, v: T, out_numel: int, heads: int, kernel: str, mask: T | None = None) -> T:
        """Flash / memory-efficient attention: keeps q, k, v, the output and a fp32 log-sum-exp.

        mask: a boolean (b, 1, s, s) attn_mask (a view of `mask`'s storage): scaled_dot_product_attention
        turns it into a float mask of the query's dtype (convert_boolean_attn_mask: logical_not, then
        where), which the kernel saves for backward."""
        q, k, v = self.lowp(q), self.lowp(k), self.lowp(v)
        float_mask = None
        if mask is not None:
            n = self.batch_size * self.seq_len * self.seq_len
            inverted = self.act(n, "bool", "mask_not", "const")
            self.record("logical_not", [mask], [inverted])
            float_mask = self.act(n, q.dtype, "float_attn_mask", "const")
            self.record("where", [inverted], [float_mask])
        out = self.act(out_numel, q.dtype, "sdpa_out")
        rows = self.batch_size * heads * self.seq_len
        if kernel == "efficient":  # CUDA mem-efficient pads the lse rows to a multiple of 32
            rows = self.batch_size * heads * (-(-self.seq_len // 32) * 32)
        lse = self.act(rows, "float32", "logsumexp", "const")
        outs, saved = [out, lse], [("query", q), ("key", k), ("value", v), ("output", out), ("logsumexp", lse)]
        if float_mask is not None:
            saved.append(("attn_mask", float_mask))
        if self.device != "cpu":  # philox seed and offset
            rng = self.act(2, "int64", "philox", "index")
            outs.append(rng)
            saved.append(("philox", rng))
        self.record("sdpa_" + kernel, [q, k, v] + ([float_mask] if float_mask is not None else []), outs, saved)
        if self.device == "cpu" and getattr(q, "contig", False):
            # the CPU kernel lays its output out like q: a contiguous (b, h, s, d) q gives an output
            # whose transpose(1, 2).contiguous() is a copy; a (b, s, h, d)-strided q's is a view
            out = self.copy(out, "attn_out")
        return out

    def cross_entropy(self, logits: T, vocab: int, rows: int, labels: T | None = None, upcast: bool = True) -> T:
        """cross_entropy: log_softmax (output saved) + nll_loss (int64 targets and a scalar weight).

        upcast: the caller runs it on logits.float() (transformers' causal-LM and masked-LM loss
        functions); otherwise it runs in the logits' dtype, except under autocast. CPU autocast has
        cross_entropy_loss on its fp32 list: the logits are cast, everything runs in fp32. CUDA
        autocast does not list it: it decomposes (aten/src/ATen/native/LossNLL.cpp,
        cross_entropy_loss: `at::log_softmax(self, class_dim, self.scalar_type())`, a dtype given, so
        log_softmax stays in the logits' dtype and saves that), then nll_loss, on the fp32 list,
        gets a float32 copy of the log-probabilities, which it saves as `self`. labels: the caller's
        targets as they are; None: a new (shifted) target tensor."""
        cuda_split = self.cuda_autocast and not upcast
        dtype = logits.dtype if cuda_split or not (upcast or self.autocast) else "float32"
        x = self.to(logits, dtype)
        logp = self.act(x.numel, dtype, "log_softmax")
        self.record("log_softmax", [x], [logp], [("result", logp)])
        nll_in = self.fp32_input("aten::nll_loss", logp) if cuda_split else logp
        dtype = nll_in.dtype
        target = labels
        if target is None:
            target = self.act(rows, "int64", "shift_labels", "index")
            self.record("labels", [], [target])
        total_weight = self.act(1, dtype, "total_weight", "const")
        loss = self.act(1, dtype, "loss")
        saved = [("target", target), ("total_weight", total_weight)]
        if nll_in is not logp:
            saved.insert(0, ("self", nll_in))  # (nll_loss saves self; otherwise log_softmax's saved output)
        self.record("nll_loss", [nll_in, target], [loss, total_weight], saved)
        return loss
