"""One training step as a timeline of live bytes by category, and its peak.

The forward replay of `activations.build_trace` is simulated tensor by tensor:
- forward: each operation allocates its outputs; a tensor is freed after its last use unless autograd
  saved it (or a checkpoint kept it as a region input, or the caller holds it: inputs, logits, loss);
  the head's input (the base model's last hidden state, marked `forward_local` by the family) lives
  until the forward returns; with keep_output=False the output's tensors go then too, the loss stays;
  autocast's weight copies stay cached until the forward ends;
- backward: operations run in reverse; each allocates the gradients of its differentiable inputs
  (parameter gradients stay, in the gradient dtype), then releases the gradients of its outputs and
  its saved tensors; a broadcasting product (`weight * x`, `x * rstd`) also holds, for its smaller
  operand, the full-size product the engine sums down only after the operation returns. A
  checkpointed region is first recomputed (its saved tensors reappear) when the
  backward reaches it;
- optimizer step: parameters, full gradients, optimizer states and the optimizer's temporaries
  (a foreach implementation allocates lists the size of the parameters; fused and single-tensor ones
  only a few parameter-sized buffers: the caller passes the figure).
The peak is the maximum over every simulated moment; the timeline keeps one point per segment
(forward / backward of each layer, the head, the optimizer step) holding that segment's maximum.

With `events`, the simulated tensors are also written out as allocator events, in order, for the
allocator simulator (memprof.estimators.allocator.training): ("alloc", id, nbytes, 0) / ("free", id)
for every tensor of the forward replay (int ids), activation gradients (negative int ids),
parameter gradients (("grad", name), when the backward produces them) and, under accumulation,
the engine's pending parameter gradients (("grad_acc", name)). Model states and buffers are not
events (the caller owns them); parameter gradients and what the caller holds (batch, logits, loss)
are still live when the stream ends, as when optimizer.step() starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from .activations import ActivationSettings, build_trace, region_inputs
from .autograd import Op, Region, T, Trace
from .dtypes import dtype_bytes
from .errors import MemprofUserError
from .vocabulary import CATEGORIES, Category, Phase

if TYPE_CHECKING:
    from .models import ModelSpec
    from .parallel import EngineSchedule

__all__ = ["PEAK_ITEMS", "ZERO_GRAD", "Timeline", "TimelinePoint", "Peak", "step_timeline"]

PEAK_ITEMS = 3  # how many of the largest temporaries at the peak a timeline names
# what the loop's zero_grad does between steps: torch.optim.Optimizer.zero_grad(set_to_none=True),
# torch 2's default, frees every .grad; set_to_none=False (torch 1.x's default) zeroes them in place
# (p.grad.zero_(), or torch._foreach_zero_ per device and dtype with foreach: no allocation either way)
ZERO_GRAD = ("set-to-none", "zeros")

# an allocator event, ("alloc", id, nbytes, 0) or ("free", id): allocator.simulator.Event, spelled out
# here because the allocator package imports this module (and not the other way round)
Event: TypeAlias = tuple[Any, ...]

_P, _G, _S = Category.PARAMETERS.value, Category.GRADIENTS.value, Category.OPTIMIZER_STATES.value
_A, _TMP = Category.ACTIVATIONS.value, Category.TEMPORARY.value


@dataclass(frozen=True)
class TimelinePoint:
    """The largest moment of one segment of the step."""

    phase: str
    label: str
    by_category: dict[str, int]

    @property
    def allocated(self) -> int:
        return sum(self.by_category.values())


class Peak(NamedTuple):
    phase: str
    allocated: int
    by_category: dict[str, int]


@dataclass
class Timeline:
    points: list[TimelinePoint] = field(default_factory=list)
    _peak_total: int = -1
    # what was live at the latest peak moment, named only when asked (naming every new peak of a
    # growing forward cost O(ops x live tensors): benchmarks/cold_start.py)
    _peak_items: Callable[[], list[tuple[str, int]]] | None = None

    @property
    def peak_temporaries(self) -> list[tuple[str, int]]:
        """The tensors of the `temporary` category live at the peak moment, largest first: (what, bytes)."""
        items = self._peak_items() if self._peak_items is not None else []
        return sorted((i for i in items if i[1] > 0), key=lambda i: -i[1])[:PEAK_ITEMS]

    def __iter__(self) -> Iterator[TimelinePoint]:
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def peak_point(self) -> TimelinePoint:
        return max(self.points, key=lambda p: p.allocated)

    @property
    def peak(self) -> Peak:
        p = self.peak_point
        return Peak(p.phase, p.allocated, dict(p.by_category))


class _Segment:
    """Collects the maximum moment of a labelled stretch of the simulation."""

    def __init__(self, timeline: Timeline):
        self.timeline = timeline
        self.phase: str | None = None
        self.label: str | None = None
        self.best: dict[str, int] | None = None
        self.current: Op | None = None  # the operation being simulated (for debugging a mismatch)

    def start(self, phase: str, label: str) -> None:
        self.flush()
        self.phase, self.label, self.best = phase, label, None

    def see(
        self, by_category: dict[str, int], temporaries: Callable[[], Callable[[], list[tuple[str, int]]]] | None = None
    ) -> None:
        """`temporaries()` snapshots what is live (cheaply) and returns the function that names it."""
        total = sum(by_category.values())
        if self.best is None or total > sum(self.best.values()):
            self.best = dict(by_category)
        if total > self.timeline._peak_total:  # a new peak moment of the whole step: remember what is live
            self.timeline._peak_total = total
            self.timeline._peak_items = temporaries() if temporaries is not None else None

    def flush(self) -> None:
        if self.best is not None:
            assert self.phase is not None and self.label is not None  # see() comes after start()
            self.timeline.points.append(TimelinePoint(self.phase, self.label, self.best))
        self.best = None


def _check_nonneg(**kw: object) -> None:
    for k, v in kw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise MemprofUserError(f"{k} must be a non-negative integer number of bytes, got {v!r}")


def step_timeline(
    spec: ModelSpec,
    settings: ActivationSettings,
    *,
    param_bytes: int,
    grad_bytes: int,
    grad_dtype: str,
    optimizer_state_bytes: int,
    optimizer_temporaries_bytes: int,
    grad_accumulation: int = 1,
    held_outputs: bool = True,
    states_exist: bool = True,
    events: list[Event] | None = None,
    event_phases: list[str | None] | None = None,
    create_graph: bool = False,
    backward: bool = True,
    keep_output: bool = True,
    zero_grad: str = "set-to-none",
    gradient_residency: Callable[[Sequence[str]], int] | None = None,
    engine: EngineSchedule | None = None,
    trace_filter: Callable[[Trace], Trace] | None = None,
) -> Timeline:
    """The live bytes of one optimizer step (all its micro-batches) by phase and category.

    param_bytes, grad_bytes, optimizer_state_bytes: full steady-state sizes (what stays resident).
    grad_dtype: the dtype gradients are produced in (each parameter's gradient appears when the
    backward reaches its layer; their total is scaled to grad_bytes). optimizer_temporaries_bytes:
    the optimizer's peak scratch memory during step(). held_outputs: the caller keeps the model
    output (logits, loss) and the batch alive through backward and step, as a training loop that
    writes `out = model(**batch)` does. states_exist: False for the very first step, when the
    optimizer allocates its states inside step(). events / event_phases: lists that receive the
    allocation events of the simulated tensors and the phase of each (module docstring).
    create_graph: the backward is `loss.backward(create_graph=True)` (Hutchinson Hessian optimizers):
    the graph is retained and the backward records its own (module docstring), so the forward's saved
    tensors and the activation gradients the double backward needs stay live through step().
    backward: False for gradient-free (population) optimizers: each step evaluates the model under
    torch.no_grad (nothing saved, no weight cache, no checkpoint regions) and runs no backward; the
    forward replay stands for one member's evaluation, members being evaluated one after another.
    keep_output: with held_outputs, whether the loop keeps the whole model output (`out =
    model(**batch)`: logits, the use_cache key/value cache) through backward and step, or only the
    loss (`loss = model(**batch).loss`, what the Hugging Face Trainer's compute_loss returns): then
    every output tensor autograd did not save is freed after its last use in the forward.
    zero_grad: "set-to-none" (gradients are freed after each step, so the forward runs without them
    and the first backward allocates them) or "zeros" (`zero_grad(set_to_none=False)`: they stay
    allocated, live through the next forward, and every backward computes each parameter gradient
    into a temporary the engine adds into `.grad` in place, torch/csrc/autograd/functions/
    accumulate_grad.h: `variable_grad += new_grad` when the gradient exists and grad mode is off).

    trace_filter: what of the model's forward this device runs (a pipeline stage's blocks,
    parallel.pipeline.PipelineStage.filter_trace).
    gradient_residency: for an engine that handles each parameter gradient in a hook as it is
    produced (DeepSpeed ZeRO copies it into its reduction bucket and frees it): the gradient bytes
    live in the backward (the engine's buckets included), given the names of the parameters whose
    gradients were produced so far, in backward order; None keeps every gradient produced.

    `Timeline.peak_temporaries` names the largest tensors of the temporary category live at the
    peak moment (activation gradients by the tensor they are the gradient of, e.g. "gradient of the
    log-softmax of the logits (float32)").
    """
    _check_nonneg(
        param_bytes=param_bytes,
        grad_bytes=grad_bytes,
        optimizer_state_bytes=optimizer_state_bytes,
        optimizer_temporaries_bytes=optimizer_temporaries_bytes,
    )
    if not isinstance(grad_accumulation, int) or grad_accumulation < 1:
        raise MemprofUserError(f"grad_accumulation must be a positive integer, got {grad_accumulation!r}")
    if zero_grad not in ZERO_GRAD:
        raise MemprofUserError(f"zero_grad must be one of {', '.join(ZERO_GRAD)}, got {zero_grad!r}")
    persistent = zero_grad == "zeros" and backward  # gradients outlive the step
    gbytes = dtype_bytes(grad_dtype)
    tr = build_trace(spec, settings)
    if trace_filter is not None:  # a pipeline stage: its part of the forward (parallel.pipeline)
        tr = trace_filter(tr)
    traced = sum(p.numel for p in tr.params.values() if p.requires_grad) * gbytes  # frozen weights get none
    grad_scale = grad_bytes / traced if traced else 0.0

    def pgrad(p: T) -> int:
        return round(p.numel * gbytes * grad_scale)

    sim = _Sim(tr, pgrad, held_outputs, create_graph, grad_mode=backward, keep_output=keep_output)
    sim.engine = engine  # a distributed engine's buffers through the step (_Sim.engine_enter)
    timeline = Timeline()
    seg = _Segment(timeline)
    if events is not None:
        sim.events, sim.event_phases, sim.seg = events, event_phases, seg
    states = optimizer_state_bytes if states_exist else 0
    for micro in range(grad_accumulation):
        base = {_P: param_bytes, _S: states, _G: grad_bytes if micro or persistent else 0}
        suffix = f" (micro-batch {micro + 1}/{grad_accumulation})" if grad_accumulation > 1 else ""
        sim.forward(seg, base, suffix)
        if not backward:
            continue
        sim.backward(
            seg, base, suffix, accumulate=micro > 0 or persistent, grad_bytes=grad_bytes, residency=gradient_residency
        )
        if create_graph and micro < grad_accumulation - 1:
            sim.carry_graph()
    seg.start(Phase.OPTIMIZER_STEP.value, "optimizer step")
    inputs = sum(t.nbytes for t in tr.held if getattr(t, "is_input", False)) if held_outputs else 0
    outputs = sim.held_bytes() - inputs
    seg.see(
        {
            _P: param_bytes,
            _G: grad_bytes,
            _S: optimizer_state_bytes,
            _A: outputs + sim.retained_bytes() + sim.carried[_A],
            _TMP: optimizer_temporaries_bytes
            + inputs
            + sim.buffer_bytes
            + sim.graph_grad_bytes
            + sim.carried[_TMP]
            + (engine.step if engine is not None else 0),
        },
        lambda: sim.temporaries(
            extra=(("optimizer step scratch", optimizer_temporaries_bytes), ("the batch", inputs)), skip_batch=True
        ),
    )
    seg.flush()
    for p in timeline.points:
        for c in CATEGORIES:
            p.by_category.setdefault(c, 0)
    return timeline


# operations whose backward hands the output's gradient to an input unchanged (same size and dtype)
_PASS_THROUGH = frozenset({"add", "copy"})

# create_graph=True: the backward of each operation is recorded for the double backward, and
# what that recording saves stays alive (derivatives.yaml / FunctionsManual.cpp, torch 2.13).
# Per operation: (does it save the gradient of its output, how many more tensors of that
# gradient's size it keeps). The gradient is saved by mm / addmm / bmm (linear, matmul:
# `mat1^T @ grad`, `grad @ mat2^T`), mul (`grad * other`, `grad * self`),
# native_layer_norm_backward (layer_norm_double_backward needs grad_out),
# _softmax_backward_data / _log_softmax_backward_data and tanh_backward (grad_output). Composite
# backward formulas keep their intermediates as well:
# - pow: `grad * (exponent * self.pow(exponent - 1))` saves grad and the product in brackets;
# - rsqrt: `-0.5 * grad * result.pow(3)` saves `-0.5 * grad` and `result.pow(3)`, not grad;
# - silu (infinitely_differentiable_silu_backward under grad mode):
#   `grad * sigmoid * (1.0 + input * (1.0 - sigmoid))` saves grad, sigmoid, `grad * sigmoid`,
#   `1.0 - sigmoid` and `1.0 + input * (...)`.
# Operations whose backward only scales, masks, views, pads or reduces the gradient save none of
# it: mul by a scalar, add, neg, cat, native_dropout_backward (mask), embedding_dense_backward
# (indices), mean (expand), nll_loss_backward (target), copies and views.
# Autograd saves an input of a recorded op only if it is needed for an input that requires grad:
# `grad * other` (mul) and `grad @ other` (matmul) keep grad only when other requires grad, so a
# product with a constant (rotary cos / sin) saves no gradient.
_BINARY = frozenset({"mul", "matmul"})
_DOUBLE_BACKWARD_KEEPS = {
    "linear": (True, 0),
    "matmul": (True, 0),
    "mul": (True, 0),
    "layer_norm": (True, 0),
    "softmax": (True, 0),
    "log_softmax": (True, 0),
    "tanh": (True, 0),
    "pow": (True, 1),
    "rsqrt": (False, 2),
    "silu": (True, 4),
}


def _broadcast_reduction(op: Op) -> int:
    """A broadcasting product's backward (`weight * x`, `x * rstd`): the gradient of the smaller
    operand is computed at the output's size (mul_tensor_backward: grad * other) and summed down to
    its shape by the engine only after the operation returns (torch/csrc/autograd/engine.cpp,
    validate_outputs: `metadata.reduce_grad(grad)`), so that full-size product is live with the
    operation's other gradients: a transient of the output's size per such operand."""
    if op.op != "mul" or not op.outputs:
        return 0
    out = op.outputs[0]
    return sum(out.nbytes for t in op.inputs[:2] if t.requires_grad and t.numel < out.numel)


class _GradBuf:
    """One gradient tensor; several activations can share it (add passes its gradient through)."""

    __slots__ = ("nbytes", "refs", "eid", "pinned", "label")

    def __init__(self, nbytes: int, label: str = "activation gradient"):
        self.nbytes, self.refs, self.eid, self.pinned, self.label = nbytes, 1, 0, False, label


class _Sim:
    """Replays the trace tensor by tensor, keeping running byte totals by category."""

    def __init__(
        self,
        tr: Trace,
        pgrad: Callable[[T], int],
        held_outputs: bool,
        create_graph: bool = False,
        grad_mode: bool = True,
        keep_output: bool = True,
    ):
        self.tr, self.pgrad = tr, pgrad
        self.create_graph = create_graph
        self.graph_grad_bytes = 0  # create_graph: tensors of the backward's own graph (module docstring)
        self.carried = {_A: 0, _TMP: 0}  # create_graph: the graphs of earlier micro-batches
        self.ops = tr.ops
        self.held = {id(t): t for t in tr.held} if held_outputs else {}
        # `loss = model(**batch).loss`: the output object holds its tensors until the forward returns,
        # then the loop keeps the batch and the loss only; what autograd saved of the rest stays
        self.released_at_forward_end: list[T] = []
        if not keep_output and tr.held:
            self.released_at_forward_end = [
                t for t in self.held.values() if not getattr(t, "is_input", False) and t is not tr.held[-1]
            ]
        # the head's forward holds the base model's output (`outputs.last_hidden_state`, a local of
        # the *For*.forward) until it returns, whatever the head did with it (a families' mark)
        self.released_at_forward_end += [
            t for op in tr.ops for t in op.outputs if getattr(t, "forward_local", False) and id(t) not in self.held
        ]
        self.regions = region_inputs(tr)
        self.region_ops: dict[Region, list[Op]] = {}
        for op in self.ops:
            if op.region is not None:
                self.region_ops.setdefault(op.region, []).append(op)
        self.region_of_input: dict[int, list[Region]] = {}
        for r, ts in self.regions.items():
            for t in ts:
                self.region_of_input.setdefault(id(t), []).append(r)
        # autograd's references: one per (operation outside any checkpointed region, saved tensor)
        self.saved_refs: dict[int, int] = {}
        if not grad_mode:  # under torch.no_grad autograd saves nothing and checkpoints nothing
            self.regions, self.region_of_input = {}, {}
        for op in self.ops if grad_mode else ():
            if op.region is None:
                for _, t in op.saved:
                    if t.kind != "param":
                        self.saved_refs[id(t)] = self.saved_refs.get(id(t), 0) + 1
        self.last_use: dict[int, int] = {}
        for i, op in enumerate(self.ops):
            for t in op.inputs:
                self.last_use[id(t)] = i
        # autocast caches its weight casts only for leaves that require grad, under grad mode
        self.weight_casts = {id(t) for t in tr.weight_casts.values()} if grad_mode else set()
        self.producer: dict[int, Op] = {id(t): op for op in self.ops for t in op.outputs}
        self.names: dict[int, str] = {}
        self.live_tmp: dict[int, T] = {}  # the live tensors of the temporary category
        self.buffer_bytes = sum(tr.buffers.values())
        self.live: dict[int, tuple[T, str]] = {}
        self.totals = {_A: 0, _TMP: 0}
        self.recomputed: dict[int, int] = {}  # recomputed saved tensor -> saves still pending
        self.events: list[Event] | None = None  # allocation-event sink (see the module docstring)
        self.event_phases: list[str | None] | None = None
        self.seg: _Segment | None = None
        self.grad_ids = 0
        # a distributed engine's buffers (parallel._base.EngineSchedule): its bytes now, the parameter
        # gradients produced whole per unit (and their shards), the reduce-scatter input in flight,
        # the gradient shards reduced so far, and where the step is
        self.engine: EngineSchedule | None = None
        self.engine_bytes = 0
        self.whole_grads: dict[Any, int] = {}
        self.whole_shards: dict[Any, int] = {}
        self.in_flight = 0
        self.engine_grads = 0
        self.engine_pos: Any = None

    def emit(self, event: Event) -> None:
        events, seg = self.events, self.seg
        assert events is not None and seg is not None  # emit() only runs with an event sink
        events.append(event)
        if self.event_phases is not None:
            self.event_phases.append(seg.phase)

    def new_grad(self, nbytes: int, of: T | None = None) -> _GradBuf:
        label = "activation gradient"
        if of is not None:
            name = self.name_of(of)
            label = f"gradient of the {name}" + ("" if of.dtype in name else f" ({of.dtype})")
        g = _GradBuf(nbytes, label)
        if self.events is not None:
            self.grad_ids -= 1
            g.eid = self.grad_ids
            self.emit(("alloc", g.eid, nbytes, 0))
        return g

    def release_grad(self, g: _GradBuf) -> None:
        if self.events is not None:
            self.emit(("free", g.eid))

    # -- naming what is live at the peak -------------------------------------------------------
    def name_of(self, t: T) -> str:
        """What a reader calls the tensor: "logits", "loss", "log-softmax of the logits", else
        "module: operation"."""
        name = self.names.get(id(t))
        if name is not None:
            return name
        held = self.tr.held
        op = self.producer.get(id(t))
        if held and t is held[-1]:
            name = "loss"
        elif getattr(t, "is_input", False):
            name = f"batch: {t.name}"
        elif any(t is h for h in held) and t.kind == "act":
            name = "logits"
        elif op is not None and op.op == "to_copy" and op.inputs and self.name_of(op.inputs[0]) == "logits":
            name = f"logits in {t.dtype}"
        elif (
            op is not None and op.op == "log_softmax" and op.inputs and self.name_of(op.inputs[0]).startswith("logits")
        ):
            name = "log-softmax of the logits"
        else:
            where = op.module if op is not None and op.module else None
            name = f"{where}: {t.name}" if where else t.name
        self.names[id(t)] = name
        return name

    def _temporaries_now(
        self,
        grads: Mapping[int, _GradBuf],
        pending: Mapping[str, int],
        transient: int,
        scratch: tuple[str, int] = ("", 0),
    ) -> Callable[[], list[tuple[str, int]]]:
        """`scratch`: what the operation's own backward holds (named, bytes), e.g. a dequantized weight."""
        return self.temporaries(grads, sum(pending.values()), transient, extra=(scratch,) if scratch[1] else ())

    def temporaries(
        self,
        grads: Mapping[int, _GradBuf] | None = None,
        pending: int = 0,
        transient: int = 0,
        extra: Sequence[tuple[str, int]] = (),
        skip_batch: bool = False,
    ) -> Callable[[], list[tuple[str, int]]]:
        """The tensors of the temporary category live now (module docstring): a snapshot taken now,
        returned as the function that names them (`extra` first; `skip_batch` leaves out the batch's
        own tensors when `extra` counts the batch as one item)."""
        live = tuple(self.live_tmp.values())
        gradients = [(g.label, g.nbytes) for g in {id(g): g for g in grads.values()}.values()] if grads else []
        fixed = [
            ("module buffers", self.buffer_bytes),
            ("parameter gradients awaiting accumulation", pending),
            ("the backward's own graph (create_graph)", self.graph_grad_bytes + transient),
            ("earlier micro-batches' graphs (create_graph)", self.carried[_TMP]),
        ]

        def named() -> list[tuple[str, int]]:
            tensors = [(f"{self.name_of(t)} ({t.dtype})", t.nbytes) for t in live]
            if skip_batch:
                tensors = [item for item in tensors if not item[0].startswith("batch: ")]
            return [*extra, *tensors, *gradients, *fixed]

        return named

    # -- bookkeeping --------------------------------------------------------------------------
    def kept(self, t: T) -> bool:
        i = id(t)
        return i in self.held or self.saved_refs.get(i, 0) > 0 or i in self.region_of_input

    def held_bytes(self) -> int:
        return sum(t.nbytes for t in self.held.values())

    def retained_bytes(self) -> int:
        """What the backward left alive besides the caller's tensors: the retained graph's saved tensors."""
        return sum(t.nbytes for t, _ in self.live.values() if id(t) not in self.held)

    def carry_graph(self) -> None:
        """create_graph under gradient accumulation: the accumulated .grad keeps each micro-batch's
        graph, so what this one retained stays while the next micro-batch replays the trace."""
        for t, cat in list(self.live.values()):
            if id(t) not in self.held:
                self.carried[cat] += t.nbytes
                self.live.pop(id(t))
                self.live_tmp.pop(id(t), None)
                self.totals[cat] -= t.nbytes
        self.carried[_TMP] += self.graph_grad_bytes
        self.graph_grad_bytes = 0

    def keep_for_double_backward(self, op: Op, g: _GradBuf) -> None:
        """create_graph: what the recorded backward of `op` saves of its output gradient `g`."""
        saves_grad, extra = _DOUBLE_BACKWARD_KEEPS.get(op.op, (False, 0))
        if op.op in _BINARY and not all(t.requires_grad for t in op.inputs[:2]):
            saves_grad = False  # `grad * other` keeps grad only to differentiate w.r.t. other
        if saves_grad:
            g.pinned = True  # counted in graph_grad_bytes once no activation refers to it
        self.graph_grad_bytes += extra * g.nbytes
        if extra and self.events is not None:
            # alive until the graph goes after the step (the allocator replay frees what a step leaves)
            self.grad_ids -= 1
            self.emit(("alloc", self.grad_ids, extra * g.nbytes, 0))

    def add(self, t: T) -> None:
        if id(t) in self.live:
            return
        if getattr(t, "is_input", False):
            cat = _TMP  # the batch: the profiler files inputs under temporary
        elif self.kept(t) or id(t) in self.recomputed:
            cat = _A
        else:
            cat = _TMP
        self.live[id(t)] = (t, cat)
        self.totals[cat] += t.nbytes
        if cat == _TMP:
            self.live_tmp[id(t)] = t
        if self.events is not None:
            self.emit(("alloc", id(t), t.nbytes, 0))

    def drop(self, t: T) -> None:
        entry = self.live.pop(id(t), None)
        self.live_tmp.pop(id(t), None)
        if entry is not None:
            self.totals[entry[1]] -= t.nbytes
            if self.events is not None:
                self.emit(("free", id(t)))

    def snapshot(self, base: dict[str, int], extra_grads: int = 0, act_grads: int = 0) -> dict[str, int]:
        out = dict(base)
        out[_A] = self.totals[_A] + self.carried[_A]
        out[_TMP] = self.totals[_TMP] + self.buffer_bytes + act_grads + self.carried[_TMP]
        out[_G] = out.get(_G, 0) + extra_grads
        if self.engine is not None:
            out[_TMP] += self.engine_bytes + sum(self.whole_grads.values()) + self.in_flight
            out[_G] += self.engine_grads
        return out

    # -- a distributed engine's buffers (parallel._base.EngineSchedule) --------------------------
    def engine_enter(self, phase: str, layer: int | None, see: Callable[[], None]) -> None:
        """The step reaches `layer` (None: outside the blocks): the engine's buffers change; leaving
        a unit in backward reduces its gradients."""
        e = self.engine
        if e is None:
            return
        old = self.engine_pos
        if isinstance(layer, int):
            pos: Any = layer
        elif phase == Phase.FORWARD.value:
            pos = "embeddings" if old is None else "head"
        else:
            pos = "head" if old is None or old == "head" else "embeddings"
        if phase == Phase.BACKWARD.value and old is not None and e.unit_of.get(old) != e.unit_of.get(pos):
            self.engine_reduce(e.unit_of.get(old), see)
        self.engine_pos = pos
        table, enter = (e.forward, e.forward_enter) if phase == Phase.FORWARD.value else (e.backward, e.backward_enter)
        if pos in enter:
            self.engine_bytes = enter[pos]
            see()
        self.engine_bytes = table.get(pos, self.engine_bytes)

    def engine_reduce(self, unit: Any, see: Callable[[], None]) -> None:
        """A unit's post-backward: its gathered weights are freed, the previous reduce-scatter input
        released, its whole gradients copied into its own input and freed; the shards remain."""
        e = self.engine
        assert e is not None
        self.engine_bytes -= e.resharded_at_reduce.get(unit, 0)
        self.in_flight = e.reduce_scatter_input.get(unit, 0)
        see()  # the whole gradients beside the reduce-scatter input
        self.whole_grads.pop(unit, None)
        self.engine_grads += self.whole_shards.pop(unit, 0)

    def engine_end_backward(self, see: Callable[[], None]) -> None:
        if self.engine is None:
            return
        for unit in list(self.whole_grads):
            self.engine_reduce(unit, see)
        self.in_flight = 0  # the root's post-backward callback waits for the last reduction
        self.engine_bytes = 0
        self.engine_pos = None

    # -- forward --------------------------------------------------------------------------------
    def forward(self, seg: _Segment, base: dict[str, int], suffix: str) -> None:
        for t in self.released_at_forward_end:
            self.held[id(t)] = t
        layer: int | str | None = "start"  # no layer seen yet
        seg.start(Phase.FORWARD.value, "forward: embeddings" + suffix)
        self.engine_pos, self.engine_grads = None, 0
        for i, op in enumerate(self.ops):
            if op.layer != layer:
                layer = op.layer
                label = f"forward: layer {layer}" if layer is not None else "forward: head and loss"
                if op.layer is not None or (i > 0 and self.ops[i - 1].layer is not None):
                    seg.start(Phase.FORWARD.value, label + suffix)
                self.engine_enter(Phase.FORWARD.value, op.layer, lambda: seg.see(self.snapshot(base)))
            for t in op.outputs:
                self.add(t)
            seg.current = op
            seg.see(self.snapshot(base), self.temporaries)
            for t in op.inputs + op.outputs:
                if self.last_use.get(id(t), -1) <= i and not self.kept(t) and id(t) not in self.weight_casts:
                    self.drop(t)
        # leaving autocast drops its weight cache; only what autograd saved stays
        for t in self.tr.weight_casts.values():
            if not self.kept(t):
                self.drop(t)
        for t in self.released_at_forward_end:  # the output object dies: `loss = model(**batch).loss`
            del self.held[id(t)]
            if not self.kept(t):
                self.drop(t)
        seg.start(Phase.FORWARD.value, "forward end" + suffix)
        if self.engine is not None:
            self.engine_bytes, self.engine_pos = self.engine.forward_end, None
        seg.see(self.snapshot(base), self.temporaries)

    # -- backward -------------------------------------------------------------------------------
    def backward(
        self,
        seg: _Segment,
        base: dict[str, int],
        suffix: str,
        *,
        accumulate: bool,
        grad_bytes: int,
        residency: Callable[[Sequence[str]], int] | None = None,
    ) -> None:
        refs = dict(self.saved_refs)
        # a region's inputs are released once every operation of it that runs in backward has run
        region_refs = {
            r: sum(1 for op in ops if any(t.kind == "act" for t in op.outputs)) for r, ops in self.region_ops.items()
        }
        grads: dict[int, _GradBuf] = {}  # activation gradients alive, by tensor (shared buffers)
        grad_total = 0  # bytes of distinct live gradient buffers
        param_done: set[str] = set()
        # parameters whose gradient hook has run, in backward order: a parameter's AccumulateGrad (and
        # the hooks on it) runs once its last use has contributed (a tied weight: at the embeddings)
        produced: list[str] = []
        uses_left: dict[str, int] = {}
        pgrads_before = [0, 0]  # (how many, bytes) of them before the current operation
        pgrads = 0  # parameter gradients produced so far (this micro-batch)
        pending: dict[str, int] = {}  # accumulation: parameter gradients awaiting other uses
        uses: dict[str, int] = {}
        for op in self.ops:
            if any(t.kind == "act" for t in op.outputs):
                for t in op.inputs:
                    if t.kind == "param":
                        uses[t.name] = uses.get(t.name, 0) + 1
        recomputed_regions: set[Region] = set()
        loss = self.tr.held[-1] if self.tr.held else None
        seg.start(Phase.BACKWARD.value, "backward: loss and head" + suffix)
        if loss is not None:
            grads[id(loss)] = self.new_grad(loss.nbytes, loss)
            grad_total += loss.nbytes
        layer = None

        def free_if_unused(t: T) -> None:
            if id(t) in self.held or refs.get(id(t), 0) > 0 or self.recomputed.get(id(t), 0) > 0:
                return
            if any(region_refs.get(r, 0) > 0 for r in self.region_of_input.get(id(t), ())):
                return
            self.drop(t)

        def state(transient: int = 0) -> dict[str, int]:
            b = dict(base)
            b[_G] = 0
            held = grad_bytes if accumulate else pgrads
            if residency is not None and not accumulate:
                # an engine that moves gradients out as they come: its hooks run after the operation
                # that produced them (AccumulateGrad), so this operation's gradients are still whole
                count, done = pgrads_before
                held = residency(produced[:count]) + pgrads - done
            s = self.snapshot(b, extra_grads=held, act_grads=grad_total)
            s[_TMP] += sum(pending.values()) + self.graph_grad_bytes + transient
            return s

        for idx in range(len(self.ops) - 1, -1, -1):
            op = self.ops[idx]
            if not any(id(t) in grads for t in op.outputs):
                continue
            if op.layer != layer:
                layer = op.layer
                label = f"backward: layer {layer}" if layer is not None else "backward: embeddings"
                seg.start(Phase.BACKWARD.value, label + suffix)
                self.engine_enter(Phase.BACKWARD.value, op.layer, lambda: seg.see(state()))
            if op.region is not None and op.region not in recomputed_regions:
                recomputed_regions.add(op.region)
                self._recompute(op.region, seg, state, lambda: self.temporaries(grads, sum(pending.values())))
            pgrads_before[:] = [len(produced), pgrads]
            out = op.outputs[0] if op.outputs else None
            out_buf = grads.get(id(out)) if out is not None else None
            if self.create_graph and out_buf is not None:
                self.keep_for_double_backward(op, out_buf)
            transient = op.backward_scratch  # what the op's backward allocates and frees itself
            reduced = _broadcast_reduction(op)
            transient += reduced
            for t in op.inputs:
                if not t.requires_grad:
                    continue
                if t.kind == "param":
                    if accumulate:
                        # computed, held by the engine until the parameter's last use has
                        # contributed, then added into .grad in place
                        if t.name not in pending:
                            pending[t.name] = self.pgrad(t)
                            if self.events is not None:
                                self.emit(("alloc", ("grad_acc", t.name), pending[t.name], 0))
                    elif t.name not in param_done:
                        param_done.add(t.name)
                        if self.engine is not None and self.engine.gathered_gradients:
                            # produced whole in the gathered dtype; its shard stays after the reduction
                            unit = self.engine.unit_of.get(self.engine_pos)
                            self.whole_grads[unit] = self.whole_grads.get(unit, 0) + t.numel * dtype_bytes(t.dtype)
                            self.whole_shards[unit] = self.whole_shards.get(unit, 0) + self.pgrad(t)
                        else:
                            pgrads += self.pgrad(t)
                        if self.events is not None:
                            self.emit(("alloc", ("grad", t.name), self.pgrad(t), 0))
                    if residency is not None:
                        uses_left[t.name] = uses_left.get(t.name, uses.get(t.name, 1)) - 1
                        if uses_left[t.name] == 0:
                            produced.append(t.name)
                    continue
                nbytes = t.numel * dtype_bytes(t.dtype)
                old = grads.get(id(t))
                if old is not None:
                    # a second contribution: the engine adds in place unless the buffer is shared;
                    # under create_graph out of place (InputBuffer::accumulate): the sum is a new
                    # tensor, and the old one lives on if the recorded graph saved it
                    if old.refs > 1 or old.pinned:
                        old.refs -= 1
                        if old.refs == 0:  # pinned: now only the graph holds it
                            grad_total -= old.nbytes
                            self.graph_grad_bytes += old.nbytes
                        grads[id(t)] = self.new_grad(nbytes, t)
                        grad_total += nbytes
                    elif self.create_graph:
                        transient += nbytes
                    continue
                if (
                    op.op in _PASS_THROUGH
                    and out_buf is not None
                    and out is not None
                    and t.numel == out.numel
                    and t.dtype == out.dtype
                ):
                    out_buf.refs += 1  # add / clone pass the same gradient on
                    grads[id(t)] = out_buf
                else:
                    grads[id(t)] = self.new_grad(nbytes, t)
                    grad_total += nbytes
            seg.current = op
            if transient and self.events is not None:  # the out-of-place sum, freed within the op
                self.grad_ids -= 1
                self.emit(("alloc", self.grad_ids, transient, 0))
                self.emit(("free", self.grad_ids))
            seg.see(
                state(transient),
                functools.partial(
                    self._temporaries_now,
                    grads,
                    pending,
                    transient - op.backward_scratch - reduced,
                    (f"{op.module}: {op.op} backward's scratch (dequantized weight)", op.backward_scratch)
                    if op.backward_scratch
                    else (f"{op.module}: {op.op} gradient before its broadcast is summed away", reduced),
                ),
            )
            for t in op.outputs:
                g = grads.pop(id(t), None)
                if g is not None:
                    g.refs -= 1
                    if g.refs == 0:
                        grad_total -= g.nbytes
                        if g.pinned:
                            self.graph_grad_bytes += g.nbytes
                        else:
                            self.release_grad(g)
            for _, t in [] if self.create_graph else op.saved:  # create_graph retains the graph
                if t.kind == "param":
                    continue
                if op.region is None:
                    refs[id(t)] = refs.get(id(t), 0) - 1
                elif id(t) in self.recomputed:
                    self.recomputed[id(t)] -= 1
                    if self.recomputed[id(t)] <= 0:
                        del self.recomputed[id(t)]
                free_if_unused(t)
            if accumulate:
                for t in op.inputs:
                    if t.kind == "param":
                        uses[t.name] -= 1
                        if uses[t.name] == 0 and pending.pop(t.name, None) is not None and self.events is not None:
                            self.emit(("free", ("grad_acc", t.name)))
            if op.region is not None:
                region_refs[op.region] -= 1
                if region_refs[op.region] == 0:
                    for t in self.regions[op.region]:
                        free_if_unused(t)
        for entry in list(self.live.values()):
            # create_graph retains the graph: what it saved, recomputed tensors included, stays
            if id(entry[0]) not in self.held and not self.create_graph:
                self.drop(entry[0])
        seg.start(Phase.BACKWARD.value, "backward end" + suffix)
        self.engine_end_backward(lambda: seg.see(state()))
        seg.see(state(), lambda: self.temporaries(grads, sum(pending.values())))
        if self.events is not None:
            # the engine releases what is left when backward returns
            for g in {id(g): g for g in grads.values()}.values():
                self.release_grad(g)
            for name in pending:
                self.emit(("free", ("grad_acc", name)))

    def _recompute(
        self,
        region: Region,
        seg: _Segment,
        state: Callable[[], dict[str, int]],
        temporaries: Callable[[], Callable[[], list[tuple[str, int]]]],
    ) -> None:
        """Re-run a checkpointed region's forward: its saved tensors come back for its backward.

        Like torch.utils.checkpoint (non-reentrant, early stop), the recomputation stops as soon as
        the last saved tensor is packed; intermediates nobody saved are freed after their last use.
        """
        region_ops = self.region_ops[region]
        saving = [j for j, op in enumerate(region_ops) if any(t.kind != "param" for _, t in op.saved)]
        if not saving:
            return
        ops = region_ops[: saving[-1] + 1]
        produced = {id(t) for op in ops for t in op.outputs}
        last: dict[int, int] = {}
        # uses after the stop count: what the region's later operations read is still held by the
        # stopped forward's frames (a module's input, its locals) when the early stop is raised
        for j, op in enumerate(region_ops):
            for t in op.inputs:
                last[id(t)] = j
        saved_here: dict[int, int] = {}
        for op in ops:
            for _, t in op.saved:
                if t.kind != "param":
                    saved_here[id(t)] = saved_here.get(id(t), 0) + 1
        added: list[T] = []
        for j, op in enumerate(ops):
            if j == len(ops) - 1 and not any(t is o for _, t in op.saved for o in op.outputs):
                # autograd packs an op's saved inputs before running it: the early stop is
                # raised there, and this last op never runs; the inputs it would have read die
                # with the stopped recomputation
                seg.see(state(), temporaries)
                break
            for t in op.outputs:
                if id(t) not in self.live:
                    if id(t) in saved_here:
                        self.recomputed[id(t)] = saved_here[id(t)]
                    self.add(t)
                    added.append(t)
            seg.current = op
            seg.see(state(), temporaries)
            for t in op.inputs + op.outputs:
                if id(t) in produced and id(t) not in saved_here and last.get(id(t), -1) <= j:
                    self.drop(t)
        # the stopped recomputation unwinds: what it made and nobody saved dies with its frames
        for t in added:
            if id(t) not in saved_here:
                self.drop(t)
