"""An estimated training run through the caching-allocator simulator: reserved memory and fragmentation.

The step timeline (memprof.estimators.timeline.step_timeline) simulates one step tensor by tensor;
its allocation events are wrapped here in what the training program itself allocates, in the order
a plain PyTorch loop does it, and replayed through `CachingAllocatorSimulator`:

1. model creation: every parameter tensor (`spec.parameter_tensors()` order), then the module
   buffers; with `states_at_creation` the optimizer states too (Adagrad, master-weight schemes);
2. `warmup_steps` full steps, then the measured step. Each step: the BLAS workspaces at the first
   forward (once per run); forward and backward (the timeline's events: activations, autograd's
   gradients, parameter gradients as the backward reaches them); optimizer.step(): on the first
   step the states, parameter by parameter in creation order (torch.optim creates them lazily),
   then the step's temporaries, all live together and freed together (the foreach kernels'
   per-parameter lists); zero_grad(set_to_none=True) frees the gradients in parameter order; the
   loop drops the batch and the outputs before the next forward;
3. peaks are reset when the measured step starts (torch.cuda.reset_peak_memory_stats()): every
   peak reported is the steady-state step's, on top of what the earlier steps left cached.

Sizes the caller knows only as per-device totals (ZeRO shards, a byte count per state) are spread
over the parameters in proportion to their element counts (`spread`, exact to the byte: an
unsharded total of k bytes per element gives each tensor exactly k * numel).

Not modelled: several streams, DDP/FSDP/DeepSpeed communication buckets and flat buffers (their
partitions are single large tensors, not one per parameter), optimizer param groups (foreach runs
once per group), and the data loader's pinned host memory.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import MemprofUserError
from .simulator import Event, OutOfMemory, ReplayCapture, SimResult, simulate

if TYPE_CHECKING:
    from ..activations import ActivationSettings
    from ..models import ModelSpec
    from ..timeline import Timeline
    from .whatif import WhatIf

__all__ = [
    "spread",
    "states_per_parameter",
    "TrainingEvents",
    "training_events",
    "compose_run",
    "replay_run",
    "TrainingSimulation",
    "simulate_training_step",
]


def spread(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights`, as integers summing exactly to `total`.

    Cumulative rounding: part i = floor(total * W_i / W) - floor(total * W_(i-1) / W), so when
    total = k * W every part is exactly k * weight.
    """
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    parts, cum, prev = [], 0, 0
    for w in weights:
        cum += w
        edge = total * cum // whole
        parts.append(edge - prev)
        prev = edge
    return parts


def states_per_parameter(
    params: Sequence[Any], state_tensors: Sequence[Any], *, master_bytes_per_element: int = 0, device: str = "cuda"
) -> list[tuple[int, ...]]:
    """Optimizer state sizes per parameter, aligned with `params`, for `simulate_training_step`.

    state_tensors: `OptimizerSpec.state_tensors(params, dtype)` (each names its parameter; host
    scalars such as Adam's `step` are left out on CUDA). master_bytes_per_element: the fp32 master
    copy of master-weight schemes (Precision.master_bytes), listed first for each parameter (such
    schemes build it with the optimizer: pass states_at_creation=True).
    A state that belongs to no parameter (a shared buffer) goes with the first parameter.
    """
    index = {p.name: i for i, p in enumerate(params)}
    rows: list[list[int]] = [[p.numel * master_bytes_per_element] if master_bytes_per_element else [] for p in params]
    for state in state_tensors:
        if device == "cuda" and getattr(state, "host", False):
            continue
        i = index.get(state.param, 0)
        if rows:
            rows[i].append(state.nbytes)
    return [tuple(r) for r in rows]


@dataclass
class TrainingEvents:
    """The allocation events of an estimated run and where each stretch of it begins."""

    events: list[Event]
    marks: list[tuple[int, str]]  # (first event index, label), in order
    measured_from: int  # index of the measured step's first event
    timeline: Timeline | None = None  # the step's Timeline (byte totals by category, unrounded)

    def where(self, index: int) -> str:
        """The label of the stretch holding event `index` ("step 2 (measured): backward", ...)."""
        starts = [m[0] for m in self.marks]
        i = bisect_right(starts, index) - 1
        return self.marks[max(i, 0)][1]


def _check_bytes(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MemprofUserError(f"{name} must be a non-negative integer number of bytes, got {value!r}")
    return value


def _sizes_list(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (_check_bytes(name, value),)
    if isinstance(value, (str, bytes)):
        _check_bytes(name, value)
    try:
        return tuple(_check_bytes(name, v) for v in value)
    except TypeError:
        raise MemprofUserError(f"{name} must be a number of bytes or a sequence of them, got {value!r}") from None


def _state_rows(optimizer_states: Any, numels: list[int]) -> list[tuple[int, ...]]:
    if isinstance(optimizer_states, int) and not isinstance(optimizer_states, bool):
        total = _check_bytes("optimizer_states", optimizer_states)
        return [(n,) if n else () for n in spread(total, numels)]
    try:
        rows = list(optimizer_states)
    except TypeError:
        raise MemprofUserError(
            f"optimizer_states must be a number of bytes or one entry per parameter, got {optimizer_states!r}"
        ) from None
    if len(rows) != len(numels):
        raise MemprofUserError(
            f"optimizer_states lists {len(rows)} parameters but the model has {len(numels)}; give one entry "
            f"per tensor of spec.parameter_tensors() (bytes, or the sizes of its state tensors), or a total"
        )
    return [tuple(n for n in _sizes_list("optimizer_states", r) if n) for r in rows]


def training_events(
    spec: ModelSpec,
    settings: ActivationSettings,
    *,
    param_bytes: int,
    grad_bytes: int,
    grad_dtype: str,
    optimizer_states: int | Sequence[int | Sequence[int]],
    optimizer_temporaries: int | Sequence[int] = 0,
    warmup_steps: int = 1,
    grad_accumulation: int = 1,
    held_outputs: bool = True,
    states_at_creation: bool = False,
    workspaces: Sequence[int] = (),
    create_graph: bool = False,
    keep_output: bool = True,
    zero_grad: str = "set-to-none",
    engine: Any = None,
) -> TrainingEvents:
    """The allocation events of model creation, `warmup_steps` steps and the measured step.

    Arguments as for `simulate_training_step`; the forward and backward come from step_timeline.
    """
    from ..timeline import step_timeline

    params = spec.parameter_tensors()
    numels = [p.numel for p in params]
    states = _state_rows(optimizer_states, numels)
    temporaries = _temporaries(optimizer_temporaries, numels)
    step: list[Event] = []
    phases: list[str | None] = []
    timeline = step_timeline(
        spec,
        settings,
        param_bytes=param_bytes,
        grad_bytes=grad_bytes,
        grad_dtype=grad_dtype,
        optimizer_state_bytes=sum(map(sum, states)),
        optimizer_temporaries_bytes=sum(temporaries),
        grad_accumulation=grad_accumulation,
        held_outputs=held_outputs,
        states_exist=warmup_steps > 0 or states_at_creation,
        events=step,
        event_phases=phases,
        create_graph=create_graph,
        keep_output=keep_output,
        zero_grad=zero_grad,
        engine=engine,
    )
    run = compose_run(
        [p.name for p in params],
        spread(param_bytes, numels),
        step,
        phases,
        optimizer_states=states,
        optimizer_temporaries=temporaries,
        buffers=_buffers(spec, settings),
        warmup_steps=warmup_steps,
        states_at_creation=states_at_creation,
        workspaces=workspaces,
        # zero_grad(set_to_none=False): the first backward allocates each .grad, and they stay
        persistent_grads=spread(grad_bytes, numels) if zero_grad == "zeros" else None,
    )
    run.timeline = timeline
    return run


def compose_run(
    param_names: Sequence[str],
    param_sizes: Sequence[int],
    step: Sequence[Event],
    step_phases: Sequence[str | None] | None = None,
    *,
    optimizer_states: Sequence[Sequence[int]],
    optimizer_temporaries: Sequence[int] = (),
    buffers: dict[str, int] | None = None,
    warmup_steps: int = 1,
    states_at_creation: bool = False,
    workspaces: Sequence[int] = (),
    persistent_grads: Sequence[int] | None = None,
) -> TrainingEvents:
    """Wrap one step's forward/backward events (step_timeline's `events`) in the program around it.

    param_sizes and optimizer_states (the sizes of each parameter's state tensors) are aligned with
    param_names. The step's parameter gradients are the ids ("grad", name); whatever else the step
    leaves live (the batch, the outputs) is dropped after zero_grad. The step's ids are reused by
    every step (each step frees all of them). persistent_grads: the gradient sizes (aligned with
    param_names) when zero_grad keeps them (set_to_none=False): allocated as the first step's forward
    and backward end, never freed.
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise MemprofUserError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
    if len(param_sizes) != len(param_names) or len(optimizer_states) != len(param_names):
        raise MemprofUserError("param_sizes and optimizer_states need one entry per parameter")
    workspace_sizes = _sizes_list("workspaces", workspaces) if workspaces else ()
    step = list(step)
    phases = list(step_phases) if step_phases is not None else [None] * len(step)
    # what the step leaves live (gradients, the batch and the outputs), in allocation order
    live: dict[Any, None] = {}
    for e in step:
        if e[0] == "alloc":
            live[e[1]] = None
        else:
            live.pop(e[1], None)
    # zero_grad walks the parameters in order (a gradient named otherwise by the trace goes last)
    order = {name: i for i, name in enumerate(param_names)}
    grads = sorted(
        (i for i in live if isinstance(i, tuple) and i[0] == "grad"), key=lambda i: order.get(i[1], len(order))
    )
    held = [i for i in live if not (isinstance(i, tuple) and i[0] == "grad")]
    state_allocs = [
        ("alloc", ("state", name, k), n, 0)
        for name, row in zip(param_names, optimizer_states)
        for k, n in enumerate(row)
    ]

    events: list[Event] = [("alloc", ("param", name), n, 0) for name, n in zip(param_names, param_sizes)]
    events += [("alloc", ("buffer", name), n, 0) for name, n in (buffers or {}).items()]
    if states_at_creation:
        events += state_allocs
    marks = [(0, "model creation")]
    measured_from = 0
    for k in range(warmup_steps + 1):
        label = f"step {k + 1} ({'warm-up' if k < warmup_steps else 'measured'})"
        start = len(events)
        if k == warmup_steps:
            measured_from = start
        if k == 0 and workspace_sizes:
            marks.append((start, f"{label}: BLAS workspaces"))
            events += [("alloc", ("workspace", i), n, 0) for i, n in enumerate(workspace_sizes)]
            start = len(events)
        previous = None
        for j, phase in enumerate(phases):
            if phase != previous or j == 0:
                marks.append((start + j, f"{label}: {phase or 'forward and backward'}"))
                previous = phase
        events += step
        if k == 0 and persistent_grads is not None:
            events += [("alloc", ("grad", name), n, 0) for name, n in zip(param_names, persistent_grads) if n]
        marks.append((len(events), f"{label}: optimizer step"))
        if k == 0 and not states_at_creation:
            events += state_allocs
        events += [("alloc", ("temporary", i), n, 0) for i, n in enumerate(optimizer_temporaries)]
        events += [("free", ("temporary", i)) for i in range(len(optimizer_temporaries))]
        marks.append((len(events), f"{label}: zero_grad and end of step"))
        events += [("free", g) for g in grads]
        events += [("free", i) for i in held]
    return TrainingEvents(events, marks, measured_from, None)


def _temporaries(value: Any, numels: list[int]) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return spread(_check_bytes("optimizer_temporaries", value), numels)
    return list(_sizes_list("optimizer_temporaries", value))


def _buffers(spec: ModelSpec, settings: ActivationSettings) -> dict[str, int]:
    from ..activations import build_trace

    return dict(build_trace(spec, settings).buffers)


@dataclass
class TrainingSimulation:
    """The measured (steady-state) step of an estimated run, as the caching allocator would see it.

    peak_allocated is comparable to torch.cuda.max_memory_allocated() after
    reset_peak_memory_stats() at the start of the step (every request rounded by the allocator);
    peak_requested is the peak of the unrounded tensor bytes (the timeline's peak); peak_reserved
    is comparable to max_memory_reserved(). fragmentation = 1 - allocated/reserved at the moment
    allocated peaks; fragmentation_bytes = reserved - allocated at that moment.
    """

    result: SimResult
    run: TrainingEvents = field(repr=False)
    # the replay's state at the measured step's start and at its reserved peak (explain.summarize)
    capture: ReplayCapture | None = field(default=None, repr=False, compare=False)

    @property
    def peak_allocated(self) -> int:
        return self.result.peak_allocated

    @property
    def peak_requested(self) -> int:
        return self.result.peak_requested

    @property
    def peak_reserved(self) -> int:
        return self.result.peak_reserved

    @property
    def reserved_at_peak(self) -> int:
        return self.result.reserved_at_peak

    @property
    def fragmentation(self) -> float:
        return self.result.fragmentation

    @property
    def fragmentation_bytes(self) -> int:
        return self.result.reserved_at_peak - self.result.peak_allocated

    @property
    def inactive_split(self) -> int:
        return self.result.inactive_split_at_peak

    @property
    def num_alloc_retries(self) -> int:
        """Cache-flushing retries during the measured step."""
        return self.result.num_alloc_retries - self.result.retries_before_reset

    @property
    def oom(self) -> OutOfMemory | None:
        return self.result.oom

    @property
    def oom_where(self) -> str | None:
        return None if self.result.oom is None else self.run.where(self.result.oom.event_index)

    @property
    def measured(self) -> bool:
        """False when the run ran out of memory before the measured step began."""
        return self.result.oom is None or self.result.oom.event_index >= self.run.measured_from

    def what_if(self, candidates: Sequence[str] | None = None) -> WhatIf:
        """Replay the same run under other PYTORCH_CUDA_ALLOC_CONF settings (whatif.what_if)."""
        from .whatif import DEFAULT_CANDIDATES, what_if

        return what_if(
            self.run.events,
            self.result.config,
            self.result.capacity,
            DEFAULT_CANDIDATES if candidates is None else candidates,
            reset_peaks_at=self.run.measured_from,
        )

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["peak"]["scope"] = "measured step" if self.measured else "until the out-of-memory error"
        out["num_alloc_retries"] = self.num_alloc_retries
        out["num_alloc_retries_total"] = self.result.num_alloc_retries
        out["fragmentation_bytes"] = self.fragmentation_bytes
        out["measured_from_event"] = self.run.measured_from
        if out["oom"] is not None:
            out["oom"]["where"] = self.oom_where
        return out


def simulate_training_step(
    spec: ModelSpec,
    settings: ActivationSettings,
    *,
    param_bytes: int,
    grad_bytes: int,
    grad_dtype: str,
    optimizer_states: int | Sequence[int | Sequence[int]],
    optimizer_temporaries: int | Sequence[int] = 0,
    alloc_conf: str | None = None,
    capacity: int | None = None,
    warmup_steps: int = 1,
    grad_accumulation: int = 1,
    held_outputs: bool = True,
    states_at_creation: bool = False,
    workspaces: Sequence[int] = (),
    create_graph: bool = False,
    keep_output: bool = True,
    zero_grad: str = "set-to-none",
    engine: Any = None,
) -> TrainingSimulation:
    """Peak allocated/reserved, fragmentation, retries and the OOM point of a steady-state step.

    spec, settings: the ModelSpec and ActivationSettings of `step_timeline`.
    param_bytes, grad_bytes: what one device holds (spread over spec.parameter_tensors() by element
    count); grad_dtype: the dtype gradients are produced in (as for step_timeline).
    optimizer_states: a total on the device (spread by element count, one tensor per parameter), or
    one entry per parameter tensor: its bytes, or the sizes of its state tensors in creation order
    (`states_per_parameter` builds that from an OptimizerSpec's state tensors).
    optimizer_temporaries: bytes live together inside step() (a total, spread by element count:
    the foreach pattern, one scratch tensor per parameter), or the sizes of those tensors.
    alloc_conf: PYTORCH_CUDA_ALLOC_CONF; capacity: bytes the allocator may reserve (None: no limit).
    warmup_steps: full steps before the measured one (the first creates the optimizer states).
    states_at_creation: the states exist before the first step (Adagrad, master weights).
    workspaces: allocations made at the first forward and kept (overheads.blas_workspace_allocations).
    create_graph: the backward records its own graph (Hessian optimizers; see step_timeline).
    keep_output, zero_grad: the loop's choices (see step_timeline).
    engine: a distributed engine's buffers through the step (parallel.EngineSchedule, see
    step_timeline); they are in the timeline's totals, not allocator events.
    """
    run = training_events(
        spec,
        settings,
        param_bytes=param_bytes,
        grad_bytes=grad_bytes,
        grad_dtype=grad_dtype,
        optimizer_states=optimizer_states,
        optimizer_temporaries=optimizer_temporaries,
        warmup_steps=warmup_steps,
        grad_accumulation=grad_accumulation,
        held_outputs=held_outputs,
        states_at_creation=states_at_creation,
        workspaces=workspaces,
        create_graph=create_graph,
        keep_output=keep_output,
        zero_grad=zero_grad,
        engine=engine,
    )
    return replay_run(run, alloc_conf, capacity)


def replay_run(run: TrainingEvents, alloc_conf: str | None = None, capacity: int | None = None) -> TrainingSimulation:
    """Replay a composed run; peaks are reset when its measured step begins."""
    capture = ReplayCapture()
    result = simulate(run.events, alloc_conf, capacity, reset_peaks_at=run.measured_from, capture=capture)
    return TrainingSimulation(result, run, capture)
