"""Phase hooks: which of forward / backward / optimizer_step is running, and what runs it.

Installed process-wide for the duration of a session and removed in `remove()` (always called,
also after an exception):
- global module forward pre-/post-hooks (the post-hook with always_call=True, so the depth counter
  stays right when a forward raises): the outermost module call ("root") starts the forward phase
  unless it runs inside the autograd engine (recomputation under gradient checkpointing);
- a multi-grad hook on the root's outputs: the first gradient reaching them starts backward;
- global optimizer step pre-/post-hooks: optimizer_step, and discovery of optimizers;
- a post-accumulate-grad hook on every parameter seen: the parameter's .grad is a gradient;
- the `zero_grad` of every optimizer seen (wrapped on the instance, unwrapped in `remove()`).

Phases are sticky: a phase lasts until the next one starts, so a loss computed after the model's
forward belongs to forward and gradient clipping after backward belongs to backward. The one end
that is not a start: optimizer_step ends when the optimizer's zero_grad() returns (the gradients
it frees are the step's), so what the loop does before the next forward (the next batch) is in no
phase rather than charged to the step.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch.nn.modules import module as _nn_module
from torch.optim import optimizer as _optim

from memprof.estimators.vocabulary import Phase

_graph_task_id = torch._C._current_graph_task_id


class Listener(Protocol):
    def on_phase(self, old: str | None, new: str | None) -> None: ...
    def on_root_module(self, module: torch.nn.Module) -> None: ...
    def on_root_inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None: ...
    def on_root_output(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None: ...
    def on_optimizer(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_step_end(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_grad(self, param: torch.Tensor) -> None: ...


def flat_tensors(obj: Any, limit: int = 10_000) -> Iterator[torch.Tensor]:
    """Tensors inside nested tuples, lists and mappings (e.g. a Hugging Face ModelOutput)."""
    stack = [obj]
    while stack and limit > 0:
        limit -= 1
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            yield o
        elif isinstance(o, (list, tuple)):
            stack.extend(reversed(o))
        elif isinstance(o, dict):
            stack.extend(reversed(list(o.values())))


class PhaseHooks:
    """The phase state machine and the hooks that drive it."""

    def __init__(self, listener: Listener, *, track_modules: bool = True, tracker: Any = None) -> None:
        self.listener = listener
        self.tracker = tracker  # a StorageTracker whose module_depth mirrors ours
        self.phase: str | None = None
        self.depth = 0
        self.counts = {p.value: 0 for p in Phase}
        self.times = {p.value: 0.0 for p in Phase}
        self.module_stack: list[str] = []
        self.fault_modules: list[str] | None = None
        self._track_modules = track_modules
        self._t_last = time.perf_counter()
        self._handles: list[Any] = []
        self._grad_handles: dict[int, Any] = {}
        self._names: dict[int, str] = {}
        self._seen_roots: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._recompute_depth = 0
        self._zero_grads: list[tuple[weakref.ref[torch.optim.Optimizer], Any]] = []

    # -- install / remove ---------------------------------------------------------------
    def install(self) -> None:
        try:
            self._handles.append(_nn_module.register_module_forward_pre_hook(self._pre_forward))
            self._handles.append(
                _nn_module.register_module_forward_hook(self._post_forward, with_kwargs=True, always_call=True)
            )
            self._handles.append(_optim.register_optimizer_step_pre_hook(self._pre_step))
            self._handles.append(_optim.register_optimizer_step_post_hook(self._post_step))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove every hook this object installed; safe to call more than once."""
        handles, self._handles = self._handles, []
        grad_handles, self._grad_handles = list(self._grad_handles.values()), {}
        for h in [*handles, *grad_handles]:
            try:
                h.remove()
            except Exception:  # a handle whose owner is gone
                pass
            # torch's handle for a global forward hook forgets its with_kwargs flag
            hook_id = getattr(h, "id", None)
            if hook_id is not None:
                _nn_module._global_forward_hooks_with_kwargs.pop(hook_id, None)
        zero_grads, self._zero_grads = self._zero_grads, []
        for ref, wrapper in zero_grads:
            opt = ref()
            if opt is not None and vars(opt).get("zero_grad") is wrapper:
                del opt.zero_grad
        self._close_phase()

    # -- phases -------------------------------------------------------------------------
    def _close_phase(self) -> None:
        now = time.perf_counter()
        if self.phase is not None:
            self.times[self.phase] += now - self._t_last
        self._t_last = now

    def leave(self, phase: str) -> None:
        """End `phase` if it is the current one: until the next phase starts, none is."""
        if self.phase != phase:
            return
        self._close_phase()
        self.phase = None
        self.listener.on_phase(phase, None)

    def watch_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the optimizer's zero_grad() end the optimizer_step phase (module docstring)."""
        if "zero_grad" in vars(optimizer):
            return  # already wrapped (by us, or by someone whose wrapper we leave alone)
        original = type(optimizer).zero_grad
        opt_ref = weakref.ref(optimizer)
        hooks_ref = weakref.ref(self)

        def zero_grad(*args: Any, **kwargs: Any) -> Any:
            opt = opt_ref()
            assert opt is not None  # the instance whose attribute this is
            result = original(opt, *args, **kwargs)
            hooks = hooks_ref()
            if hooks is not None and hooks._handles:
                hooks.leave(Phase.OPTIMIZER_STEP.value)
            return result

        optimizer.zero_grad = zero_grad  # type: ignore[method-assign]
        self._zero_grads.append((opt_ref, zero_grad))

    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        old = self.phase
        self._close_phase()
        self.phase = phase
        self.counts[phase] += 1
        self.listener.on_phase(old, phase)

    # -- discovery ----------------------------------------------------------------------
    def watch_module(self, module: torch.nn.Module) -> None:
        """Learn a root module's parameter names and hook its parameters' gradients."""
        if module in self._seen_roots:
            return
        self._seen_roots.add(module)
        self._handles.append(module.register_forward_pre_hook(self._root_pre_forward, with_kwargs=True))
        for name, sub in module.named_modules():
            self._names.setdefault(id(sub), name or type(module).__name__)
        for p in module.parameters():
            self.watch_param(p)

    def watch_param(self, p: torch.Tensor) -> None:
        if id(p) in self._grad_handles or not p.requires_grad:
            return
        listener = self.listener
        self._grad_handles[id(p)] = p.register_post_accumulate_grad_hook(listener.on_grad)

    def module_name(self, module: torch.nn.Module) -> str:
        return self._names.get(id(module)) or type(module).__name__

    # -- hooks --------------------------------------------------------------------------
    def _pre_forward(self, module: torch.nn.Module, args: tuple) -> None:
        self.depth += 1
        if self.tracker is not None:
            self.tracker.module_depth = self.depth
        if self._track_modules:
            self.module_stack.append(self.module_name(module))
        if self.depth == 1:
            if _graph_task_id() != -1:
                self._recompute_depth = 1  # checkpoint recomputation inside backward
                return
            self._recompute_depth = 0
            self.fault_modules = None
            if module not in self._seen_roots:
                self.watch_module(module)
                self.listener.on_root_module(module)
                # its own pre-hook (added just now) runs from the next call on
                self.listener.on_root_inputs(module, args, {})
            self.enter(Phase.FORWARD.value)

    def _root_pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.depth == 1 and not self._recompute_depth:
            self.listener.on_root_inputs(module, args, kwargs)

    def _post_forward(self, module: torch.nn.Module, args: tuple, *rest: Any) -> None:
        # torch calls always_call hooks as (module, args, kwargs, output) normally but as
        # (module, args, output) when forward raised
        failed = len(rest) == 1
        kwargs, output = ({}, rest[0]) if failed else rest
        if self._track_modules and self.module_stack:
            if failed and self.fault_modules is None and not self._recompute_depth:
                self.fault_modules = list(self.module_stack)
            self.module_stack.pop()
        self.depth = max(0, self.depth - 1)
        if self.tracker is not None:
            self.tracker.module_depth = self.depth
        if self.depth == 0 and not self._recompute_depth and not failed:
            self.listener.on_root_output(module, args, kwargs, output)
            tensors = [t for t in flat_tensors(output) if t.requires_grad and t.grad_fn is not None]
            if tensors:
                torch.autograd.graph.register_multi_grad_hook(tensors, self._first_grad, mode="any")

    def _first_grad(self, grad: Any) -> None:
        if self._handles:  # still installed
            self.enter(Phase.BACKWARD.value)

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.listener.on_optimizer(optimizer)
        self.watch_zero_grad(optimizer)
        for group in optimizer.param_groups:
            for p in group["params"]:
                self.watch_param(p)
        self.enter(Phase.OPTIMIZER_STEP.value)

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.listener.on_step_end(optimizer)
