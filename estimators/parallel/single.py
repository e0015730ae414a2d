"""One device, no data parallelism: every state whole on the device, no engine buffers."""

from __future__ import annotations

from ._base import Buffer, EngineBuffers, ModelStateBytes, ParallelStrategy, Placement


class SingleDevice(ParallelStrategy):
    name = "single device"

    def place(self, states: ModelStateBytes) -> Placement:
        return Placement(states.parameters, states.gradients, states.optimizer_states, 0)

    def buffers(self, sizes: EngineBuffers) -> list[Buffer]:
        return []
