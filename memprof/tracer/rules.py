"""Operators PyTorch marks data-dependent that a rule makes traceable, while a trace runs.

FakeTensorMode refuses operators tagged `dynamic_output_shape` (their output shape depends on tensor
values). Where the shape is fixed by the arguments after all, the rule below gives it, scoped to the trace
(`shape_rules()`), and says in the record's warnings what it did:

- CTC loss with Python-int lengths. `aten::_ctc_loss` (the IntArrayRef overload) is tagged because its
  `log_alpha` output has `2 * max(target_lengths) + 1` columns; with the lengths as Python ints that
  maximum is known. aten/src/ATen/native/LossCTC.cpp (`ctc_loss_cpu_template`, and LossCTC.cu alike)
  allocates `neg_log_likelihood` of (batch,) and `log_alpha` of (batch, T, 2 * max_target_length + 1)
  in the log-probabilities' dtype; the backward (`ctc_loss_backward_cpu_template`) returns a gradient of
  the log-probabilities' shape (its `log_beta` scratch, allocated inside the kernel, is not seen by the
  profiler either). `F.ctc_loss` itself is a C++ composite (`ctc_loss_impl`) that builds a tensor from the
  length list, which fake tensors cannot hold; it runs here as the same steps in Python: targets to
  int64 on the log-probabilities' device, `_ctc_loss`, `where` for zero_infinity, and the reduction (mean:
  divided by `tensor(target_lengths).clamp_min(1)`, then `mean()`). Lengths given as tensors stay an
  error: their maximum is a value. On CUDA, PyTorch uses cuDNN's CTC only for int32 targets on the CPU
  with every input length equal to T (`_use_cudnn_ctc_loss`); the native kernel's tensors are traced.

- `torch._grouped_mm` in float32 / float16. Hugging Face mixture-of-experts models (mixtral, qwen3_moe in
  transformers 5.24) run their experts through it by default (`get_correct_experts_implementation` picks
  "grouped_mm"; integrations/moe.py `_grouped_mm` casts the tokens to the weights' dtype, since the op is
  not autocast-enabled). torch's meta kernel (torch/_meta_registrations.py `_meta_grouped_mm_common`)
  checks `mat_a.dtype == torch.bfloat16 and mat_b.dtype == torch.bfloat16` ("Expected inputs of BF16 type"),
  a check of the CUDA fast path, but the CPU kernel runs float32, bfloat16 and float16 ("Expected mat_a to
  be Float32, BFloat16 or Float16 matrix" for others): a real float32 `_grouped_mm` on the CPU returns the
  exact per-group products in a contiguous float32 output, and its backward is two more `_grouped_mm`
  calls (tests/test_tracer_moe.py). The rule gives the op, for float32 or float16 on both sides, the
  output the meta kernel itself builds (`_create_grouped_mm_output_tensor`: tokens x out for 2-D x 3-D,
  experts x M x N for 2-D x 2-D, in `out_dtype` or mat_a's dtype) after the meta kernel's shape checks;
  other dtypes keep torch's own meta kernel and its message.

- Mixture-of-experts routing, assumed balanced (`_Routing`). How many tokens each expert gets is a value of
  the router's output, which fake tensors do not have; when the experts come from `torch.topk` on fake
  scores, the indices get real values, a balanced round-robin, and what is computed from them only (one_hot,
  eq, where, nonzero, bincount, argsort, indexing, .tolist()) is computed for real beside the fake tensors.
  The peak is then that of a run whose router spreads the tokens evenly (a real router is not), and the
  record says so with the rows per expert. Masks of other values (`x[x > 0]`) stay an error naming the
  operator.

One rule makes a CPU trace run the kernel CUDA dispatches to, with `device="cuda"` only (`shape_rules(notes,
cuda=True)`):

- Dropout as CUDA runs it (`_CudaDropout`). `aten::dropout` is a composite whose kernel picks by device:
  aten/src/ATen/native/Dropout.cpp `dropout()` calls `at::native_dropout` when `train &&
  is_fused_kernel_acceptable(input, p)` (`input.is_cuda() || is_xpu() || ...`, `p > 0 && p < 1`,
  `input.sym_numel() > 0`), and otherwise `_dropout<false>`: a noise tensor of the input's dtype
  (`empty_like`, `bernoulli_`, `div_`) multiplied in, which autograd keeps for backward. CUDA's fused kernel
  keeps a bool mask instead (1 B per element; derivatives.yaml: `native_dropout_backward(grad, result1, ...)`).
  The CPU trace would keep the noise: the rule registers a Python kernel for aten::dropout at the AutogradCPU
  key (a kernel registered for that key wins over the CompositeImplicitAutograd one) that calls
  `aten::native_dropout` under that same condition and the composite's own kernel otherwise. Only the
  out-of-place `dropout`: `dropout_`, `feature_dropout`, `alpha_dropout` and `feature_alpha_dropout` (and
  their in-place forms) run `_dropout_impl` on every device, as the trace already does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch._C import DispatchKey
from torch._library.fake_impl import Kernel
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CTC_RULE", "DROPOUT_RULE", "GROUPED_MM_RULE", "shape_rules"]

CTC_RULE = (
    "CTC loss traced from its Python-int lengths: log_alpha of batch x T x (2 x max(target_lengths) + 1), "
    "as aten's CTC kernels allocate it (memprof.tracer.rules)"
)

GROUPED_MM_RULE = (
    "torch._grouped_mm (Hugging Face MoE experts) traced in {dtypes}: torch's meta kernel accepts bf16 only, "
    "the CPU kernel also runs float32 and float16; output shaped as the meta kernel builds it (memprof.tracer.rules)"
)


def _ints(lengths: Any) -> list[int] | None:
    if isinstance(lengths, torch.Tensor) or not isinstance(lengths, Sequence):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in lengths):
        return None
    return list(lengths)


def _ctc_forward(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: Sequence[int],
    target_lengths: Sequence[int],
    blank: int = 0,
    zero_infinity: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = log_probs.size(1) if log_probs.dim() == 3 else 1
    longest = max(target_lengths) if len(target_lengths) else 0
    return (
        log_probs.new_empty((batch,)),
        log_probs.new_empty((batch, log_probs.size(0), 2 * longest + 1)),
    )


def _ctc_backward(
    grad: torch.Tensor,
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: Sequence[int],
    target_lengths: Sequence[int],
    neg_log_likelihood: torch.Tensor,
    log_alpha: torch.Tensor,
    blank: int,
    zero_infinity: bool = False,
) -> torch.Tensor:
    return log_probs.new_empty(log_probs.shape)  # at::full_like(log_probs, -inf, contiguous)


class _Ctc:
    """The scoped rule: fake kernels for aten::_ctc_loss / _ctc_loss_backward and a Python F.ctc_loss."""

    def __init__(self) -> None:
        self.used = 0
        self._handles: list[Any] = []
        self._lib: Any = None
        self._original: Any = None

    def __enter__(self) -> _Ctc:
        registry = torch._library.simple_registry.singleton
        self._lib = torch.library.Library("aten", "IMPL")
        for name, kernel in (("aten::_ctc_loss", _ctc_forward), ("aten::_ctc_loss_backward", _ctc_backward)):
            holder = registry.find(name).fake_impl
            if holder.kernel is None:
                self._handles.append(holder.register(kernel, "memprof.tracer.rules", self._lib))
        self._original = original = torch.nn.functional.ctc_loss

        def ctc_loss(
            log_probs: torch.Tensor,
            targets: torch.Tensor,
            input_lengths: Any,
            target_lengths: Any,
            blank: int = 0,
            reduction: str = "mean",
            zero_infinity: bool = False,
        ) -> torch.Tensor:
            ins, outs = _ints(input_lengths), _ints(target_lengths)
            if ins is None or outs is None or reduction not in ("mean", "sum", "none"):
                return original(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity)
            self.used += 1
            batched = log_probs.dim() == 3
            lp = log_probs if batched else log_probs.unsqueeze(1)
            res = torch.ops.aten._ctc_loss(lp, targets.to(lp.device, torch.long), ins, outs, blank, zero_infinity)[0]
            if zero_infinity:
                res = torch.where(res == math.inf, torch.zeros((), dtype=res.dtype, device=res.device), res)
            if reduction == "mean":
                lengths = torch.tensor(outs, dtype=res.dtype, device=res.device).clamp_min(1)
                return (res / lengths).mean()
            if reduction == "sum":
                return res.sum()
            return res if batched else res.squeeze(0)

        torch.nn.functional.ctc_loss = ctc_loss
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.nn.functional.ctc_loss = self._original
        for handle in self._handles:
            handle.destroy()
        self._handles.clear()
        if self._lib is not None:
            self._lib._destroy()
            self._lib = None


class _GroupedMm:
    """The scoped rule: a fake kernel for aten::_grouped_mm that lets float32 and float16 through."""

    def __init__(self) -> None:
        self.dtypes: set[str] = set()
        self._holder: Any = None
        self._kernel: Any = None

    def _fake(
        self,
        mat_a: torch.Tensor,
        mat_b: torch.Tensor,
        offs: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        from torch._meta_registrations import _create_grouped_mm_output_tensor, meta_grouped_mm

        dtype = mat_a.dtype
        if dtype not in (torch.float32, torch.float16) or mat_b.dtype != dtype:
            return meta_grouped_mm(mat_a, mat_b, offs, bias, out_dtype)  # torch's own checks and message
        torch._check(mat_a.dim() in (2, 3) and mat_b.dim() in (2, 3), lambda: "Multiplicands must be 2D or 3D")
        if mat_a.dim() == 3 or mat_b.dim() == 3:
            torch._check(
                mat_a.size(-1) == mat_b.size(-2), lambda: "contraction dimension of mat_a and mat_b must match"
            )
        if mat_a.dim() == 2 or mat_b.dim() == 2:
            torch._check(offs is not None and offs.dim() == 1 and offs.dtype == torch.int32, lambda: "offs: 1-D int32")
        else:
            torch._check(offs is None, lambda: "Offsets tensor provided, but is not needed for 3D/3D multiplicands.")
        torch._check(bias is None, lambda: "Bias tensor provided, but it is not supported yet.")
        torch._check(out_dtype in (None, dtype), lambda: "out_dtype: the inputs' dtype")
        self.dtypes.add(str(out_dtype or dtype).removeprefix("torch."))
        return _create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype)

    def __enter__(self) -> _GroupedMm:
        # Only FakeTensorMode's table of fake kernels (simple_registry, read before the Meta kernel runs:
        # fake_tensor.py `_dispatch_impl`); `register()` would also override the dispatcher's Meta
        # kernel, which torch's Python meta registration does not get back when the override is removed.
        self._holder = holder = torch._library.simple_registry.singleton.find("aten::_grouped_mm").fake_impl
        if holder.kernel is None:
            self._kernel = Kernel(self._fake, "memprof.tracer.rules")
            holder.kernels.append(self._kernel)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._kernel is not None:
            self._holder.kernels.remove(self._kernel)
            self._kernel = None
            # FakeTensorMode's dispatch cache is class-wide: outputs cached while the rule ran would
            # outlive it (fake_tensor.py `_DispatchCacheKey.key` starts with the operator)
            cache = FakeTensorMode.cache
            for key in [k for k in cache if k.key and k.key[0] is torch.ops.aten._grouped_mm.default]:
                del cache[key]


DROPOUT_RULE = (
    "dropout as CUDA runs it: {calls} aten::dropout call(s) in training with 0 < p < 1 ran aten::native_dropout, "
    "which keeps a bool mask for backward (CUDA's fused kernel, Dropout.cpp is_fused_kernel_acceptable) "
    "where the CPU composite keeps a noise tensor of the input's dtype (memprof.tracer.rules)"
)


class _CudaDropout:
    """The scoped rule: aten::dropout at the AutogradCPU key runs aten::native_dropout where CUDA does
    (module docstring); `calls` counts the calls routed."""

    def __init__(self) -> None:
        self.calls = 0
        self._lib: Any = None

    def _dropout(self, input: torch.Tensor, p: float, train: bool) -> torch.Tensor:
        if train and 0 < p < 1 and input.numel() > 0:  # is_fused_kernel_acceptable, for a CUDA input
            self.calls += 1
            return torch.ops.aten.native_dropout.default(input, p, train)[0]
        # the composite's own C++ kernel (`_dropout<false>`), not torch's Python decomposition of it
        return torch.ops.aten.dropout.default._op_dk(DispatchKey.CompositeImplicitAutograd, input, p, train)

    def __enter__(self) -> _CudaDropout:
        self._lib = torch.library.Library("aten", "IMPL")
        self._lib.impl("dropout", self._dropout, "AutogradCPU")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lib is not None:
            self._lib._destroy()  # the dispatcher drops the kernel: the composite runs again
            self._lib = None


ROUTING_RULE = (
    "routing assumed balanced: the indices of {calls} torch.topk call(s) on fake scores were given real values, "
    "round-robin (row r picks experts (r*k + j) mod E), so each of the {experts} experts received {per_expert} "
    "rows per call; the integer and boolean tensors computed from them (one_hot, eq, where, nonzero, bincount, "
    "indexing) were computed for real beside the fake ones (memprof.tracer.rules)"
)
SHADOW_LIMIT = 1 << 22  # elements (32 MiB of int64): a tensor with real values beyond this is not followed


_SHADOW = "_memprof_real"  # the attribute of a fake tensor holding its real value (lives as long as it)


def _real(t: Any) -> Any:
    """The real value beside fake tensor `t`: the rule's, or the constant FakeTensorMode keeps for a
    one-element tensor made from a Python number."""
    real = getattr(t, _SHADOW, None)
    if real is None:
        real = getattr(t, "constant", None)
    return real


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _set(t: torch.Tensor, real: Any) -> None:
    setattr(t, _SHADOW, real)


def _drop(t: Any) -> None:
    if isinstance(t, torch.Tensor) and _SHADOW in t.__dict__:
        delattr(t, _SHADOW)


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(b for b in a if isinstance(b, torch.Tensor))
    return out


class _Routing(TorchDispatchMode):
    """The balanced-routing rule. The indices `torch.topk` returns on fake scores (a router's choice of
    experts) get real values, a balanced round-robin: row r picks experts (r*k + j) mod E, j = 0..k-1, so
    every expert receives rows x k / E of them. Small tensors computed only from real values are computed
    for real beside the fake ones (an attribute of the fake tensor), so the operators whose output
    shape is a value (nonzero, torch.where(mask), boolean indexing, bincount, .tolist()) get the shape a
    real run has under the same routing:

    - an operator whose tensor arguments all have real values (or none, for arange / zeros / full) runs
      for real beside the fake one; the fake output (storage, views, in-place writes) is the fake kernel's,
      except for operators tagged dynamic_output_shape, whose fake output is a new tensor of the real
      output's size, strides and storage bytes (what the CPU kernel returned);
    - indexing a fake tensor with a boolean mask that has real values (`x[mask]`, `x[mask] += y`, and their
      backward) runs as ATen runs it: the mask becomes its `nonzero()` columns
      (aten/src/ATen/native/IndexingUtils.h `expandTensors`), given as fake long tensors;
    - `.item()` / `.tolist()` of a tensor with real values reads them; an in-place operator writing a fake
      value into a tensor with real values drops them, and outputs beyond SHADOW_LIMIT elements have none.
    `used` counts the operators whose shape or value came from the real values: the rule is named in the
    record only when it decided something."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.used = 0
        self.rows: set[int] = set()  # rows an expert received in one topk call
        self.experts: set[int] = set()
        self.stale: set[int] = set()  # storages a fake value was written into: their real values are gone

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not self.calls and func is not _TOPK:
            return func(*args, **kwargs)
        tensors = _tensors(args, kwargs)
        if not tensors:
            return self._both(func, args, kwargs) if func.overloadpacket in _FACTORIES else func(*args, **kwargs)
        reals = [_real(t) for t in tensors]
        if self.stale:
            reals = [None if r is not None and _storage(t) in self.stale else r for t, r in zip(tensors, reals)]
        if func is _TOPK and reals[0] is None:
            return self._topk(func, args, kwargs)
        if all(r is None for r in reals):
            return func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.used += 1
            with unset_fake_temporarily():
                return reals[0].item()
        if all(r is not None for r in reals):
            return self._both(func, args, kwargs)
        if func in _INDEX_OPS:
            return func(*self._long_indices(args), **kwargs)
        for i, arg in enumerate(func._schema.arguments):  # a fake value written into a real one (or its view)
            if arg.alias_info is not None and arg.alias_info.is_write:
                target = args[i] if i < len(args) else kwargs.get(arg.name)
                if isinstance(target, torch.Tensor):
                    _drop(target)
                    self.stale.add(_storage(target))
        return func(*args, **kwargs)

    def _topk(self, func: Any, args: tuple, kwargs: dict) -> Any:
        values, indices = func(*args, **kwargs)
        scores = args[0]
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        if scores.dim() == 0 or dim not in (-1, scores.dim() - 1) or indices.numel() > SHADOW_LIMIT:
            return values, indices
        experts = scores.size(-1)
        with unset_fake_temporarily():
            real = (torch.arange(indices.numel(), dtype=torch.long) % experts).reshape(indices.shape)
        _set(indices, real)
        self.calls += 1
        self.experts.add(experts)
        rows, spare = divmod(indices.numel(), experts)  # round-robin: `spare` experts get one row more
        self.rows.update({rows, rows + 1} if spare else {rows})
        return values, indices

    def _both(self, func: Any, args: tuple, kwargs: dict) -> Any:
        dynamic = torch.Tag.dynamic_output_shape in func.tags
        out = None if dynamic else func(*args, **kwargs)
        if out is not None:
            fakes = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            if any(t.numel() > SHADOW_LIMIT for t in fakes):
                for t in fakes:
                    _drop(t)
                return out

        def real_of(x: Any) -> Any:
            return _real(x) if isinstance(x, torch.Tensor) else x

        real_args, real_kwargs = torch.utils._pytree.tree_map(real_of, (args, kwargs))
        with unset_fake_temporarily():
            real_out = func(*real_args, **real_kwargs)
        if dynamic:
            self.used += 1
            out = self._like(real_out)
        fakes = torch.utils._pytree.tree_leaves(out)
        trues = torch.utils._pytree.tree_leaves(real_out)
        for fake, true in zip(fakes, trues):
            if isinstance(fake, torch.Tensor) and isinstance(true, torch.Tensor):
                if fake.shape == true.shape and true.numel() <= SHADOW_LIMIT:
                    _set(fake, true)
                else:
                    _drop(fake)
        return out

    @staticmethod
    def _like(real_out: Any) -> Any:
        def fake_of(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return t
            elements = t.untyped_storage().nbytes() // t.element_size()
            return torch.empty(elements, dtype=t.dtype).as_strided(t.shape, t.stride(), t.storage_offset())

        return torch.utils._pytree.tree_map(fake_of, real_out)

    def _long_indices(self, args: tuple) -> tuple:
        """`x[mask]` as ATen runs it: a boolean index with real values becomes its nonzero() columns."""
        out: list[Any] = []
        for index in args[1]:
            real = _real(index) if isinstance(index, torch.Tensor) else None
            if real is not None and real.dtype in (torch.bool, torch.uint8):
                self.used += 1
                with unset_fake_temporarily():
                    columns = [c.clone() for c in real.nonzero().unbind(1)]
                for column in columns:
                    fake = index.fake_mode.from_tensor(column)
                    _set(fake, column)
                    out.append(fake)
            else:
                out.append(index)
        return (args[0], out, *args[2:])


_TOPK = torch.ops.aten.topk.default
_FACTORIES = {
    torch.ops.aten.arange,
    torch.ops.aten.zeros,
    torch.ops.aten.ones,
    torch.ops.aten.full,
    torch.ops.aten.scalar_tensor,
}
_INDEX_OPS = (
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
)


@contextlib.contextmanager
def shape_rules(notes: list[str], cuda: bool = False) -> Iterator[None]:
    """Apply the rules while a trace runs; the ones used are appended to `notes` (the record's warnings).
    cuda: the trace models a CUDA device (the dropout rule applies)."""
    routing = _Routing()
    dropout = _CudaDropout()
    with _Ctc() as ctc, _GroupedMm() as grouped, routing, dropout if cuda else contextlib.nullcontext():
        yield
    if dropout.calls:
        notes.append(DROPOUT_RULE.format(calls=dropout.calls))
    if ctc.used:
        notes.append(CTC_RULE)
    if grouped.dtypes:
        notes.append(GROUPED_MM_RULE.format(dtypes=", ".join(sorted(grouped.dtypes))))
    if routing.calls and routing.used:
        per = sorted(routing.rows)
        notes.append(
            ROUTING_RULE.format(
                calls=routing.calls,
                experts="/".join(str(e) for e in sorted(routing.experts)),
                per_expert=per[0] if len(per) == 1 else f"{per[0]} to {per[-1]}",
            )
        )
