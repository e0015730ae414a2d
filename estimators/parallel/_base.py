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
from dataclasses import dataclass

__all__ = ["Buffer", "EngineBuffers", "ModelStateBytes", "ParallelStrategy", "Placement", "ceil_div"]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


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
