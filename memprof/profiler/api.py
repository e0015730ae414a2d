"""Two doors onto one object: `track()` (a context manager) and `profile()` (a decorator).

    with memprof.track(model, optimizer) as run:
        for batch in batches:
            loss = model(batch).sum(); loss.backward(); optimizer.step(); optimizer.zero_grad()
    run.to_dict()["peak"]            # bytes by category at the peak, per-phase peaks in "phases"

    @memprof.profile(model=model, optimizer=optimizer)
    def train_step(batch): ...
    train_step(batch); train_step.profiles; train_step.worst

Modes: "attribution" (default) runs a TorchDispatchMode over storages and attributes every live
byte; "stats" installs only the phase hooks and reads the CUDA allocator counters (cheap; on a CPU
run it measures phase times and model states but no peak). One session at a time per process:
the hooks are process-wide, so nesting or a second thread fails with a MemprofUserError.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import platform
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch

from memprof.estimators.errors import MemprofError, MemprofUserError, ParameterError, unknown_name
from memprof.estimators.records import ProfileRecord
from memprof.estimators.vocabulary import CATEGORIES, PHASES, Category, Phase
from memprof.profiler import tracker as T
from memprof.profiler.adapters import adapter_description
from memprof.profiler.capture import StepCapture, pop_recorder
from memprof.profiler.cuda_stats import CudaStats, cuda_device_of
from memprof.profiler.nvml import Nvml
from memprof.profiler.phases import PhaseHooks, flat_tensors
from memprof.profiler.record import Profile, check_writable, empty_record

MODES = ("attribution", "stats")
_LOCK = threading.Lock()
_active: Session | None = None


def _as_list(obj: Any, kind: type, name: str) -> list[Any]:
    if obj is None:
        return []
    items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    for item in items:
        if not isinstance(item, kind):
            raise MemprofUserError(
                f"{name} must be a {kind.__module__}.{kind.__qualname__} (or a list of them), got {type(item).__name__}"
            )
    return items


def _jsonable(v: Any, depth: int = 0) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else f"tensor(shape={list(v.shape)})"
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, (list, tuple)) and depth < 3:
        return [_jsonable(x, depth + 1) for x in v]
    if isinstance(v, dict) and depth < 3:
        return {str(k): _jsonable(x, depth + 1) for k, x in v.items()}
    return repr(v)


def _model_description(model: torch.nn.Module) -> dict[str, Any]:
    """What an estimate of this model needs (memprof.comparison.observed): its Hugging Face config
    when it has one, the trainable parameters' (name, shape), attention and checkpointing."""
    config = getattr(model, "config", None)
    hf_config = None
    if config is not None and callable(getattr(config, "to_dict", None)):
        try:
            hf_config = json.loads(json.dumps(config.to_dict(), default=str))
        except (TypeError, ValueError):
            hf_config = None
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", None)
    out: dict[str, Any] = {
        "hf_config": hf_config,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "gradient_checkpointing": checkpointing if isinstance(checkpointing, bool) else None,
    }
    # always kept: a config whose model memprof does not know, or a model with frozen parameters,
    # still has its model states predicted from these
    out["parameter_tensors"] = [[n, list(p.shape)] for n, p in model.named_parameters() if p.requires_grad]
    return out


def _state_tensors(optimizer: torch.optim.Optimizer) -> Iterable[tuple[str, torch.Tensor]]:
    """(state key, tensor) for every tensor reachable from optimizer.state, also through the
    attributes of plain objects kept there (GaLore's GaLoreProjector holds its projection matrix)."""
    for state in optimizer.state.values():
        if not isinstance(state, dict):
            continue
        for key, val in state.items():
            if isinstance(val, (torch.Tensor, list, tuple, dict)):
                yield from ((str(key), t) for t in flat_tensors(val))
            elif hasattr(val, "__dict__") and not isinstance(val, (type, torch.nn.Module)):
                for attr in vars(val).values():
                    yield from ((str(key), t) for t in flat_tensors(attr))


def _rank() -> dict[str, int]:
    """{"rank", "world_size"} inside an initialized torch.distributed process group, or of a
    multi-process launch (torchrun's RANK / WORLD_SIZE, e.g. after the script destroyed its group);
    else {}."""
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return {"rank": dist.get_rank(), "world_size": dist.get_world_size()}
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return {}
    return {"rank": rank, "world_size": world} if world > 1 else {}


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    msg = str(exc)
    return "out of memory" in msg.lower() or "can't allocate memory" in msg


class Session:
    """One profiled region; `__enter__` returns its Profile, filled in when the region ends."""

    def __init__(
        self,
        model: Any = None,
        optimizer: Any = None,
        *,
        mode: str = "attribution",
        device: str | torch.device | None = None,
        events: bool = True,
        memory_snapshot: bool = False,
        warmup: int = 0,
        capture: bool = True,
    ) -> None:
        if mode not in MODES:
            raise unknown_name("profiler mode", str(mode), MODES)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ParameterError(f"{{warmup}} must be a whole number of optimizer steps >= 0, got {warmup!r}", "warmup")
        self.warmup = warmup
        self.models: list[torch.nn.Module] = _as_list(model, torch.nn.Module, "model")
        self.optimizers: list[torch.optim.Optimizer] = _as_list(optimizer, torch.optim.Optimizer, "optimizer")
        try:
            self.device = None if device is None else torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise MemprofUserError(f"device {device!r} is not a torch device ({exc}); e.g. 'cpu', 'cuda:0'") from None
        self.mode = mode
        self.record_events = events
        self.memory_snapshot = memory_snapshot
        self.profile = Profile()
        # the step, kept so that a comparison can trace it on fake tensors (memprof.profiler.capture)
        self.capture = StepCapture() if capture and mode == "attribution" else None
        self.profile.step_capture = self.capture
        self.started = False
        self.roots: list[torch.nn.Module] = list(self.models)
        self.tracker: T.StorageTracker | None = None
        self.hooks: PhaseHooks | None = None
        self.cuda: CudaStats | None = None
        self.cuda_reason: str | None = None
        self.nvml: Nvml | None = None
        self.context_bytes: int | None = None
        self.input_shapes: dict[int, list[list[int]]] = {}
        self.autocast: str | None = None
        self.steps = 0
        self.model_state_max = dict.fromkeys(("parameters", "gradients", "optimizer_states"), 0)
        self._mode_entered = False
        self._params_cache: tuple[tuple[int, int], list[torch.Tensor]] | None = None
        self._t0 = 0.0
        self._nvml_last = float("-inf")
        # the loop's choices, seen at the first backward after each optimizer step: whether the
        # model's output (its largest tensor, the logits) was still alive, and whether gradients
        # survived the loop's zero_grad (None: no such backward was seen)
        self._outputs: list[weakref.ref[torch.UntypedStorage]] = []
        self._step_ended = True
        self.output_kept: bool | None = None
        self.grads_kept: bool | None = None

    # -- enter / exit -------------------------------------------------------------------
    def __enter__(self) -> Profile:
        global _active
        with _LOCK:
            if _active is not None:
                raise MemprofUserError(
                    "memprof is already profiling a region (nested `track`/`profile`, or another "
                    "thread); its hooks are process-wide, so profile one region at a time"
                )
            _active = self
        try:
            self._start()
        except BaseException:
            self._teardown()
            raise
        self.started = True
        return self.profile

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        record: ProfileRecord | None = None
        try:
            try:
                self._final_scan()
                if exc is None:  # a region that raised has no step to trace
                    self._copy_step()
            finally:
                self._teardown()
            record = ProfileRecord.from_dict(self._build(exc, final=True))
        except Exception:
            if exc is None:
                raise
            # never hide the user's exception behind a profiler failure
        finally:
            self.profile.finish(record)
        return False

    def _start(self) -> None:
        self._t0 = time.perf_counter()
        self.device = self.device or self._infer_device()
        index, self.cuda_reason = cuda_device_of(self.device)
        if index is None and self.device.type == "cuda":
            self.device = torch.device("cpu")  # no usable GPU: measure the CPU run, say why
        if index is not None:
            self.cuda = CudaStats(index, record_snapshot=self.memory_snapshot)
            self.cuda.start()
        self.nvml = Nvml(index) if index is not None else None
        if self.mode == "attribution":
            self.tracker = T.StorageTracker(record_events=self.record_events, on_backward=self._on_backward)
            self.tracker.start()
            self.profile.events = self.tracker.events
            self.profile.event_phases = self.tracker.event_phases
        self.hooks = PhaseHooks(self, track_modules=self.mode == "attribution", tracker=self.tracker)
        for m in self.models:
            self.hooks.watch_module(m)
            self._register_module(m)
        for opt in self.optimizers:
            self._register_optimizer(opt)
        self.hooks.install()
        if self.tracker is not None:
            self.tracker.__enter__()
            self._mode_entered = True
        self.profile.attach(lambda: self._build(None, final=False))

    def _teardown(self) -> None:
        """Remove everything this session installed; each step runs even if another fails."""
        global _active
        if self.capture is not None:
            pop_recorder(self.capture)
        try:
            if self._mode_entered and self.tracker is not None:
                self._mode_entered = False
                self.tracker.__exit__(None, None, None)
        finally:
            try:
                if self.hooks is not None:
                    self.hooks.remove()
            finally:
                try:
                    if self.cuda is not None:
                        self.cuda.stop()
                    if self.nvml is not None:
                        self.nvml.close()
                finally:
                    if self.tracker is not None:
                        self.tracker.stop()
                    with _LOCK:
                        if _active is self:
                            _active = None

    # -- discovery ----------------------------------------------------------------------
    def _infer_device(self) -> torch.device:
        for m in self.models:
            for p in m.parameters():
                return p.device
        for opt in self.optimizers:
            for g in opt.param_groups:
                for p in g["params"]:
                    return p.device
        return torch.device("cpu")

    def _register_module(self, module: torch.nn.Module) -> None:
        if self.tracker is None:
            return
        for p in module.parameters():
            shard = getattr(p, "ds_tensor", None)  # DeepSpeed ZeRO-3: the rank's partition of an empty placeholder
            if isinstance(shard, torch.Tensor):
                self.tracker.classify(shard, T.PARAM)
            self.tracker.classify(p, T.PARAM)
            if p.grad is not None:
                self.tracker.classify(p.grad, T.GRAD)
        for b in module.buffers():
            self.tracker.classify(b, T.BUFFER)
        for t in _quantization_state(module):
            self.tracker.classify(t, T.PARAM)  # part of a quantized weight (bitsandbytes)

    def _register_optimizer(self, opt: torch.optim.Optimizer) -> None:
        if self.tracker is None:
            return
        masters = self._master_weights()
        for g in opt.param_groups:
            for p in g["params"]:
                self.tracker.classify(p, T.STATE if id(p) in masters else T.PARAM)
                if p.grad is not None:
                    self.tracker.classify(p.grad, T.GRAD)
        for _, t in _state_tensors(opt):
            self.tracker.classify(t, T.STATE)

    def _master_weights(self) -> set[int]:
        """Ids of the tensors an optimizer steps that are not the tracked model's parameters, when a
        model is tracked: master copies (DeepSpeed ZeRO's flat fp32 partitions, apex's master params),
        counted as optimizer states as memprof's estimates count master weights."""
        model_params = {id(p) for m in [*self.models, *self.roots] for p in m.parameters()}
        if not model_params:
            return set()
        return {id(p) for opt in self.optimizers for g in opt.param_groups for p in g["params"]} - model_params

    # -- listener (called by PhaseHooks and the tracker) --------------------------------
    def _on_backward(self) -> None:
        if self.hooks is not None:
            self.hooks.enter(Phase.BACKWARD.value)

    def on_phase(self, old: str | None, new: str | None) -> None:
        if new == Phase.BACKWARD.value and self._step_ended:
            self._observe_loop()
        if self.tracker is not None:
            self.tracker.set_phase(new, in_step=new == Phase.OPTIMIZER_STEP.value)
        if self.cuda is not None:
            self.cuda.mark(old)
            self._sample_context()

    def on_root_module(self, module: torch.nn.Module) -> None:
        if module not in self.roots:
            self.roots.append(module)
            self._register_module(module)

    def on_root_inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.capture is not None and (not self.models or module is self.models[0]):
            pop_recorder(self.capture)
            if self.hooks is not None and self.hooks.phase == Phase.OPTIMIZER_STEP.value:
                self.capture.on_step_closure()  # a forward inside step(): L-BFGS's closure
            self.capture.on_forward_start(module, args, kwargs)
        if self.tracker is not None:
            for t in flat_tensors((args, kwargs), limit=1000):
                self.tracker.classify(t, T.INPUT, only_new=True)

    def _observe_loop(self) -> None:
        """At the first backward of a step: is the root's output (its largest tensor) still alive,
        and do the trainable parameters already have gradients (zero_grad(set_to_none=False))?"""
        self._step_ended = False
        alive = [r() for r in self._outputs]
        if self._outputs:
            self.output_kept = any(t is not None for t in alive)
        params = [p for p in self._all_params() if p.requires_grad]
        if params:
            self.grads_kept = any(p.grad is not None for p in params)

    def on_root_output(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.models or module is self.models[0]:
            # a weak reference to the storage (torch keeps one Python object per live storage, as the
            # tracker's own registry relies on): holding the output would change what the loop frees,
            # and a tensor object can die while a view or a detached copy keeps its memory
            largest = max((t for t in flat_tensors(output) if t.dim() > 0), key=lambda t: t.numel(), default=None)
            storage = None if largest is None else T._storage(largest)
            self._outputs = [] if storage is None else [weakref.ref(storage)]
        shapes = self.input_shapes.setdefault(id(module), [])
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is None:
            first = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if first is not None and list(first.shape) not in shapes and len(shapes) < 32:
            shapes.append(list(first.shape))
        if self.capture is not None:
            recorder = self.capture.on_forward_end(module, output)
            if recorder is not None:
                recorder.__enter__()  # popped by the next forward, the step, or the session's end
        if self.autocast is None:
            for dev in ("cuda", "cpu"):
                if torch.is_autocast_enabled(dev):
                    self.autocast = str(torch.get_autocast_dtype(dev)).removeprefix("torch.")
                    break

    def on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.capture is not None:
            self.capture.on_step_start()
            pop_recorder(self.capture)
        if optimizer not in self.optimizers:
            self.optimizers.append(optimizer)
            self._register_optimizer(optimizer)
        if self.tracker is not None:
            self.tracker.in_step = True
            for g in optimizer.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        self.tracker.classify(p.grad, T.GRAD)

    def on_step_end(self, optimizer: torch.optim.Optimizer) -> None:
        self.steps += 1
        self._step_ended = True
        if self.steps == self.warmup:
            self._after_warmup()
        if self.tracker is not None:
            for _, t in _state_tensors(optimizer):
                self.tracker.classify(t, T.STATE)
            self.tracker.in_step = False
        # model states keep their sizes from step to step: sampling steps 1-4, then every power
        # of two (and the end of the region) finds the maximum at a fraction of the cost
        if self.steps <= 4 or self.steps & (self.steps - 1) == 0:
            self._sample_model_states()

    def _after_warmup(self) -> None:
        """The warm-up steps are over: the peaks start again from what is live now (the states
        the first step created included), so the profile describes the steady state."""
        phase = self.hooks.phase if self.hooks else None
        if self.tracker is not None:
            self.tracker.reset_peaks()
        if self.cuda is not None:
            self.cuda.mark(phase)
            self.cuda.phases.clear()

    def on_grad(self, param: torch.Tensor) -> None:
        if self.tracker is not None and param.grad is not None:
            self.tracker.classify(param.grad, T.GRAD)

    # -- measurements -------------------------------------------------------------------
    def _all_params(self) -> list[torch.Tensor]:
        key = (len(self.roots), len(self.optimizers))
        if self._params_cache is not None and self._params_cache[0] == key:
            return self._params_cache[1]
        seen: dict[int, torch.Tensor] = {}
        for m in self.roots:
            for p in m.parameters():
                seen.setdefault(id(p), p)
        for opt in self.optimizers:
            for g in opt.param_groups:
                for p in g["params"]:
                    seen.setdefault(id(p), p)
        params = list(seen.values())
        self._params_cache = (key, params)
        return params

    def _model_state_bytes(self) -> dict[str, int]:
        """Exact bytes of parameters, gradients and states, each storage counted once."""
        counted: set[int] = set()
        out = {"parameters": 0, "gradients": 0, "optimizer_states": 0}

        def add(cat: str, t: torch.Tensor) -> None:
            st = T._storage(t)
            if st is not None and id(st) not in counted:
                counted.add(id(st))
                out[cat] += st.nbytes()

        params = self._all_params()
        masters = self._master_weights()
        for p in params:
            shard = getattr(p, "ds_tensor", None)  # DeepSpeed ZeRO-3: what the rank holds of the parameter
            if isinstance(shard, torch.Tensor):
                add("parameters", shard)
            add("optimizer_states" if id(p) in masters else "parameters", p)
        for m in [*self.models, *self.roots]:
            for t in _quantization_state(m):
                add("parameters", t)
        for p in params:
            if p.grad is not None:
                add("gradients", p.grad)
        for opt in self.optimizers:
            for _, t in _state_tensors(opt):
                add("optimizer_states", t)
        return out

    def _sample_model_states(self) -> None:
        for k, v in self._model_state_bytes().items():
            self.model_state_max[k] = max(self.model_state_max[k], v)

    def _sample_context(self, force: bool = False) -> None:
        if self.nvml is None or not self.nvml.available or self.cuda is None:
            return
        now = time.perf_counter()
        if not force and now - self._nvml_last < 0.5:  # NVML queries cost far more than a counter read
            return
        self._nvml_last = now
        used = self.nvml.sample()
        if used is not None:
            ctx = used - torch.cuda.memory_reserved(self.cuda.index)
            self.context_bytes = ctx if self.context_bytes is None else max(self.context_bytes, ctx)

    def _final_scan(self) -> None:
        if self.tracker is not None:
            for m in self.roots:
                for p in m.parameters():
                    if p.grad is not None:
                        self.tracker.classify(p.grad, T.GRAD)
            for opt in self.optimizers:
                for _, t in _state_tensors(opt):
                    self.tracker.classify(t, T.STATE)
        self._sample_model_states()
        if self.cuda is not None:
            self.cuda.mark(self.hooks.phase if self.hooks else None)
            self._sample_context(force=True)
            self.profile.memory_snapshot = self.cuda.snapshot()

    def _copy_step(self) -> None:
        """Fake copies of the model and optimizers for a later trace (StepCapture.copy_live)."""
        if self.capture is None:
            return
        pop_recorder(self.capture)
        model = self._main_model()
        config = getattr(model, "config", None)
        from memprof.estimators.families import SUPPORTED_MODEL_TYPES

        if getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES:
            return  # estimated analytically; no trace needed
        keep = {id(o): o for o in (self, self.hooks, self.tracker, self.profile) if o is not None}
        self.capture.copy_live(model, self.optimizers, keep)

    # -- the record ---------------------------------------------------------------------
    def _main_model(self) -> torch.nn.Module | None:
        if self.models:
            return self.models[0]
        if not self.roots:
            return None
        return max(self.roots, key=lambda m: sum(p.numel() for p in m.parameters()))

    def _settings(self) -> dict[str, Any]:
        model = self._main_model()
        s: dict[str, Any] = {
            "model": None,
            "model_class": None,
            "parameters": None,
            "param_dtypes": {},
            "input_shapes": [],
            "autocast_dtype": self.autocast,
        }
        if model is not None:
            cls = type(model)
            params = list(model.parameters())
            s.update(
                model=cls.__name__,
                model_class=f"{cls.__module__}.{cls.__qualname__}",
                parameters=sum(p.numel() for p in params),
                trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
                input_shapes=self.input_shapes.get(id(model), []),
            )
            dtypes: dict[str, int] = {}
            for p in params:
                key = str(p.dtype).removeprefix("torch.")
                dtypes[key] = dtypes.get(key, 0) + p.numel()
            s["param_dtypes"] = dtypes
            s.update(_model_description(model))
            try:
                adapter = adapter_description(model)  # a peft LoRA model (memprof.profiler.adapters)
            except Exception:  # a LoRA layer of another peft version: the profile goes on without it
                adapter = None
            if adapter is not None:
                s["adapter"] = adapter
        opts = [
            {
                "optimizer": type(o).__name__,
                "optimizer_class": f"{type(o).__module__}.{type(o).__qualname__}",
                "optimizer_defaults": _jsonable(dict(o.defaults)),
            }
            for o in self.optimizers
        ]
        s.update(opts[0] if opts else {"optimizer": None, "optimizer_class": None, "optimizer_defaults": None})
        if len(opts) > 1:
            s["optimizers"] = opts
        counts = self.hooks.counts if self.hooks else dict.fromkeys(PHASES, 0)
        s.update(
            forward_calls=counts[Phase.FORWARD.value],
            backward_calls=counts[Phase.BACKWARD.value],
            optimizer_steps=self.steps,
            warmup_steps=self.warmup,
        )
        # the loop's choices (memprof estimate --keep-output/--no-keep-output, --zero-grad)
        if self.output_kept is not None:
            s["output_kept"] = self.output_kept
        if self.grads_kept is not None:
            s["zero_grad"] = "zeros" if self.grads_kept else "set-to-none"
        return s

    def _environment(self) -> dict[str, Any]:
        env: dict[str, Any] = {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cuda_version": torch.version.cuda,
            "device_name": None,
            "driver": None,
            "pid": os.getpid(),
        }
        if self.cuda is not None:
            env["device_name"] = torch.cuda.get_device_name(self.cuda.index)
        else:
            env["device_name"] = f"cpu ({platform.machine()})"
        if self.nvml is not None:
            env["driver"] = self.nvml.driver
        return env

    def _build(self, exc: BaseException | None, *, final: bool) -> dict[str, Any]:
        rec = empty_record()
        dev = str(self.device) if self.device is not None else None
        if self.device is not None and self.device.type == "cuda" and self.device.index is None and self.cuda:
            dev = f"cuda:{self.cuda.index}"
        rec.update(
            mode=self.mode,
            device=dev,
            complete=final,
            settings=self._settings(),
            environment=self._environment(),
            duration_s=round(time.perf_counter() - self._t0, 6),
        )
        rec.update(_rank())
        rec["model_states"] = dict(self.model_state_max)
        breakdown: dict[str, int] = {}
        counted: set[int] = set()
        for opt in self.optimizers:
            for key, t in _state_tensors(opt):
                st = T._storage(t)
                if st is not None and id(st) not in counted:
                    counted.add(id(st))
                    breakdown[key] = breakdown.get(key, 0) + st.nbytes()
        rec["optimizer_state_breakdown"] = breakdown

        book = self.tracker.books.get(dev) if self.tracker is not None and dev else None
        cuda_summary = self.cuda.summary() if self.cuda is not None else None
        peak = rec["peak"]
        if book is not None:
            peak["phase"] = book.peak.phase
            peak["allocated"] = book.peak.total
            peak["by_category"].update(T.StorageTracker.public(book.peak.cats))
            peak["detail"] = T.StorageTracker.detail(book.peak.cats, self._engine_seen())
        elif self.mode == "stats":
            peak["note"] = (
                "stats mode attributes no tensors: on CUDA the peak comes from the allocator "
                "counters; on CPU there are none"
            )
        if cuda_summary is not None:
            rows = {k: v for k, v in cuda_summary["phases"].items() if k in PHASES}
            if rows:
                phase = max(rows, key=lambda k: rows[k]["max_memory_allocated"])
                peak["phase"] = phase
            if book is not None:
                peak["detail"]["tracked_tensor_bytes"] = book.peak.total
            peak["allocated"] = cuda_summary["max_memory_allocated"]
            peak["reserved"] = cuda_summary["max_memory_reserved"]
            if peak["allocated"] is not None and peak["reserved"] is not None:
                peak["by_category"][Category.FRAGMENTATION.value] = peak["reserved"] - peak["allocated"]
            peak["by_category"][Category.CUDA_CONTEXT.value] = self.context_bytes
            values = [peak["by_category"][c] for c in CATEGORIES]
            if all(v is not None for v in values):
                peak["device_total"] = sum(values)
        if self.tracker is not None:
            # every device tensors lived on (e.g. CPU batches in a CUDA run), each with its own peak
            rec["devices"] = {
                name: {
                    "peak_allocated": b.peak.total,
                    "peak_phase": b.peak.phase,
                    "by_category": T.StorageTracker.public(b.peak.cats),
                }
                for name, b in self.tracker.books.items()
            }
            rec["timeline"] = self.tracker.timeline_of(dev) if dev else None
        rec["cuda"] = cuda_summary or {"available": False, "reason": self.cuda_reason}
        if self.nvml is not None and self.nvml.available:
            rec["nvml"] = {
                "available": True,
                "reason": None,
                "process_used": self.nvml.max_process_used,
                "cuda_context": self.context_bytes,
            }
        else:
            rec["nvml"] = {
                "available": False,
                "reason": self.nvml.reason
                if self.nvml is not None
                else f"no CUDA device is profiled ({self.cuda_reason})",
            }

        counts = self.hooks.counts if self.hooks else dict.fromkeys(PHASES, 0)
        times = self.hooks.times if self.hooks else dict.fromkeys(PHASES, 0.0)
        for phase in PHASES:
            info: dict[str, Any] = {
                "calls": counts[phase],
                "time_s": round(times[phase], 6),
                "peak": {"allocated": None, "by_category": None},
            }
            snap = book.phase_peaks.get(phase) if book is not None else None
            if snap is not None:
                info["peak"] = {
                    "allocated": snap.total,
                    "by_category": T.StorageTracker.public(snap.cats),
                    "detail": T.StorageTracker.detail(snap.cats, self._engine_seen()),
                }
            created = self.tracker.created.get(phase) if self.tracker is not None else None
            if created is not None:
                info["created_bytes"] = dict(zip(T.CODE_NAMES, created))
            if cuda_summary is not None and phase in cuda_summary["phases"]:
                info["cuda"] = cuda_summary["phases"][phase]
                info["peak"]["allocated"] = info["cuda"]["max_memory_allocated"]
            rec["phases"][phase] = info
        if exc is not None:
            rec["error"] = self._error(exc, dev)
        return rec

    def _engine_seen(self) -> bool:
        """Whether a distributed engine's own buffers were seen (peak.detail then itemizes them)."""
        return self.tracker is not None and self.tracker.engine_seen

    def _error(self, exc: BaseException, dev: str | None) -> dict[str, Any]:
        hooks = self.hooks
        modules = (hooks.fault_modules or list(hooks.module_stack)) if hooks else []
        err: dict[str, Any] = {
            "type": type(exc).__name__,
            "message": str(exc)[:2000],
            "out_of_memory": _is_oom(exc),
            "phase": hooks.phase if hooks else None,
            "module": " > ".join(modules) or None,
            "live_by_category": None,
        }
        book = self.tracker.books.get(dev) if self.tracker is not None and dev else None
        if book is not None:
            err["live_by_category"] = T.StorageTracker.public(book.cats)
            err["live_detail"] = T.StorageTracker.detail(book.cats, self._engine_seen())
            err["live_allocated"] = book.total
        if self.cuda is not None:
            err["cuda_memory_allocated"] = torch.cuda.memory_allocated(self.cuda.index)
            err["cuda_memory_reserved"] = torch.cuda.memory_reserved(self.cuda.index)
        return err


def track(
    model: Any = None,
    optimizer: Any = None,
    *,
    mode: str = "attribution",
    device: str | torch.device | None = None,
    events: bool = True,
    memory_snapshot: bool = False,
    warmup: int = 0,
    capture: bool = True,
) -> Session:
    """Profile the memory of the code inside `with memprof.track(model, optimizer) as run:`.

    model / optimizer: the nn.Module(s) and torch.optim.Optimizer(s) being trained (recommended:
    their existing parameters, gradients and states are counted from the start). Others are
    discovered when they run. mode: "attribution" or "stats". device: which device's memory to
    report (default: the model's). events: keep the allocation timeline (`run.events`).
    memory_snapshot: on CUDA, record torch.cuda.memory history and save it beside the profile.
    warmup: the first `warmup` optimizer steps run but are not measured (the peaks restart after
    them): `warmup=1` profiles the steady state, where the optimizer states exist from the forward on.
    capture: keep what `run.compare()` needs to trace the step on fake tensors when memprof has no
    analytic model of it (memprof.profiler.capture; fake copies of the model and optimizers made when
    the region ends).
    """
    return Session(
        model,
        optimizer,
        mode=mode,
        device=device,
        events=events,
        memory_snapshot=memory_snapshot,
        warmup=warmup,
        capture=capture,
    )


DEFAULT_KEEP = 8


class ProfiledFunction:
    """A training-step function that records a Profile per call.

    Cost stays flat over any number of calls: only the last `keep` profiles are stored
    (`profiles`), and the call with the highest peak is tracked as calls end (`worst`, kept even
    when it is no longer among the last `keep`; `worst_call` is its index, `calls` the count).
    """

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any], out: str | None, keep: int) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._options = options
        self._out = out
        self._found: dict[str, list[weakref.ref]] = {}
        self._profiles: collections.deque[Profile] = collections.deque(maxlen=keep)
        self.keep = keep
        self.calls = 0
        self.worst: Profile | None = None
        self.worst_call: int | None = None
        self._worst_peak: int | None = None

    @property
    def profiles(self) -> list[Profile]:
        """The last `keep` calls' profiles, oldest first."""
        return list(self._profiles)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        options = dict(self._options)
        # what an earlier call discovered is known from the start of the next one, so its
        # existing parameters, gradients and optimizer states count in every phase
        for key, refs in self._found.items():
            if options[key] is None:
                found = [o for o in (r() for r in refs) if o is not None]
                options[key] = found or None
        session = Session(**options)
        raised = True
        try:
            with session:
                result = self._fn(*args, **kwargs)
            raised = False
            return result
        finally:
            if session.started:
                self._record_call(session, user_raised=raised)

    def _record_call(self, session: Session, *, user_raised: bool) -> None:
        self._found = {
            "model": [weakref.ref(m) for m in session.roots],
            "optimizer": [weakref.ref(o) for o in session.optimizers],
        }
        prof = session.profile
        call = self.calls
        self.calls += 1
        self._profiles.append(prof)
        try:
            peak = prof.record.peak.allocated
        except MemprofUserError:  # nothing could be recorded for this call
            peak = None
        is_worst = self.worst is None or (peak is not None and (self._worst_peak is None or peak > self._worst_peak))
        if is_worst:
            self.worst, self.worst_call, self._worst_peak = prof, call, peak
        if not self._out or ("{call}" not in self._out and not is_worst):
            return
        path = self._out.format(call=call) if "{call}" in self._out else self._out
        try:
            prof.save(path)
        except (OSError, MemprofError) as exc:
            # a save failure never replaces the step's own exception, nor stops a training loop
            warnings.warn(
                f"memprof: could not save the profile of call {call} to {path!r} ({exc}); "
                "it is still in .profiles / .worst",
                RuntimeWarning,
                stacklevel=4 if user_raised else 3,
            )

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else functools.partial(self.__call__, obj)

    @property
    def last(self) -> Profile | None:
        return self._profiles[-1] if self._profiles else None


def profile(
    fn: Callable[..., Any] | None = None,
    *,
    model: Any = None,
    optimizer: Any = None,
    mode: str = "attribution",
    device: str | torch.device | None = None,
    events: bool = False,
    memory_snapshot: bool = False,
    out: str | None = None,
    keep: int = DEFAULT_KEEP,
) -> Any:
    """Decorate a training-step function: each call is profiled (`fn.profiles`, `fn.worst`).

    Usable bare (`@memprof.profile`) or with options (`@memprof.profile(model=m, optimizer=opt)`).
    out: a path to save to, checked now; with "{call}" in it every call is saved, otherwise the
    worst call (a failing save warns, it never replaces the step's exception). keep: how many of
    the last calls' profiles to hold (`worst` is kept besides). Events are off by default here (a
    long-running loop would keep every call's timeline).
    """
    # capture=False: a fake copy of the model per call would cost every step; `track` keeps one
    options = dict(
        model=model,
        optimizer=optimizer,
        mode=mode,
        device=device,
        events=events,
        memory_snapshot=memory_snapshot,
        capture=False,
    )
    Session(**options)  # validate the options now, not at the first call
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ParameterError(f"{{keep}} must be a whole number of profiles >= 1, got {keep!r}", "keep")
    if out is not None:
        if not isinstance(out, (str, os.PathLike)):
            raise ParameterError(f"{{out}} must be a path to a .json file, got {out!r}", "out")
        out = os.fspath(out)
        try:
            probe = out.format(call=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ParameterError(f"{{out}} {out!r} may hold only the placeholder {{call}} ({exc!r})", "out") from None
        check_writable(probe, "out")

    def wrap(f: Callable[..., Any]) -> ProfiledFunction:
        return ProfiledFunction(f, options, out, keep)

    return wrap(fn) if fn is not None else wrap


def _quantization_state(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps beside a quantized weight, outside `parameters()`: a 4-bit
    weight's `quant_state` (absmax, code; nested: state2.absmax, state2.code, offset) and an 8-bit
    layer's row scales (`SCB`, on the weight or, after the first forward, on the layer's state)."""
    out: list[torch.Tensor] = []
    for m in module.modules():
        weight = getattr(m, "weight", None)
        qs = getattr(weight, "quant_state", None)
        for holder in (qs, getattr(qs, "state2", None)):
            for name in ("absmax", "code", "offset"):
                t = getattr(holder, name, None)
                if isinstance(t, torch.Tensor):
                    out.append(t)
        for holder in (weight, getattr(m, "state", None)):
            t = getattr(holder, "SCB", None)
            if isinstance(t, torch.Tensor):
                out.append(t)
    return out
