"""Parallel engines: where one rank's tensors live, what the engine allocates, what the step adds.

`strategy_for(gpus, zero, offload)` validates the knobs and returns the engine that runs them:
`SingleDevice`, `DDP` (several GPUs, ZeRO 0) or `ZeRO` (stages 1-3, with offload). Each engine is one
module implementing `ParallelStrategy` (see `_base.py` and docs/architecture.md, "Parallel engines").
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ParameterError
from ..tensors import ParamTensor
from ._base import Buffer, EngineBuffers, ModelStateBytes, ParallelStrategy, Placement
from .ddp import DDP
from .single import SingleDevice
from .zero import ZeRO

__all__ = [
    "DDP",
    "MAX_GPUS",
    "OFFLOADS",
    "ZERO_STAGES",
    "Buffer",
    "EngineBuffers",
    "ModelStateBytes",
    "ParallelStrategy",
    "Placement",
    "SingleDevice",
    "ZeRO",
    "largest_layer_parameters",
    "strategy_for",
]

ZERO_STAGES = (0, 1, 2, 3)
OFFLOADS = ("none", "optimizer", "optimizer+parameters")
MAX_GPUS = 1_000_000


def strategy_for(gpus: int = 1, zero: int = 0, offload: str = "none") -> ParallelStrategy:
    """The engine for `gpus` data-parallel ranks at ZeRO stage `zero` with `offload`."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS:
        raise ParameterError(f"{{gpus}} must be a whole number from 1 to {MAX_GPUS}, got {gpus!r}", "gpus")
    if zero not in ZERO_STAGES:
        raise ParameterError(
            f"invalid ZeRO stage {zero!r}; valid: 0, 1, 2, 3 (FSDP: shard_grad_op = 2, full_shard = 3)", "zero"
        )
    if offload not in OFFLOADS:
        raise ParameterError(f"invalid offload {offload!r}; valid: {', '.join(OFFLOADS)}", "offload")
    if offload == "optimizer+parameters" and zero != 3:
        raise ParameterError(
            "parameter offload needs ZeRO stage 3 ({zero} 3); use {offload} optimizer with stages 1 and 2",
            "zero",
            "offload",
        )
    if offload != "none" and zero == 0:
        raise ParameterError("CPU offload needs a ZeRO stage of 1 or more ({zero} 1|2|3)", "zero")
    if zero >= 1:
        return ZeRO(gpus, zero, offload)
    return DDP(gpus) if gpus > 1 else SingleDevice(gpus)


def largest_layer_parameters(tensors: Iterable[ParamTensor]) -> int:
    """Elements of the largest module ZeRO-3 gathers at once: a transformer layer, or the embeddings.

    Parameter names carry the layer index as the first all-digit component ("transformer.h.3.attn..."),
    the embeddings and head have none; each non-layer tensor is its own gather unit.
    """
    layers: dict[int, int] = {}
    largest_other = 0
    for t in tensors:
        index = next((int(p) for p in t.name.split(".") if p.isdigit()), None)
        if index is None:
            largest_other = max(largest_other, t.numel)
        else:
            layers[index] = layers.get(index, 0) + t.numel
    return max([largest_other, *layers.values()])
