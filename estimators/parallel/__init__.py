"""Parallel engines: where one rank's tensors live, what the engine allocates, what the step adds.

`strategy_for(gpus, zero, offload, engine=None, fsdp_unit="block")` validates the knobs and returns
the engine that runs them. Each engine is one module implementing `ParallelStrategy` (see `_base.py`
and docs/architecture.md, "Parallel engines"), built by one function of `ENGINE_BUILDERS`:

    engine       built by          runs
    (none)       SingleDevice      one device, --zero 0
    "ddp"        DDP               several devices, --zero 0 (implied by --gpus > 1 --zero 0)
    "fsdp"       FSDP2             fully_shard: --zero 2 (shard-grad-op) or 3 (full-shard)
    "deepspeed"  ZeRO              DeepSpeed ZeRO stages 1-3 (the default engine of --zero 1|2|3)

A new engine is one entry there: a function from `EngineKnobs` to its strategy that raises
`ParameterError` for a combination the engine cannot run.

Default engine: `--zero N` without `--engine` keeps meaning DeepSpeed ZeRO (the stages are DeepSpeed's
and the ZeRO paper's; `--ds-config` and Lightning's DeepSpeed strategy land there), so those outputs
are unchanged; FSDP is asked for by `engine="fsdp"` (and by the FSDP words of TrainingArguments /
accelerate configs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ParameterError
from ..tensors import ParamTensor
from ._base import (
    Buffer,
    EngineBuffers,
    EngineSchedule,
    ModelStateBytes,
    ParallelStrategy,
    Placement,
    Position,
    layer_of,
)
from .ddp import DDP
from .fsdp import FSDP2, FSDP_UNITS
from .single import SingleDevice
from .zero import ZeRO

__all__ = [
    "DDP",
    "ENGINES",
    "ENGINE_BUILDERS",
    "FSDP2",
    "FSDP_UNITS",
    "MAX_GPUS",
    "OFFLOADS",
    "ZERO_STAGES",
    "Buffer",
    "EngineBuffers",
    "EngineKnobs",
    "EngineSchedule",
    "ModelStateBytes",
    "ParallelStrategy",
    "Placement",
    "Position",
    "SingleDevice",
    "ZeRO",
    "default_engine",
    "largest_layer_parameters",
    "strategy_for",
]

ZERO_STAGES = (0, 1, 2, 3)
OFFLOADS = ("none", "optimizer", "optimizer+parameters")
MAX_GPUS = 1_000_000


@dataclass(frozen=True)
class EngineKnobs:
    """What the user chose, validated for range; each engine checks the combination."""

    gpus: int
    zero: int
    offload: str
    fsdp_unit: str = "block"
    # DeepSpeed's zero_optimization settings (DeepSpeedConfig's fields), e.g. (("reduce_bucket_size", 2e8),)
    deepspeed: tuple[tuple[str, Any], ...] = ()


def _ddp(k: EngineKnobs) -> ParallelStrategy:
    if k.gpus < 2:
        raise ParameterError(
            "engine ddp replicates the model over several devices: use {gpus} 2 or more", "gpus", "engine"
        )
    if k.zero != 0:
        raise ParameterError(
            f"engine ddp does not shard (ZeRO stage {k.zero}); drop {{zero}} or use {{engine}} fsdp|deepspeed",
            "zero",
            "engine",
        )
    if k.offload != "none":
        raise ParameterError(
            "engine ddp has no CPU offload; use {engine} fsdp|deepspeed with {zero} 2|3", "engine", "zero", "offload"
        )
    return DDP(k.gpus)


def _fsdp(k: EngineKnobs) -> ParallelStrategy:
    if k.zero not in (2, 3):
        raise ParameterError(
            f"engine fsdp shards with {{zero}} 2 (shard-grad-op: reshard_after_forward=False) or 3 "
            f"(full-shard: reshard_after_forward=True), got {k.zero}"
            + (
                "; ZeRO-1 is DeepSpeed's ({engine} deepspeed)"
                if k.zero == 1
                else "; {zero} 0 on several devices is ddp"
            ),
            "zero",
            "engine",
        )
    if k.offload == "optimizer+parameters":
        raise ParameterError(
            "FSDP2's CPUOffloadPolicy offloads parameters, gradients and optimizer states together: "
            "use {offload} optimizer with {engine} fsdp",
            "offload",
            "engine",
        )
    if k.fsdp_unit not in FSDP_UNITS:
        raise ParameterError(f"invalid {{fsdp_unit}} {k.fsdp_unit!r}; valid: {', '.join(FSDP_UNITS)}", "fsdp_unit")
    return FSDP2(k.gpus, reshard_after_forward=k.zero == 3, offload=k.offload, unit=k.fsdp_unit)


def _deepspeed(k: EngineKnobs) -> ParallelStrategy:
    if k.zero == 0:
        raise ParameterError("engine deepspeed needs a ZeRO stage: {zero} 1|2|3", "zero")
    if k.offload == "optimizer+parameters" and k.zero != 3:
        raise ParameterError(
            "parameter offload needs ZeRO stage 3 ({zero} 3); use {offload} optimizer with stages 1 and 2",
            "zero",
            "offload",
        )
    from .deepspeed import DeepSpeedConfig, DeepSpeedZeRO

    try:
        config = DeepSpeedConfig(**dict(k.deepspeed))
    except TypeError:
        valid = ", ".join(DeepSpeedConfig.__dataclass_fields__)
        unknown = ", ".join(sorted(set(dict(k.deepspeed)) - set(DeepSpeedConfig.__dataclass_fields__)))
        raise ParameterError(f"unknown DeepSpeed setting(s) {unknown}; valid: {valid}", "deepspeed") from None
    return DeepSpeedZeRO(k.gpus, k.zero, k.offload, config=config)


# engine name -> its builder; the other engines (pipeline, tensor parallel) register here
ENGINE_BUILDERS: dict[str, Callable[[EngineKnobs], ParallelStrategy]] = {
    "ddp": _ddp,
    "fsdp": _fsdp,
    "deepspeed": _deepspeed,
}
ENGINES = tuple(ENGINE_BUILDERS)


def default_engine(gpus: int, zero: int) -> str | None:
    """The engine `--gpus` / `--zero` mean without `--engine` (module docstring); None: one device."""
    if zero >= 1:
        return "deepspeed"
    return "ddp" if gpus > 1 else None


def strategy_for(
    gpus: int = 1,
    zero: int = 0,
    offload: str = "none",
    engine: str | None = None,
    fsdp_unit: str = "block",
    deepspeed: tuple[tuple[str, Any], ...] = (),
) -> ParallelStrategy:
    """The engine for `gpus` data-parallel ranks at ZeRO stage `zero` with `offload`."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS:
        raise ParameterError(f"{{gpus}} must be a whole number from 1 to {MAX_GPUS}, got {gpus!r}", "gpus")
    if zero not in ZERO_STAGES:
        raise ParameterError(
            f"invalid ZeRO stage {zero!r}; valid: 0, 1, 2, 3 (with {{engine}} fsdp: 2 = shard-grad-op, 3 = full-shard)",
            "zero",
            "engine",
        )
    if offload not in OFFLOADS:
        raise ParameterError(f"invalid offload {offload!r}; valid: {', '.join(OFFLOADS)}", "offload")
    if engine is not None and engine not in ENGINE_BUILDERS:
        raise ParameterError(f"invalid {{engine}} {engine!r}; valid: {', '.join(ENGINES)}", "engine")
    if fsdp_unit != "block" and engine != "fsdp":
        raise ParameterError("{fsdp_unit} chooses FSDP2's wrapping: use it with {engine} fsdp", "fsdp_unit", "engine")
    if engine is None:
        if offload != "none" and zero == 0:
            raise ParameterError("CPU offload needs a ZeRO stage of 1 or more ({zero} 1|2|3)", "zero")
        engine = default_engine(gpus, zero)
        if engine is None:
            return SingleDevice(gpus)
    if deepspeed and engine != "deepspeed":
        raise ParameterError(
            "DeepSpeed's settings need {engine} deepspeed (the default engine of {zero} 1|2|3)",
            "engine",
            "zero",
            "deepspeed",
        )
    return ENGINE_BUILDERS[engine](EngineKnobs(gpus, zero, offload, fsdp_unit, tuple(deepspeed)))


def largest_layer_parameters(tensors: Iterable[ParamTensor]) -> int:
    """Elements of the largest module ZeRO-3 gathers at once: a transformer layer, or the embeddings.

    Parameter names carry the layer index as the first all-digit component ("transformer.h.3.attn..."),
    the embeddings and head have none; each non-layer tensor is its own gather unit.
    """
    layers: dict[int, int] = {}
    largest_other = 0
    for t in tensors:
        index = layer_of(t.name)
        if index is None:
            largest_other = max(largest_other, t.numel)
        else:
            layers[index] = layers.get(index, 0) + t.numel
    return max([largest_other, *layers.values()])
