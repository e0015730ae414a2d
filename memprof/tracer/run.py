"""One training step of the user's code on fake tensors, attributed by the profiler's tracker.

How it runs (all of it inside one `FakeTensorMode`, so no tensor memory is allocated):
1. the factory builds the workload (model, inputs, loss, optimizer); a Hugging Face model alone gets
   token inputs and labels (image inputs for ViT) of batch_size x seq_len;
2. precision: `*-true` casts the model and the floating inputs; `*-mixed` runs forward and loss
   under CPU `torch.autocast`;
3. the optimizer (the registry's real implementation over the parameters that require grad, or the
   workload's own) takes one step on zero gradients: its states are created by its own code, exactly
   as a first real step creates them (steady state: the measured step is a second step);
4. the measured step runs under `memprof.track` — the live profiler's session and `StorageTracker`
   (a TorchDispatchMode pushed above the fake mode: it sees every fake storage, its exact nbytes and
   its free through a weakref finalizer, as on a real run) — exactly:
       out = model(...); loss = loss_fn(out, inputs); loss.backward()
       optimizer.step(); optimizer.zero_grad(set_to_none=True)

Fake storages all live on the "meta" device, so the tracker keeps one book; its peak snapshot, phase
peaks, sampled timeline and allocation events are what the record is built from (memprof.tracer.api).

The trace runs on the CPU even for `device="cuda"`: this torch's fake CUDA tensors abort the process
in CUDA autocast and SDPA when torch has no CUDA build, so CUDA is modelled afterwards (allocator
replay, context) and the differences that are not are listed in the record's warnings.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
    unset_fake_temporarily,
)
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from memprof.estimators.errors import MemprofError, MemprofUserError, ParameterError, UserCodeError, unknown_name
from memprof.estimators.precision import Precision
from memprof.estimators.vocabulary import Category
from memprof.factory import call_factory
from memprof.profiler.api import track
from memprof.profiler.tracker import ACT, STATE, TEMP
from memprof.tracer.cuda_autocast import CudaAutocast
from memprof.tracer.optimizers import NOT_RUN, REAL_OPTIMIZERS, build_optimizers
from memprof.tracer.rules import shape_rules
from memprof.workload import Workload

__all__ = ["StepTrace", "hf_inputs", "trace_step"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_MAX_SEQ = 2048  # like the analytic estimate: the model's context, at most this


@dataclass
class StepTrace:
    """What one traced step leaves behind (plain data; the record is built from it)."""

    model_name: str
    parameters: int
    trainable_parameters: int
    param_dtype: str | None
    model_states: dict[str, int]
    optimizer_state_breakdown: dict[str, int]
    optimizer_class: str
    optimizer_impl: str | None
    peak_phase: str | None
    peak_allocated: int
    peak_by_category: dict[str, int]
    timeline: list[dict[str, Any]]
    events: list[tuple]
    activations_saved: int | None
    step_scratch: int | None  # temporaries created by optimizer.step(), live at the step's peak
    checkpointing: str | None  # "none" / "full" for a Hugging Face model; None: the model's own code
    batch_size: int | None
    seq_len: int | None
    attention: str | None
    attention_kernel: str | None  # "flash" when device cuda routed SDPA to it
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- user code


def _fake_error(exc: BaseException) -> str | None:
    """What a fake-tensor failure inside the user's code means, or None when it is something else."""
    if isinstance(exc, DynamicOutputShapeException):
        return (
            f"{exc.args[0] if exc.args else 'an operator'} has an output shape that depends on tensor values "
            "(nonzero, torch.where(mask), boolean indexing, unique on values computed from the model's tensors), "
            "which fake tensors do not have and no rule fixes (memprof.tracer.rules fixes MoE routing only when "
            "the experts come from torch.topk: it assumes balanced routing); measure this model with "
            "memprof.track (its run.compare() says the same)"
        )
    if isinstance(exc, DataDependentOutputException):
        return (
            f"it reads tensor values ({exc.args[0] if exc.args else 'aten._local_scalar_dense'}: .item(), "
            ".tolist(), int(t), a Python `if` on a tensor), which fake tensors do not have; "
            "compute such values from shapes or plain Python numbers"
        )
    if isinstance(exc, UnsupportedOperatorException):
        return (
            f"operator {exc.args[0] if exc.args else '?'} has no fake-tensor implementation "
            "(a custom C++/CUDA extension?); memprof cannot trace it: measure this model with memprof.track"
        )
    msg = str(exc)
    if "convert all Tensors to FakeTensors" in msg or "non-Fake Tensor" in msg:
        return (
            "it uses a real tensor created outside the factory (a module-level tensor, a tensor passed in "
            "from outside, or data loaded before memprof called the factory); create every tensor inside "
            "the factory so memprof builds it on fake tensors"
        )
    return None


@contextlib.contextmanager
def _user_code(where: str) -> Iterator[None]:
    """The user's code raising becomes one UserCodeError naming `where`, their exception type and message."""
    try:
        yield
    except MemprofError as exc:
        original = getattr(exc, "original", None)
        meaning = _fake_error(original) if original is not None else None
        if meaning is not None:
            raise UserCodeError(f"{where}: {meaning}", original) from None
        raise
    except Exception as exc:
        meaning = _fake_error(exc)
        if meaning is not None:
            raise UserCodeError(f"{where}: {meaning}", exc) from None
        raise UserCodeError(f"{where} raised {type(exc).__name__}: {exc}", exc) from None


@contextlib.contextmanager
def _swappable(mode: FakeTensorMode) -> Iterator[None]:
    """Let `Module.to()` / `.half()` run on fake parameters (peft and many scripts call them in the
    factory): `Module._apply` swaps fake parameters in place (torch.utils.swap_tensors), which fails
    while the fake mode's real-to-fake memo (MetaConverter, a WeakValueDictionary filled by e.g.
    nn.init.uniform_) holds a weak reference to the parameter. The memo only caches conversions of
    real tensors, which a trace has none of, so it is emptied and the swap retried."""
    original = torch.utils.swap_tensors

    def swap_tensors(t1: torch.Tensor, t2: torch.Tensor) -> None:
        try:
            return original(t1, t2)
        except RuntimeError as exc:
            if "weakref" not in str(exc):
                raise
            memo = mode.fake_tensor_converter.meta_converter
            memo.tensor_memo.clear()
            memo.storage_memo.clear()
            return original(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


class _QuietLogs:
    """FakeTensorMode logs a traceback when a meta kernel rejects the user's shapes (the user gets
    that error as one line, a UserCodeError); transformers logs notices about the model it builds.
    Neither is memprof's output. `again()` re-applies the level once the factory has imported
    transformers (its import resets its own logger's level)."""

    def __enter__(self) -> _QuietLogs:
        self.fake = logging.getLogger("torch._subclasses.fake_tensor")
        self.hf = logging.getLogger("transformers")
        self.before = self.fake.disabled, self.hf.level
        self.fake.disabled = True
        self.again()
        return self

    def again(self) -> None:
        self.hf.setLevel(max(self.hf.getEffectiveLevel(), logging.ERROR))

    def __exit__(self, *exc: Any) -> None:
        self.fake.disabled = self.before[0]
        self.hf.setLevel(self.before[1])


class _ScalarReads(TorchDispatchMode):
    """Inside the optimizer's own code (its construction and `step()`), reading a tensor's value
    (`.item()`: Adafactor's step count and norms, learning-rate tensors, bitsandbytes' quantization maps)
    gets a placeholder (1) instead of failing: a fake tensor has no
    value, and the optimizer's allocations depend on the shapes, not on these scalars. Anywhere
    else a value read stays an error the user is told about (their model or loss reads data).
    Scalars whose value torch itself knows read that value: FakeTensorMode keeps the real value of a
    one-element tensor made from a Python number (`torch.tensor(0.0)`: torch's `step` counters, NAdam's
    `mu_product`) and propagates it through the ops on such constants (fake_tensor.py, `FakeTensor.constant`,
    `CONSTANT_NUMEL_LIMIT`), so `step` reads the warm-up steps + 1 and NAdam's `1 - mu_product` is not 0.
    `reads` counts the placeholders, `known` the real values read."""

    def __init__(self) -> None:
        super().__init__()
        self.allow = False
        self.reads = 0
        self.known = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if self.allow and func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            constant = getattr(t, "constant", None)
            if constant is not None:
                self.known += 1
                with unset_fake_temporarily():  # the constant is a real tensor
                    return constant.item()
            self.reads += 1
            return True if t.dtype == torch.bool else (1.0 if t.is_floating_point() else 1)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _allowing(reads: _ScalarReads) -> Iterator[None]:
    """Push the mode only around optimizer steps: elsewhere it would cost a Python call per operator."""
    reads.allow = True
    try:
        with reads:
            yield
    finally:
        reads.allow = False


class _Attention:
    """On `device="cuda"`, `F.scaled_dot_product_attention` runs the kernel CUDA would pick.

    On the CPU, SDPA falls back to its math path whenever dropout is on (GPT-2 trains with attention
    dropout), which keeps the batch x heads x seq x seq scores for backward; on CUDA the flash, memory-
    efficient or cuDNN kernel runs and keeps q, k, v, the output and a log-sum-exp. While the trace runs,
    `torch.nn.functional.scaled_dot_product_attention` (looked up at call time by transformers and most
    models) asks `memprof.estimators.kernels.pick_attention_kernel` which backend PyTorch picks for the
    GPU, the dtype SDPA computes in (autocast's when it is on), the head size, the mask, dropout and
    causality, and runs that kernel's fake twin — fake tensors only compute the shapes of what it saves:
    - flash (and cuDNN, which saves the same output and per-row statistics): the CPU flash kernel,
      `aten._scaled_dot_product_flash_attention_for_cpu` (q, k, v, output, log-sum-exp of B x H x M);
    - memory-efficient: `aten._scaled_dot_product_efficient_attention` itself, whose meta kernel
      (torch/_meta_registrations.py) gives the log-sum-exp padded to a multiple of 32 rows, as CUDA's
      kernel allocates it (aten/src/ATen/native/transformers/cuda/attention.cu), and the philox seed
      and offset (host or meta scalars on CUDA, 8 B each here);
    - math: `aten._scaled_dot_product_attention_math`, which keeps the attention probabilities.
    Inputs the fused kernels take in other layouts (not 4-D, grouped-query heads on the memory-
    efficient kernel, a mask with it) keep the CPU choice; `kernels` counts the calls per kernel."""

    def __init__(self, cuda: bool, gpu: Any = None) -> None:
        self.cuda = cuda
        self.gpu = gpu if gpu is not None else (8, 0)  # as the record's BLAS workspace: an A100 unless told
        self.calls = 0  # SDPA calls seen
        self.used = 0  # of which routed to a CUDA kernel's twin
        self.kernels: dict[str, int] = {}
        self._original: Any = None

    def __enter__(self) -> _Attention:
        self._original = original = torch.nn.functional.scaled_dot_product_attention

        def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            out = self._cuda_kernel(*args, **kwargs) if self.cuda else None
            if out is None:
                return original(*args, **kwargs)
            self.used += 1
            return out

        torch.nn.functional.scaled_dot_product_attention = scaled_dot_product_attention
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.nn.functional.scaled_dot_product_attention = self._original

    @property
    def kernel(self) -> str | None:
        """The kernel most SDPA calls were routed to (None when none was)."""
        return max(self.kernels, key=lambda k: self.kernels[k]) if self.kernels else None

    def _cuda_kernel(
        self,
        query: Any,
        key: Any,
        value: Any,
        attn_mask: Any = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Any:
        from memprof.estimators.kernels import pick_attention_kernel

        if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (query, key, value)):
            return None
        gqa = query.size(1) != key.size(1)
        if gqa and not (enable_gqa and query.size(1) % key.size(1) == 0):
            return None  # SDPA itself rejects these shapes: let it say so
        if attn_mask is not None and is_causal:
            return None
        dtype = query.dtype
        if torch.is_autocast_enabled("cpu") and dtype == torch.float32:
            dtype = torch.get_autocast_dtype("cpu")  # SDPA is on autocast's lower-precision list
        dtype_name = str(dtype).removeprefix("torch.")
        if dtype_name not in ("float32", "float16", "bfloat16"):
            return None
        choice = pick_attention_kernel(
            self.gpu,
            dtype_name,
            int(query.size(-1)),
            head_dim_v=int(value.size(-1)),
            has_mask=attn_mask is not None,
            requires_grad=any(t.requires_grad for t in (query, key, value)),
            dropout=float(dropout_p),
            is_causal=bool(is_causal),
            seq_q=int(query.size(-2)),
            seq_k=int(key.size(-2)),
        )
        kernel = choice.kernel
        if kernel in ("flash", "cudnn"):
            # grouped-query heads (enable_gqa): CUDA's flash kernel reads the shared k, v without copies
            q, k, v = (t.to(dtype) for t in (query, key, value))
            out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
            )[0]
        elif kernel == "efficient":
            if gqa or attn_mask is not None:
                return None  # SDPA expands k, v and pads the mask to the kernel's alignment first
            q, k, v = (t.to(dtype) for t in (query, key, value))
            out = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True, dropout_p, is_causal, scale=scale
            )[0]
        elif kernel == "math":
            if gqa:
                return None
            q, k, v = (t.to(dtype) for t in (query, key, value))
            out = torch.ops.aten._scaled_dot_product_attention_math(
                q, k, v, attn_mask, dropout_p, is_causal, scale=scale
            )[0]
        else:
            return None
        self.kernels[kernel] = self.kernels.get(kernel, 0) + 1
        return out


RNN_WORKSPACE = (
    "recurrent layers (nn.LSTM / GRU / RNN): the kernel's own workspace is not traced (on the CPU oneDNN's "
    "mkldnn_rnn_layer keeps a training workspace its meta kernel gives 0 bytes; on CUDA cuDNN keeps a reserve "
    "buffer), so the traced step may be below a real one"
)


@dataclass
class HostStates:
    """Optimizer states a CUDA run keeps on the host (see _HostScalars): their storages' allocation ids
    in the tracker's book, and their bytes in total and by state key."""

    sids: set[int]
    bytes: int
    by_key: dict[str, int]

    def remove_from(self, tracker: Any, record: dict[str, Any]) -> None:
        """Take these storages out of the traced figures: they were live, unchanged in size, from the
        start of the measured step to its end (registered when the session began), so every peak and
        timeline point held exactly `bytes` of them under optimizer states."""
        n = self.bytes
        states = Category.OPTIMIZER_STATES.value
        record["model_states"][states] -= n
        breakdown = record["optimizer_state_breakdown"]
        for key, b in self.by_key.items():
            breakdown[key] -= b
            if not breakdown[key]:
                del breakdown[key]
        for book in tracker.books.values():
            snaps = {id(s): s for s in [book.peak, *book.phase_peaks.values(), *book.timeline]}
            for snap in snaps.values():
                take = min(n, snap.cats[STATE])
                snap.cats[STATE] -= take
                snap.total -= take
        tracker.events[:] = [e for e in tracker.events if e[1] not in self.sids]


class _HostScalars(TorchFunctionMode):
    """On `device="cuda"`, which optimizer states the real CUDA run keeps in host memory.

    torch keeps an optimizer's `step` counters (and NAdam's mu_product, ...) on the CPU unless the group
    is `capturable` or `fused`: torch/optim/adam.py `_init_group` creates them with
    `torch.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu")` ("special device hosting for step"),
    Adafactor, Adagrad, RMSprop, Rprop, NAdam, RAdam, Adamax and Adadelta with `torch.tensor(...)` /
    `torch.zeros(())` and no device, and with `device=p.device` when capturable or fused. The trace runs
    on the CPU, where both land on the same device, so while the optimizer creates its states this mode
    notes the 0-dim tensors created with no device or with the literal device "cpu" (`p.device` is a
    torch.device: a tensor placed beside its parameter), and `of()` finds those among the states."""

    _CREATORS = frozenset(("tensor", "zeros", "ones", "full", "empty", "as_tensor", "scalar_tensor"))

    def __init__(self, active: bool) -> None:
        super().__init__()
        self.active = active
        self._host: dict[int, Any] = {}  # id(storage) -> weakref to the storage

    def __enter__(self) -> _HostScalars:
        return super().__enter__() if self.active else self

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            super().__exit__(*exc)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (
            isinstance(out, torch.Tensor)
            and out.dim() == 0
            and getattr(func, "__name__", "") in self._CREATORS
            and not isinstance(getattr(func, "__self__", None), torch.Tensor)
        ):
            device = kwargs.get("device")
            if device is None or (isinstance(device, str) and device == "cpu"):
                st = out.untyped_storage()
                self._host[id(st)] = weakref.ref(st)
        return out

    def of(self, opts: list, tracker: Any) -> HostStates | None:
        """The optimizers' states created on the host, as the tracker books them (None when off)."""
        if not self.active or not self._host:
            return None

        def created_on_host(t: torch.Tensor) -> bool:
            st = t.untyped_storage()
            ref = self._host.get(id(st))
            return ref is not None and ref() is st

        return host_states(opts, tracker, created_on_host)


def host_states(opts: list, tracker: Any, on_host: Callable[[torch.Tensor], bool]) -> HostStates:
    """The optimizers' state storages `on_host` picks, as the tracker books them (each counted once)."""
    from memprof.profiler.api import _state_tensors

    sids: set[int] = set()
    total = 0
    by_key: dict[str, int] = {}
    for o in opts:
        for key, t in _state_tensors(o):
            entry = tracker._reg.get(id(t.untyped_storage()))
            if entry is None or entry[0].sid in sids or not on_host(t):
                continue
            sids.add(entry[0].sid)
            total += entry[0].nbytes
            by_key[key] = by_key.get(key, 0) + entry[0].nbytes
    return HostStates(sids, total, by_key)


# ------------------------------------------------------------------------ the workload


def _hf_config(model: torch.nn.Module) -> Any:
    config = getattr(model, "config", None)
    return config if config is not None and hasattr(config, "to_dict") and hasattr(config, "model_type") else None


def hf_inputs(model: torch.nn.Module, batch_size: int, seq_len: int | None) -> tuple[dict[str, Any], int | None]:
    """Inputs and labels for a Hugging Face model, as memprof.tiny_models makes them: token ids and
    labels (a copy) for language models, images and class labels for vision models."""
    config = _hf_config(model)
    assert config is not None
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = getattr(config, "image_size", 224)
        channels = getattr(config, "num_channels", 3)
        labels = max(1, int(getattr(config, "num_labels", 2) or 2))
        return {
            "pixel_values": torch.randn(batch_size, channels, size, size),
            "labels": torch.randint(0, labels, (batch_size,)),
        }, None
    if seq_len is None:
        context = next(
            (getattr(config, k) for k in ("max_position_embeddings", "n_positions") if getattr(config, k, None)),
            DEFAULT_MAX_SEQ,
        )
        seq_len = min(int(context), DEFAULT_MAX_SEQ)
    vocab = int(getattr(config, "vocab_size", None) or 2)
    ids = torch.randint(0, vocab, (batch_size, seq_len))
    return {"input_ids": ids, "labels": ids.clone()}, seq_len


def _cast_inputs(inputs: Any, dtype: torch.dtype) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(dtype) if inputs.is_floating_point() else inputs
    if isinstance(inputs, dict):
        return {k: _cast_inputs(v, dtype) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_cast_inputs(v, dtype) for v in inputs)
    return inputs


def _call_model(model: torch.nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def _default_loss(out: Any, inputs: Any, ref: str = "") -> Any:
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, dict):
        loss = out.get("loss")
    if loss is None and isinstance(out, torch.Tensor) and out.numel() == 1:
        loss = out
    if loss is None:
        what = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise MemprofUserError(
            f"model {ref!r}: the model returned {what} with no loss; pass loss=lambda output, inputs: ... "
            "(a scalar tensor) to memprof.Workload"
        )
    return loss


def _check_inputs(inputs: Any) -> None:
    ok = isinstance(inputs, (dict, list, tuple, torch.Tensor))
    if not ok:
        raise MemprofUserError(
            f"Workload inputs is a {type(inputs).__name__}; pass a dict (model(**inputs)), a tuple or list "
            "(model(*inputs)) or a tensor (model(inputs))"
        )


# ----------------------------------------------------------------------------- optimizer


def _registry_optimizers(name: str, params: list, device: str, impl: str) -> list:
    if name not in REAL_OPTIMIZERS:
        if name in NOT_RUN:
            raise ParameterError(f"{{optimizer}} {name!r} cannot be traced: {NOT_RUN[name]}", "optimizer")
        raise unknown_name("optimizer", name, REAL_OPTIMIZERS)
    real = REAL_OPTIMIZERS[name]
    if real.closure or real.create_graph:
        why = "steps through a closure" if real.closure else "differentiates the gradient (create_graph)"
        raise ParameterError(
            f"{{optimizer}} {name!r} {why}; the traced step is a plain backward + step(): "
            f"use the analytic estimate for it (a preset or config.json)",
            "optimizer",
        )
    overrides: dict[str, Any] = {}
    if real.module == "torch.optim" and real.build is None:
        accepted = inspect.signature(getattr(torch.optim, real.cls)).parameters
        if impl == "auto" and device == "cuda" and "foreach" in accepted:
            # what torch picks on CUDA when not told (the trace runs on the CPU, where it would pick the
            # loop): foreach for most, the single-tensor loop for those that never default to foreach
            from memprof.estimators.optimizers import default_implementation

            overrides["foreach"] = default_implementation(name, "cuda") == "foreach"
        elif impl in ("foreach", "single_tensor") and "foreach" in accepted:
            overrides["foreach"] = impl == "foreach"
        elif impl == "fused" and "fused" in accepted:
            overrides["fused"] = True
        elif impl != "auto":
            raise ParameterError(
                f"{real.cls} has no {impl} implementation; use {{optimizer_impl}} auto", "optimizer_impl"
            )
    elif impl != "auto":
        raise ParameterError(
            f"{{optimizer_impl}} {impl} applies to torch.optim optimizers; {name} runs its own implementation",
            "optimizer_impl",
        )
    with _user_code(f"building optimizer {name} ({real.module}.{real.cls})"):
        try:
            return build_optimizers(name, params, **overrides)
        except ImportError as exc:
            raise MemprofUserError(
                f"optimizer {name!r} needs {real.module.split('.')[0]} ({exc}); pip install it"
            ) from None


def _implementation(opts: list) -> str | None:
    opt = opts[0]
    d = opt.defaults
    if d.get("fused"):
        return "fused"
    if "foreach" not in d:
        return None
    return "foreach" if d.get("foreach") else "single_tensor"


# ---------------------------------------------------------------------------------- run


def _checkpointing(model: torch.nn.Module, tracker: Any) -> str | None:
    """ "full" for a Hugging Face model with gradient checkpointing on; "none" when backward recomputed
    nothing; None when the model's own code recomputed part of its forward (its own checkpointing)."""
    on = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5
    if on is None:
        on = getattr(model, "is_gradient_checkpointing", False)
    if on is True:
        return "full"
    recomputed = (tracker.created.get("backward") or [0] * (ACT + 1))[ACT]
    return "none" if not recomputed else None


def _nbytes_by_dtype(params: list) -> str | None:
    counts: dict[str, int] = {}
    for p in params:
        key = str(p.dtype).removeprefix("torch.")
        counts[key] = counts.get(key, 0) + p.numel()
    return max(counts, key=lambda k: counts[k]) if counts else None


def trace_step(
    factory: Callable[..., Any],
    ref: str,
    *,
    optimizer: str,
    precision: Precision,
    device: str,
    optimizer_impl: str = "auto",
    batch_size: int | None = None,
    seq_len: int | None = None,
    gpu: Any = None,
    registry_optimizer: bool = False,
    keep_output: bool = True,
    zeros: bool = False,
) -> StepTrace:
    """Run the factory's workload for one warm-up optimizer step and one measured training step.
    registry_optimizer: step with the registry's `optimizer` even when the workload brings its own
    (`memprof optimizers` puts every registry optimizer on the same workload)."""
    notes: list[str] = []
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    reads = _ScalarReads()
    attention = _Attention(cuda=device == "cuda", gpu=gpu)
    rules = shape_rules(notes, cuda=device == "cuda")
    with _QuietLogs() as quiet, mode, _swappable(mode), attention, rules, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the user's and transformers' warnings are not memprof's output
        with _user_code(f"model {ref!r}: the factory"):
            built = call_factory(factory, ref, batch_size=batch_size, seq_len=seq_len)
        quiet.again()
        if isinstance(built, torch.nn.Module):
            if _hf_config(built) is None:
                raise MemprofUserError(
                    f"model {ref!r}: the factory returned a {type(built).__name__}, which is not a Hugging Face "
                    "model, so memprof cannot make its inputs; return memprof.Workload(model, inputs, loss=...) "
                    "with the inputs it is called with"
                )
            with _user_code(f"model {ref!r}: making token inputs"):
                inputs, seq_len = hf_inputs(built, batch_size or 1, seq_len)
            workload = Workload(built, inputs)
            batch_size = batch_size or 1
            notes.append(f"inputs made by memprof: {', '.join(inputs)} of batch {batch_size}")
        else:
            workload = Workload.from_value(built, where=f"model {ref!r}: the factory")
        model = workload.model
        if not isinstance(model, torch.nn.Module):
            raise MemprofUserError(f"model {ref!r}: Workload.model is a {type(model).__name__}, not a torch.nn.Module")
        inputs = workload.inputs
        _check_inputs(inputs)
        if precision.master_weights:
            raise ParameterError(
                f"{{precision}} {precision.name} keeps fp32 master weights inside an engine (DeepSpeed, "
                "Megatron) that a traced step does not run; use 32-true, 16-mixed, bf16-mixed, 16-true or bf16-true",
                "precision",
            )
        model.train()
        if not precision.autocast and precision.param_dtype != "float32":
            dtype = _DTYPES[precision.param_dtype]
            with _user_code(f"model {ref!r}: casting the model to {precision.param_dtype}"):
                model.to(dtype)
            inputs = _cast_inputs(inputs, dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise MemprofUserError(f"model {ref!r}: no parameter requires grad, so there is no training step to trace")
        if workload.optimizer is not None and not registry_optimizer:
            with _user_code(f"model {ref!r}: the optimizer factory"), _allowing(reads):
                opts = workload.optimizer(params)
            opts = list(opts) if isinstance(opts, (list, tuple)) else [opts]
            bad = [o for o in opts if not isinstance(o, torch.optim.Optimizer)]
            if bad or not opts:
                got = type(bad[0]).__name__ if bad else "nothing"
                raise MemprofUserError(
                    f"model {ref!r}: the optimizer factory returned {got}, not a torch.optim.Optimizer; "
                    "pass optimizer=lambda params: torch.optim.AdamW(params, ...)"
                )
            optimizer_name = "custom"
            warm_steps = 1
        else:
            with _allowing(reads):  # bitsandbytes reads values while it builds its quantization maps
                opts = _registry_optimizers(optimizer, params, device, optimizer_impl)
            optimizer_name = optimizer
            warm_steps = REAL_OPTIMIZERS[optimizer].warm_steps
        autocast: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        cuda_kernels: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if precision.autocast:  # on cuda, CPU autocast follows CUDA autocast's op lists (tracer.cuda_autocast)
            compute = _DTYPES[precision.compute_dtype]
            autocast = CudaAutocast(compute, notes) if device == "cuda" else torch.autocast("cpu", dtype=compute)
            if isinstance(autocast, CudaAutocast):  # kept through backward: checkpointing recomputes under autocast
                cuda_kernels = autocast.kernels()
        loss_fn = workload.loss or functools.partial(_default_loss, ref=ref)

        # states, created by the optimizer's own code as a first step creates them
        host = _HostScalars(device == "cuda")
        with _user_code(f"model {ref!r}: the optimizer's first step"), _allowing(reads), host:
            for _ in range(warm_steps):
                for p in params:
                    p.grad = torch.zeros_like(p)
                for o in opts:
                    o.step()
                for o in opts:
                    o.zero_grad(set_to_none=not zeros)

        def step() -> None:
            with autocast:
                with _user_code(f"model {ref!r}: the model's forward"):
                    out = _call_model(model, inputs)
                with _user_code(f"model {ref!r}: the loss"):
                    loss = loss_fn(out, inputs)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else repr(loss)[:80]
                raise MemprofUserError(
                    f"model {ref!r}: the loss is {what}, not a scalar tensor; return e.g. its .mean() from the "
                    "loss function"
                )
            if not loss.requires_grad:
                raise MemprofUserError(
                    f"model {ref!r}: the loss does not require grad (computed under no_grad, or from no trainable "
                    "parameter); there is no backward to trace"
                )
            if not keep_output:
                del out  # the loop keeps no reference to the output through backward
            with _user_code(f"model {ref!r}: backward"):
                loss.backward()
            with _user_code(f"model {ref!r}: the optimizer step"), _allowing(reads):
                for o in opts:
                    o.step()
                for o in opts:
                    o.zero_grad(set_to_none=not zeros)

        session = track(model, opts, device="cpu", events=True, capture=False)
        with session as run, cuda_kernels:
            step()
            on_host = host.of(opts, session.tracker)
        tracker = session.tracker
        assert tracker is not None
        record = run.to_dict()

    return step_trace(
        tracker,
        record,
        model,
        params,
        opts,
        reads=reads,
        attention=attention,
        notes=notes + ([f"optimizer: {optimizer_name}"] if optimizer_name == "custom" else []),
        batch_size=batch_size,
        seq_len=seq_len,
        on_host=on_host,
    )


def step_trace(
    tracker: Any,
    record: dict[str, Any],
    model: torch.nn.Module,
    params: list,
    opts: list,
    *,
    reads: _ScalarReads,
    attention: _Attention,
    notes: list[str],
    batch_size: int | None,
    seq_len: int | None,
    on_host: HostStates | None = None,
) -> StepTrace:
    """The StepTrace of a traced step, from the tracker's book and the session's record; `on_host`:
    optimizer states CUDA would keep in host memory, taken out of every device figure."""
    if on_host is not None and on_host.bytes:
        on_host.remove_from(tracker, record)
    if any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
        notes.append(RNN_WORKSPACE)
    books = [b for b in tracker.books.values() if b.peak.total >= 1 << 20]
    book = max(books or tracker.books.values(), key=lambda b: b.peak.total)
    if len(books) > 1:  # fake storages are all on "meta"; a real tensor would have failed the trace
        notes.append("tensors on more than one device: the peak is that of " + book.device)
    step_peak = book.phase_peaks.get("optimizer_step")
    if reads.reads and any(not type(o).__module__.startswith("torch.optim") for o in opts):
        notes.append(
            f"the optimizer read {reads.reads} tensor values (.item()) while it built its state and stepped; fake "
            "tensors have none, so they read as 1 (its allocations depend on shapes, not on these values)"
        )
    timeline = tracker.timeline_of(book.device) or []
    saved = next((p["by_category"]["activations"] for p in timeline if p["phase"] == "backward"), None)
    all_params = list(model.parameters())
    config = _hf_config(model)
    return StepTrace(
        model_name=type(model).__name__,
        parameters=sum(p.numel() for p in all_params),
        trainable_parameters=sum(p.numel() for p in params),
        param_dtype=_nbytes_by_dtype(params),
        model_states=dict(record["model_states"]),
        optimizer_state_breakdown=dict(record["optimizer_state_breakdown"]),
        optimizer_class=", ".join(f"{type(o).__module__}.{type(o).__qualname__}" for o in opts),
        optimizer_impl=_implementation(opts),
        peak_phase=book.peak.phase,
        peak_allocated=book.peak.total,
        peak_by_category=tracker.public(book.peak.cats),
        timeline=timeline,
        events=tracker.events,
        activations_saved=saved,
        step_scratch=None if step_peak is None else step_peak.cats[TEMP],
        checkpointing=_checkpointing(model, tracker),
        batch_size=batch_size,
        seq_len=seq_len,
        attention=getattr(config, "_attn_implementation", None)
        if config is not None
        else ("sdpa" if attention.calls else None),
        attention_kernel=attention.kernel,
        notes=notes,
    )
