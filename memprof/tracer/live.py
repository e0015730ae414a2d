"""The prediction of a live run's step: the step a profiler session captured, traced on fake tensors.

`memprof run --compare` and `Profile.compare()` need a prediction for every row. When memprof has no
analytic model of the run's model (a nanoGPT, a CNN, anything of the user's own), the profiler's
session has kept a `StepCapture` (memprof.profiler.capture): fake copies of the model and optimizers
(made when the region ended, the optimizer states included), the first forward's arguments as specs,
and the loss as the torch calls between the forward and `backward()`. `trace_capture` runs that step
again on fake tensors under the profiler's tracker, exactly as `memprof.trace` runs a workload:

    out = model(*args, **kwargs)          # the first forward's arguments, fake, autocast as recorded
    loss = <the recorded loss calls>      # each under its own autocast and grad mode
    <the recorded backward call>
    optimizer.step() for each optimizer   # states exist: copied from the live optimizers
    optimizer.zero_grad(set_to_none=...)  # as the loop left the gradients at its next forward

Autocast is replayed as recorded, per device: on a CUDA build the copies of a CUDA run are fake CUDA
tensors and `torch.autocast("cuda")` applies CUDA's policy to them. When the replayed tensors are CPU
tensors while the step models a CUDA run (`device="cuda"`), `torch.autocast("cuda")` would not touch them
(it is even disabled on a CPU-only torch), so a recorded CUDA autocast runs as the tracer runs it:
`memprof.tracer.cuda_autocast.CudaAutocast`, CPU autocast following CUDA's op lists, its kernels registered
for the whole step (`kernels()`: activation checkpointing recomputes its forward in backward under the
autocast it recorded); a recorded CPU autocast is then not replayed (on the real run it did not touch
CUDA tensors).

Lifetimes follow the real run: a model output or loss tensor alive when backward started stays alive
through the step (e.g. the logits of `logits, loss = model(x, y)`), the others are dropped after their
last use; gradients exist from the forward on when the loop kept them through its next forward.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.precision import get_precision
from memprof.profiler.api import track
from memprof.profiler.capture import StepCapture, TensorSpec, flatten_with_paths, outermost
from memprof.tracer.api import TRACED, Trace, _record
from memprof.tracer.cuda_autocast import CudaAutocast
from memprof.tracer.rules import shape_rules
from memprof.tracer.run import (
    _allowing,
    _Attention,
    _implementation,
    _QuietLogs,
    _ScalarReads,
    host_states,
    step_trace,
)

__all__ = ["PREDICTOR", "trace_capture"]

PREDICTOR = (
    "predictor: traced — the run's own model, optimizers and loss, captured by the profiler and run again on "
    "fake tensors (memprof.tracer.live)"
)
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_PRECISIONS = {
    ("float32", None): "32-true",
    ("float32", "bfloat16"): "bf16-mixed",
    ("float32", "float16"): "16-mixed",
    ("bfloat16", None): "bf16-true",
    ("bfloat16", "bfloat16"): "bf16-true",
    ("float16", None): "16-true",
    ("float16", "float16"): "16-true",
}


def _build(template: Any, resolve: Any) -> Any:
    if isinstance(template, tuple) and len(template) == 2 and template[0] == "#ref":
        return resolve(template[1])
    if isinstance(template, TensorSpec):
        return resolve(template)
    if isinstance(template, tuple) and not hasattr(template, "_fields"):
        return tuple(_build(v, resolve) for v in template)
    if isinstance(template, list):
        return [_build(v, resolve) for v in template]
    if isinstance(template, dict) and type(template) is dict:
        return {k: _build(v, resolve) for k, v in template.items()}
    return template


def _refs(template: Any, out: list) -> list:
    if isinstance(template, tuple) and len(template) == 2 and template[0] == "#ref":
        out.append(template[1])
    elif isinstance(template, (tuple, list)) and not hasattr(template, "_fields"):
        for v in template:
            _refs(v, out)
    elif isinstance(template, dict) and type(template) is dict:
        for v in template.values():
            _refs(v, out)
    return out


def _autocast(state: tuple, cuda: CudaAutocast | None = None) -> contextlib.ExitStack:
    """The recorded autocast state; `cuda`: a CUDA run replayed on CPU tensors (module docstring), whose
    CUDA autocast runs as CPU autocast under CUDA's op lists (`cuda.kernels()` registered for the step)."""
    stack = contextlib.ExitStack()
    for device, enabled, dtype in state:
        if not enabled:
            continue
        if cuda is None:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        elif device == "cuda":
            # with its kernels registered, CudaAutocast(dtype) enters CPU autocast in `dtype`
            stack.enter_context(cuda if dtype == cuda.dtype else torch.autocast("cpu", dtype=dtype))
    return stack


def _cuda_on_cpu(capture: StepCapture, device: str, notes: list[str]) -> CudaAutocast | None:
    """CudaAutocast for a CUDA run whose copies are CPU tensors and whose step ran CUDA autocast; else None."""
    if device != "cuda" or any(p.device.type != "cpu" for p in capture.model.parameters()):
        return None
    states = [capture.autocast, *(call.autocast for call in capture.calls)]
    dtype = next((d for state in states for dev, on, d in state if dev == "cuda" and on), None)
    return None if dtype is None else CudaAutocast(dtype, notes)


def precision_of(capture: StepCapture) -> str | None:
    """memprof's precision name of the captured step (parameter dtype and the forward's autocast)."""
    counts: dict[str, int] = {}
    for p in capture.model.parameters():
        name = _DTYPE_NAMES.get(p.dtype)
        if name is not None:
            counts[name] = counts.get(name, 0) + p.numel()
    if not counts:
        return None
    autocast = next((_DTYPE_NAMES.get(d) for _, on, d in capture.autocast if on), None)
    return _PRECISIONS.get((max(counts, key=lambda k: counts[k]), autocast))


def trace_capture(
    capture: StepCapture,
    *,
    device: str = "cpu",
    optimizer: str = "custom",
    precision: str | None = None,
    name: str | None = None,
) -> Trace:
    """Trace the captured step (module docstring); MemprofUserError when it cannot be (its reason).
    device: "cpu" or "cuda" (the profiled device: "cuda" adds the allocator replay and the context);
    optimizer: the registry name the record shows ("custom" when the optimizer is not in it)."""
    if not capture.ready:
        raise MemprofUserError(capture.reason or "the profiled region holds no complete training step to trace")
    prec = get_precision(precision or precision_of(capture) or "32-true")
    mode = capture.fake_mode
    model, opts = capture.model, list(capture.optimizers)
    reads = _ScalarReads()
    attention = _Attention(cuda=device == "cuda")
    notes = [PREDICTOR]
    if capture.forwards > 1 and capture.grads_at_forward:
        notes.append("the loop kept gradients through its forward (zero_grad without set_to_none): traced so")
    calls = capture.calls
    backward_func, backward_args, backward_kwargs = capture.backward  # type: ignore[misc]
    # the last call reading each value; values alive when backward started are kept to the end
    last_use: dict[tuple, int] = {}
    for i, call in enumerate(calls):
        for ref in _refs((call.args, call.kwargs), []):
            last_use[ref] = i
    for ref in _refs((backward_args, backward_kwargs), []):
        last_use[ref] = len(calls)
    keep = capture.alive_at_backward
    cuda = _cuda_on_cpu(capture, device, notes)
    kernels = cuda.kernels() if cuda is not None else contextlib.nullcontext()

    with _QuietLogs(), mode, attention, shape_rules(notes, cuda=device == "cuda"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = [p for p in model.parameters() if p.requires_grad]
        if capture.grads_at_forward:
            for p in params:
                p.grad = torch.zeros_like(p)
        inputs = [spec.make() for _, spec in _specs(capture.inputs)]
        by_spec = iter(inputs)
        args, kwargs = _build(capture.inputs, lambda spec: next(by_spec))
        externals = [spec.make() for spec in capture.externals]
        params_all = list(model.parameters())

        def step() -> None:
            values: dict[tuple, Any] = {}

            def resolve(ref: tuple) -> Any:
                kind = ref[0]
                if kind in ("out", "call"):
                    return values[ref]
                if kind == "in":  # ("in", (i,)): the i-th tensor of the forward's arguments
                    return inputs[ref[1][0]]
                if kind == "param":
                    return params_all[ref[1]]
                return externals[ref[1]]

            with _autocast(capture.autocast, cuda):
                out = model(*args, **kwargs)
            for path, t in flatten_with_paths(out):
                values[("out", path)] = t
            del out
            _drop(values, last_use, keep, -1)
            for i, call in enumerate(calls):
                func = call.func
                if getattr(func, "__module__", None) == "torch.nn.functional":
                    func = getattr(torch.nn.functional, func.__name__, func)  # the trace's own (rules, SDPA)
                with _autocast(call.autocast, cuda), torch.set_grad_enabled(call.grad_enabled):
                    result = func(*_build(call.args, resolve), **_build(call.kwargs, resolve))
                for path, t in flatten_with_paths(result):
                    values[("call", i, path)] = t
                del result
                _drop(values, last_use, keep, i)
            b_args, b_kwargs = _build(backward_args, resolve), _build(backward_kwargs, resolve)
            _drop(values, last_use, keep, len(calls))
            backward_func(*b_args, **b_kwargs)
            del b_args, b_kwargs
            with _allowing(reads):
                for o in outermost(opts):  # a chain steps its children itself
                    o.step()
                for o in opts:
                    o.zero_grad(set_to_none=not capture.grads_at_forward)
            values.clear()

        session = track(model, opts, device="cpu", events=True, capture=False)
        on_host = None
        try:
            with session as run, kernels:
                step()
                if device == "cuda":  # a CUDA run's copies keep their devices: states left on the host
                    on_host = host_states(opts, session.tracker, lambda t: t.device.type == "cpu")
        except MemprofUserError:
            raise
        except Exception as exc:
            raise MemprofUserError(
                f"the captured step could not be traced on fake tensors ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        tracker = session.tracker
        assert tracker is not None
        record = run.to_dict()
    batch = next((t.shape[0] for t in inputs if t.dim() >= 1), None)
    trace = step_trace(
        tracker,
        record,
        model,
        params,
        opts,
        reads=reads,
        attention=attention,
        notes=notes,
        batch_size=None if batch is None else int(batch),
        seq_len=None,
        on_host=on_host,
    )
    est = _record(
        trace,
        name=name or type(model).__name__,
        optimizer=optimizer,
        precision=prec,
        device=device,
        gpu=None,
        alloc_conf=None,
        cuda_version=None,
    )
    assert TRACED in est.warnings and _implementation(opts) == trace.optimizer_impl
    return Trace(est, trace)


def _specs(template: Any) -> list[tuple[tuple, TensorSpec]]:
    out: list[tuple[tuple, TensorSpec]] = []

    def walk(t: Any, path: tuple) -> None:
        if isinstance(t, TensorSpec):
            out.append((path, t))
        elif isinstance(t, (tuple, list)) and not hasattr(t, "_fields"):
            for i, v in enumerate(t):
                walk(v, (*path, i))
        elif isinstance(t, dict) and type(t) is dict:
            for k, v in t.items():
                walk(v, (*path, k))

    walk(template, ())
    return out


def _drop(values: dict[tuple, Any], last_use: dict[tuple, int], keep: set[tuple], now: int) -> None:
    """Forget the values read for the last time at call `now` (or never read), unless kept alive."""
    for ref in [r for r in values if r not in keep and last_use.get(r, -1) <= now]:
        del values[ref]
