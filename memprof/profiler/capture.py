"""What a live run's training step is, kept so that it can be traced again on fake tensors.

A comparison of a profile with a prediction needs a prediction. For a model memprof has no analytic
family for (a nanoGPT, a CNN, anything of the user's own), the prediction is the tracer's: the same
step, run again on fake tensors (memprof.tracer.live). This module records, while the real run goes
on, what such a trace needs and nothing else (no tensor is kept alive, no value is copied):

- the first forward of the main model: its arguments, with every tensor replaced by its spec
  (shape, stride, dtype, device, requires_grad);
- the loss: every torch function called between the end of that forward and `backward()` (a
  TorchFunctionMode, pushed only for that stretch), with tensors named by where they came from (the
  model's output, an earlier call, an input, a parameter, or an outside tensor such as the targets,
  by spec), each call's autocast and grad mode, and the `backward()` call itself;
- lifetimes the user's code decides: which model outputs and loss-region tensors are still alive
  when backward starts (e.g. `logits, loss = model(x, y)` keeps the logits), and whether the
  parameters hold gradients when the next forward starts (`zero_grad(set_to_none=False)`);
- at the end of the first optimizer step: fake copies of the model and the optimizers
  (`FakeCopyMode` deep copies, so the optimizer states exist, exactly as the real step made them).

Anything a trace cannot follow (an optimizer stepped through a closure, a failed copy) is kept as
`reason` instead: the comparison then says why the peak is not predicted. Never raises into the
user's run.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["LossRecorder", "StepCapture", "TensorSpec", "flatten_with_paths", "outermost", "pop_recorder"]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor without its values."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: str
    requires_grad: bool

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(tuple(t.shape), tuple(t.stride()), t.dtype, str(t.device), bool(t.requires_grad))

    def make(self) -> torch.Tensor:
        """An uninitialised tensor of this spec (inside a FakeTensorMode: a fake one)."""
        t = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)
        return t.requires_grad_(self.requires_grad) if self.requires_grad and t.is_floating_point() else t


def flatten_with_paths(obj: Any, path: tuple = (), limit: int = 10_000) -> Iterator[tuple[tuple, torch.Tensor]]:
    """(path, tensor) for the tensors inside nested tuples, lists and mappings, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, (list, tuple)) and len(obj) < limit:
        for i, v in enumerate(obj):
            yield from flatten_with_paths(v, (*path, i), limit)
    elif isinstance(obj, dict) and len(obj) < limit:
        for k, v in obj.items():
            yield from flatten_with_paths(v, (*path, k), limit)


def _template(obj: Any, ref: Any, depth: int = 0) -> Any:
    """`obj` with every tensor replaced by ("#ref", ref(tensor))."""
    if isinstance(obj, torch.Tensor):
        return ("#ref", ref(obj))
    if depth > 4:
        return obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_template(v, ref, depth + 1) for v in obj)
    if isinstance(obj, list):
        return [_template(v, ref, depth + 1) for v in obj]
    if isinstance(obj, dict) and type(obj) is dict:
        return {k: _template(v, ref, depth + 1) for k, v in obj.items()}
    return obj


MAX_CALLS = 10_000  # a loss is a few calls; a longer stretch is something else (an evaluation loop)
# torch functions whose results are not tensors a trace needs (sizes, flags, values): never recorded
_NOT_RECORDED = {"item", "tolist", "__format__", "__repr__", "__bool__", "__len__", "numel", "dim"}


@dataclass
class Call:
    """One torch function of the loss region: its arguments as templates (see `_template`)."""

    func: Any
    args: Any
    kwargs: Any
    autocast: tuple[tuple[str, bool, Any], ...]  # (device type, enabled, dtype)
    grad_enabled: bool
    outputs: list[tuple]  # paths of the tensors it returned


class LossRecorder(TorchFunctionMode):
    """Records the torch functions between the model's forward and `backward()` (module docstring).

    Tensors are known by identity through weak references (the recorder keeps none alive): the model's
    output ("out", path), an earlier call's output ("call", i, path), the model's inputs ("in", path),
    its parameters ("param", i), or an outside tensor ("ext", k) whose spec is kept."""

    def __init__(self, capture: StepCapture, output: Any) -> None:
        super().__init__()
        self.capture = capture
        self.active = True
        self._known: dict[int, tuple[weakref.ref, tuple]] = {}
        for path, t in flatten_with_paths(output):
            self._remember(t, ("out", path))
        for path, t in flatten_with_paths(capture.input_tensors_live()):
            self._remember(t, ("in", path), overwrite=False)
        for i, p in enumerate(capture.live_params()):
            self._remember(p, ("param", i), overwrite=False)

    def _remember(self, t: torch.Tensor, ref: tuple, overwrite: bool = True) -> None:
        if not overwrite and id(t) in self._known and self._known[id(t)][0]() is t:
            return
        try:
            self._known[id(t)] = (weakref.ref(t), ref)
        except TypeError:
            pass

    def ref(self, t: torch.Tensor) -> tuple:
        entry = self._known.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        ref = ("ext", len(self.capture.externals))
        self.capture.externals.append(TensorSpec.of(t))
        self._remember(t, ref)
        return ref

    def alive(self) -> set[tuple]:
        """The refs whose tensors are alive now."""
        return {ref for w, ref in self._known.values() if w() is not None and ref[0] in ("out", "call")}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not self.active:
            return func(*args, **kwargs)
        if func is torch.Tensor.backward or func is torch.autograd.backward:
            self.active = False
            try:
                self.capture.backward = (func, _template(args, self.ref), _template(kwargs, self.ref))
                self.capture.alive_at_backward = self.alive()  # narrowed at the step (on_step_start)
            except Exception as exc:  # never fail the user's run
                self.capture.fail(f"the loss could not be recorded ({type(exc).__name__}: {exc})")
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _NOT_RECORDED:
            return func(*args, **kwargs)
        try:
            targs, tkwargs = _template(args, self.ref), _template(kwargs, self.ref)
        except Exception as exc:
            self.capture.fail(f"the loss could not be recorded ({type(exc).__name__}: {exc})")
            self.active = False
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        tensors = list(flatten_with_paths(out))
        if len(self.capture.calls) >= MAX_CALLS:
            self.active = False
            self.capture.fail(f"more than {MAX_CALLS} torch calls between the forward and backward() (not a loss)")
            return out
        if tensors and self.capture.reason is None:
            index = len(self.capture.calls)
            autocast = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda"))
            self.capture.calls.append(
                Call(func, targs, tkwargs, autocast, torch.is_grad_enabled(), [p for p, _ in tensors])
            )
            for path, t in tensors:
                self._remember(t, ("call", index, path))
        return out


@dataclass
class StepCapture:
    """The live step, as far as a trace needs it (module docstring); `reason` when it cannot be traced."""

    reason: str | None = None
    model_class: str | None = None
    fake_mode: Any = None  # the FakeTensorMode the copies belong to
    model: Any = None  # fake copy of the main model (after the first optimizer step)
    optimizers: list[Any] = field(default_factory=list)  # fake copies, with their states
    inputs: Any = None  # (args, kwargs) of the first forward, tensors as TensorSpec
    autocast: tuple[tuple[str, bool, Any], ...] = ()  # at the first forward
    calls: list[Call] = field(default_factory=list)
    externals: list[TensorSpec] = field(default_factory=list)
    backward: tuple[Any, Any, Any] | None = None
    alive_at_backward: set[tuple] = field(default_factory=set)
    grads_at_forward: bool = False  # parameters held gradients when the second forward started
    forwards: int = 0  # root forwards of the main model before the first optimizer step
    closure: bool = False
    _model_ref: Any = None
    _input_refs: list[Any] = field(default_factory=list)
    _recorder: LossRecorder | None = None
    _step_seen: bool = False

    def fail(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.calls.clear()
        self.model = None
        self.optimizers = []

    # -- the live objects -------------------------------------------------------------------
    def live_params(self) -> list[torch.Tensor]:
        model = self._model_ref() if self._model_ref is not None else None
        return list(model.parameters()) if model is not None else []

    def input_tensors_live(self) -> Any:
        return [r() for r in self._input_refs]

    # -- session events ----------------------------------------------------------------------
    def on_forward_start(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self._model_ref is None:
            self._model_ref = weakref.ref(model)
            self.model_class = f"{type(model).__module__}.{type(model).__qualname__}"
        if self._model_ref() is not model:
            return
        self.forwards += 1
        if self.forwards == 1:
            try:
                self.inputs = _template((args, kwargs), TensorSpec.of)
                self._input_refs = [weakref.ref(t) for _, t in flatten_with_paths((args, kwargs))]
                self.autocast = tuple(
                    (d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")
                )
            except Exception as exc:
                self.fail(f"the model's inputs could not be recorded ({type(exc).__name__}: {exc})")
        elif self.forwards == 2:
            # the second step: does the loop keep gradients through the forward (zero_grad(set_to_none=False))?
            self.grads_at_forward = any(p.grad is not None for p in model.parameters())

    def on_forward_end(self, model: torch.nn.Module, output: Any) -> LossRecorder | None:
        """Start recording the loss after the first forward; returns the recorder to push."""
        if self.reason is not None or self.forwards != 1 or self._recorder is not None:
            return None
        if self._model_ref is None or self._model_ref() is not model:
            return None
        self._recorder = LossRecorder(self, output)
        return self._recorder

    def on_step_start(self) -> None:
        """The first optimizer step starts: of the values alive when backward started, those the user's
        code still holds now (autograd has freed what it saved) stay alive through the step."""
        if self._recorder is not None and not self._step_seen:
            self._step_seen = True
            self.alive_at_backward &= self._recorder.alive()

    def on_step_closure(self) -> None:
        self.closure = True
        self.fail(
            "the optimizer's step() ran the model (a closure: forward and backward inside the step, as "
            "L-BFGS does), which a traced step does not follow"
        )

    def copy_live(self, model: torch.nn.Module | None, optimizers: list[torch.optim.Optimizer], keep: dict) -> None:
        """Fake copies of the model and the optimizers (with their states), made after the first step.
        `keep`: objects the copy must not duplicate (the session and its hooks), by id."""
        if self.reason is not None or self.model is not None or model is None:
            return
        if self.backward is None:
            self.fail("no backward() followed the model's first forward: there is no training step to trace")
            return
        from torch._subclasses.fake_tensor import FakeCopyMode, FakeTensorMode
        from torch.utils._python_dispatch import _disable_current_modes

        try:
            mode = FakeTensorMode(allow_non_fake_inputs=False)
            memo: dict[int, Any] = dict(keep)
            # an optimizer's __getstate__ keeps defaults, state and param_groups only: copy its whole
            # __dict__ instead (a chain of optimizers keeps its children in an attribute)
            torch.optim.Optimizer.__deepcopy__ = _copy_optimizer  # type: ignore[attr-defined]
            try:
                with _disable_current_modes(), FakeCopyMode(mode):
                    fake_model, fake_opts = copy.deepcopy((model, list(optimizers)), memo)
            finally:
                del torch.optim.Optimizer.__deepcopy__  # type: ignore[attr-defined]
            _strip_hooks(fake_model, fake_opts, set(keep))
        except Exception as exc:
            self.fail(f"the model could not be copied onto fake tensors ({type(exc).__name__}: {exc})")
            return
        self.fake_mode, self.model, self.optimizers = mode, fake_model, fake_opts

    @property
    def ready(self) -> bool:
        return self.reason is None and self.model is not None and self.backward is not None


def _copy_optimizer(self: torch.optim.Optimizer, memo: dict[int, Any]) -> torch.optim.Optimizer:
    new = object.__new__(type(self))
    memo[id(self)] = new
    new.__dict__.update(copy.deepcopy(vars(self), memo))
    return new


def outermost(optimizers: list[Any]) -> list[Any]:
    """The optimizers a loop steps itself, without those another one steps: an optimizer whose parameter
    groups are all another's (the children of a chain, which holds their group dicts) is left out; of two
    with the same groups, the first seen (the one the loop stepped) stays."""
    groups = [{id(g) for g in o.param_groups} for o in optimizers]

    def child(i: int) -> bool:
        return any(j != i and (groups[i] < groups[j] or (groups[i] == groups[j] and j < i)) for j in range(len(groups)))

    return [o for i, o in enumerate(optimizers) if not child(i)]


def _strip_hooks(model: torch.nn.Module, optimizers: list[Any], owners: set[int]) -> None:
    """Drop the hooks a profiling session put on the live objects, which the deep copy carried over."""

    def ours(fn: Any) -> bool:
        return id(getattr(fn, "__self__", None)) in owners

    for m in model.modules():
        for attr in ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks"):
            hooks = getattr(m, attr, None)
            if isinstance(hooks, dict):
                for k in [k for k, fn in hooks.items() if ours(fn)]:
                    del hooks[k]
    for p in model.parameters():
        hooks = getattr(p, "_post_accumulate_grad_hooks", None)
        if isinstance(hooks, dict):
            for k in [k for k, fn in hooks.items() if ours(fn)]:
                del hooks[k]
        p.grad = None
    for opt in optimizers:
        vars(opt).pop("zero_grad", None)  # the session's wrapper (memprof.profiler.phases)


def pop_recorder(capture: StepCapture) -> None:
    """Take the loss recorder off torch's function-mode stack once its stretch is over (only when it is
    on top: a mode the user pushed since stays, and the recorder, inactive, passes calls through)."""
    recorder = capture._recorder
    if recorder is None or getattr(recorder, "_popped", False):
        return
    recorder.active = False
    from torch.overrides import _get_current_function_mode_stack

    stack = _get_current_function_mode_stack()
    if stack and stack[-1] is recorder:
        recorder.__exit__(None, None, None)
        recorder._popped = True
