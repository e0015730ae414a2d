"""The interface every parallel engine implements, and the records it returns.

A strategy answers, for one rank of a data-parallel group, the questions the estimate asks of it
(docs/architecture.md, "Parallel engines"):
- where each model state lives (`place`: on the device, sharded or whole, or in host RAM);
- which buffers the engine itself allocates, and for how long (`buffers`: itemized temporaries);
- what the optimizer step adds on this rank (`step_temporaries`: its partition of the scratch);
- whether weights are gathered layer by layer for compute (`gathers_parameters_per_layer`), which
  changes what the activation replay keeps (ZeRO-3 / FSDP full-shard free the gathered copies).
A new engine (FSDP2, DeepSpeed, pipeline, tensor parallel) is one module implementing this class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tensors import ParamTensor

__all__ = [
    "Buffer",
    "EngineBuffers",
    "EngineSchedule",
    "ModelStateBytes",
    "ParallelStrategy",
    "Placement",
    "Position",
    "ceil_div",
    "layer_of",
]

# where the step is, for an engine whose buffers change through it: a transformer block's index, or
# the parts outside the blocks ("embeddings" before them, "head" after them, loss included)
Position = int | str


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def layer_of(name: str) -> int | None:
    """The block index of a parameter name: its first all-digit component ("model.layers.3.mlp...")."""
    return next((int(p) for p in name.split(".") if p.isdigit()), None)


@dataclass(frozen=True)
class Buffer:
    """One itemized temporary buffer on the device, live for the whole step unless `why` says otherwise."""

    name: str
    nbytes: int
    why: str


@dataclass(frozen=True)
class ModelStateBytes:
    """Whole-model (unsharded) bytes of the model states, and of an fp32 copy of all gradients."""

    parameters: int
    gradients: int
    optimizer_states: int
    fp32_gradients: int  # what a CPU optimizer steps when the optimizer is offloaded
    # (parameters, gradients, optimizer states) of one rank when the engine shards tensor by tensor
    # (`ParallelStrategy.local_tensors`): summed over the rank's own tensors, exact
    per_rank: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Placement:
    """Where the model states of one rank live, in bytes."""

    parameters: int
    gradients: int
    optimizer_states: int
    cpu: int  # host RAM this rank needs for offloaded states


@dataclass(frozen=True)
class EngineBuffers:
    """What the engine needs to size its buffers: element counts and bytes per element on the device."""

    num_parameters: int
    grad_bytes: int  # bytes per gradient element
    param_bytes: int  # bytes per parameter element
    largest_layer_parameters: int  # elements of the largest unit gathered at once (a layer, the embeddings)
    gathered_bytes: int | None = None  # bytes per element of gathered weights (FSDP2's param_dtype)
    reduce_bytes: int | None = None  # bytes per element of gradients as reduced (FSDP2's reduce_dtype)
    device: str = "cuda"  # "cpu": the run uses gloo, whose collectives keep copies of their own


@dataclass(frozen=True)
class EngineSchedule:
    """An engine's own device buffers through the step, for the step timeline (estimators/timeline.py).

    Bytes by `Position`: `forward[p]` while p runs forward (`forward_enter[p]`: the moment p is
    entered, when its gathered weights are being copied out beside the previous buffers),
    `forward_end` between forward and backward, `backward[p]` / `backward_enter[p]` likewise, `step`
    during optimizer.step(). With `gathered_gradients`, parameter gradients are produced whole (in the
    dtype of their tensor in the trace) as temporaries; when the backward leaves the positions of a
    unit (`unit_of`), the unit's reduce-scatter input (`reduce_scatter_input[unit]`) is allocated
    beside them, they are freed, the rank's shard becomes the gradient, and the input stays
    referenced until the next unit's reduction; the backward's own `backward[p]` excludes both.
    """

    forward: Mapping[Position, int]
    backward: Mapping[Position, int]
    forward_end: int = 0
    step: int = 0
    forward_enter: Mapping[Position, int] = field(default_factory=dict)
    backward_enter: Mapping[Position, int] = field(default_factory=dict)
    unit_of: Mapping[Position, Position] = field(default_factory=dict)
    reduce_scatter_input: Mapping[Position, int] = field(default_factory=dict)
    # bytes of the unit's own gathered parameters, freed just before its reduction (post-backward reshard)
    resharded_at_reduce: Mapping[Position, int] = field(default_factory=dict)
    gathered_gradients: bool = False


class ParallelStrategy(ABC):
    """How one parallel engine lays out a training step on one rank of `gpus`."""

    name: str = ""

    def __init__(self, gpus: int) -> None:
        self.gpus = gpus

    @abstractmethod
    def place(self, states: ModelStateBytes) -> Placement:
        """Per-rank bytes of parameters, gradients and optimizer states, and host RAM."""

    @abstractmethod
    def buffers(self, sizes: EngineBuffers) -> list[Buffer]:
        """The engine's own buffers on the device (communication buckets, gathered weights)."""

    def step_temporaries(self, whole_model_bytes: int) -> int:
        """The optimizer step's scratch on this rank, given the scratch of stepping the whole model."""
        return whole_model_bytes

    @property
    def gathers_parameters_per_layer(self) -> bool:
        """Whether full weights exist only while their layer runs (gathered, then freed)."""
        return False

    @property
    def states_as_flat_buffer(self) -> bool:
        """Whether the rank keeps its optimizer states as one flat partition (not tensor by tensor)."""
        return False

    @property
    def optimizer_on_host(self) -> bool:
        """Whether the optimizer steps in host memory (offload): no step scratch on the device."""
        return False

    @property
    def compute_without_autocast(self) -> bool:
        """Whether a mixed precision runs as the engine's cast of the gathered weights, not autocast
        (FSDP2's MixedPrecisionPolicy): the forward and backward then run in the compute dtype."""
        return False

    def local_tensors(self, tensors: Sequence[ParamTensor]) -> tuple[ParamTensor, ...] | None:
        """The parameters as this rank holds them when the engine shards each tensor (FSDP2's DTensor
        shards), for exact per-rank model states; None when it does not (flat partitions, whole)."""
        return None

    def schedule(self, tensors: Sequence[ParamTensor], sizes: EngineBuffers) -> EngineSchedule | None:
        """The engine's buffers through the step, when they change with it; None: `buffers()` only."""
        return None
