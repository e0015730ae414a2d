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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils._python_dispatch import TorchDispatchMode

from memprof.estimators.errors import MemprofError, MemprofUserError, ParameterError, UserCodeError, unknown_name
from memprof.estimators.precision import Precision
from memprof.factory import call_factory
from memprof.profiler.api import track
from memprof.profiler.tracker import ACT, TEMP
from memprof.tracer.optimizers import NOT_RUN, REAL_OPTIMIZERS, build_optimizers
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
            "(nonzero, torch.where(mask), boolean indexing, unique, e.g. MoE routing), which fake tensors do not have; "
            "memprof cannot trace data-dependent shapes yet: measure this model with memprof.track"
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
    """Inside `optimizer.step()`, reading a tensor's value (`.item()`: Adafactor's step count and
    norms, learning-rate tensors) gets a placeholder (1) instead of failing: a fake tensor has no
    value, and the optimizer's allocations depend on the shapes, not on these scalars. Anywhere
    else a value read stays an error the user is told about (their model or loss reads data)."""

    def __init__(self) -> None:
        super().__init__()
        self.allow = False
        self.reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if self.allow and func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
            t = args[0]
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
    dropout), which keeps the batch x heads x seq x seq scores for backward; on CUDA the flash or
    memory-efficient kernel runs and keeps q, k, v, the output and a log-sum-exp. While the trace runs,
    `torch.nn.functional.scaled_dot_product_attention` (looked up at call time by transformers and
    most models) calls the flash kernel's CPU twin instead — the same saved tensors; fake tensors only
    compute their shapes — for 4-D inputs with a head size up to 256 (grouped-query heads included);
    anything else keeps the CPU choice. (A function mode would see every torch call; one patched
    attribute costs nothing.)"""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.calls = 0  # SDPA calls seen
        self.used = 0  # of which routed to the flash kernel
        self._original: Any = None

    def __enter__(self) -> _Attention:
        self._original = original = torch.nn.functional.scaled_dot_product_attention

        def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            out = self._flash(*args, **kwargs) if self.cuda else None
            if out is None:
                return original(*args, **kwargs)
            self.used += 1
            return out

        torch.nn.functional.scaled_dot_product_attention = scaled_dot_product_attention
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.nn.functional.scaled_dot_product_attention = self._original

    @staticmethod
    def _flash(
        query: Any,
        key: Any,
        value: Any,
        attn_mask: Any = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Any:
        if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (query, key, value)):
            return None
        if query.size(-1) > 256:
            return None  # head size beyond the fused kernels: as on the CPU
        if query.size(1) != key.size(1) and not (enable_gqa and query.size(1) % key.size(1) == 0):
            return None  # SDPA itself rejects these shapes: let it say so
        # grouped-query heads (enable_gqa): CUDA's flash kernel reads the shared k, v without copies
        if attn_mask is not None and is_causal:
            return None
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )[0]


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
) -> StepTrace:
    """Run the factory's workload for one warm-up optimizer step and one measured training step."""
    notes: list[str] = []
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    reads = _ScalarReads()
    attention = _Attention(cuda=device == "cuda")
    with _QuietLogs() as quiet, mode, _swappable(mode), attention, warnings.catch_warnings():
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
        if workload.optimizer is not None:
            with _user_code(f"model {ref!r}: the optimizer factory"):
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
            opts = _registry_optimizers(optimizer, params, device, optimizer_impl)
            optimizer_name = optimizer
            warm_steps = REAL_OPTIMIZERS[optimizer].warm_steps
        autocast = (
            torch.autocast("cpu", dtype=_DTYPES[precision.compute_dtype])
            if precision.autocast
            else contextlib.nullcontext()
        )
        loss_fn = workload.loss or functools.partial(_default_loss, ref=ref)

        # states, created by the optimizer's own code as a first step creates them
        with _user_code(f"model {ref!r}: the optimizer's first step"), _allowing(reads):
            for _ in range(warm_steps):
                for p in params:
                    p.grad = torch.zeros_like(p)
                for o in opts:
                    o.step()
                for o in opts:
                    o.zero_grad(set_to_none=True)

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
            with _user_code(f"model {ref!r}: backward"):
                loss.backward()
            with _user_code(f"model {ref!r}: the optimizer step"), _allowing(reads):
                for o in opts:
                    o.step()
                for o in opts:
                    o.zero_grad(set_to_none=True)

        session = track(model, opts, device="cpu", events=True)
        with session as run:
            step()
        tracker = session.tracker
        assert tracker is not None
        record = run.to_dict()

    books = [b for b in tracker.books.values() if b.peak.total >= 1 << 20]
    book = max(books or tracker.books.values(), key=lambda b: b.peak.total)
    if len(books) > 1:  # fake storages are all on "meta"; a real tensor would have failed the trace
        notes.append("tensors on more than one device: the peak is that of " + book.device)
    step_peak = book.phase_peaks.get("optimizer_step")
    if reads.reads and any(not type(o).__module__.startswith("torch.optim") for o in opts):
        notes.append(
            f"the optimizer read {reads.reads} tensor values (.item()) in its steps; fake tensors have none, "
            "so they read as 1 (its allocations depend on shapes, not on these values)"
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
        attention_kernel="flash" if attention.used else None,
        notes=notes + ([f"optimizer: {optimizer_name}"] if optimizer_name == "custom" else []),
    )
