"""The optimizer model: one `OptimizerSpec` per optimizer, built from its implementation's source: the
states it keeps and (`OptimizerSpec.step`, see _scratch.py) the scratch memory its step() allocates.

A spec lists the tensors the real optimizer keeps in `optimizer.state` once it has reached its steady
size, as `StateTensor`s (key, shape, dtype, owning parameter). Only tensors count: python ints and
floats (pytorch-optimizer's per-group `step`, D-Adaptation's `d`) take no tensor memory. A tensor that
several parameters share (bitsandbytes' quantization maps) is listed once, on the first parameter that
holds it, which is how the measurement de-duplicates storages.

`params` are the parameters the optimizer steps, i.e. those that received a gradient (optimizers
create state lazily on the first `step()` for parameters whose `.grad` is not None), in the order of
`optimizer.param_groups`. Adagrad is the exception: it creates its state in `__init__` for every
parameter it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from ..dtypes import dtype_bytes
from ..errors import MemprofUserError
from ..tensors import ParamTensor, StateTensor
from ._scratch import TORCH_SCALAR_DTYPE, StepScratch


class Family(str, Enum):
    """Optimizer families of the seed taxonomy (order of information, then memory behaviour)."""

    ZEROTH_ORDER_POPULATION = "zeroth-order population"
    FIRST_ORDER_STOCHASTIC = "first-order stochastic"
    FIRST_ORDER_ADAPTIVE = "first-order adaptive"
    SECOND_ORDER_QUASI_NEWTON = "second-order quasi-Newton"
    SECOND_ORDER_PRECONDITIONER = "second-order preconditioner"
    SECOND_ORDER_DIAGONAL = "second-order diagonal"
    TUNING_FREE = "tuning-free"

    def __str__(self) -> str:
        return self.value


FAMILY_ORDER = list(Family)

# the pytorch-optimizer release its entries were read from and are checked against (adaptive.py, second_order.py)
PYTORCH_OPTIMIZER = "pytorch-optimizer 4.1.0"


@dataclass(frozen=True)
class OptimizerStateTensor(StateTensor):
    """A StateTensor that also says where it lives: `host` states stay in CPU memory even when the
    parameters are on the GPU (torch keeps `step` on the CPU unless capturable/fused)."""

    host: bool = False


StateBuilder = Callable[[Sequence[ParamTensor], str, Mapping[str, Any]], list[StateTensor]]


@dataclass(frozen=True)
class OptimizerSpec:
    """What one optimizer implementation keeps per parameter, what its step() allocates on top, and
    where that knowledge comes from."""

    name: str
    aliases: tuple[str, ...]
    family: Family
    implementation: str  # "torch.optim.AdamW (torch 2.13.0)"; "analytic (...)" when unmeasured
    summary: str
    options: Mapping[str, Any]  # defaults of the options that change memory
    build: StateBuilder = field(repr=False, compare=False)
    measured: bool = True  # False: no implementation is run against this model
    states_at_init: bool = False  # the constructor creates the states (Adagrad), not the first step()
    # the scratch memory of its step(), per implementation (None: not modelled)
    step: StepScratch | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def resolve_options(self, options: Mapping[str, Any], *, step: bool = False) -> dict[str, Any]:
        """`options` checked and completed with the defaults: the one place options are validated.

        The spec's own options (those that change the states) are valid everywhere; with `step`,
        also those only the step's scratch depends on (`StepScratch.options`: weight_decay,
        maximize, ...), and the settings the entry implies for its step models are filled in."""
        scratch = self.step if step else None
        step_only: Mapping[str, Any] = scratch.options if scratch is not None else {}
        unknown = sorted(set(options) - set(self.options) - set(step_only))
        if unknown:
            valid = ", ".join(sorted({*self.options, *step_only})) or "none"
            raise MemprofUserError(
                f"unknown option(s) {', '.join(unknown)} for optimizer {self.name!r}; valid: {valid}"
            )
        if scratch is None:
            return {**self.options, **options}
        return {**scratch.options, **scratch.implied, **self.options, **options}

    def state_tensors(
        self, params: Sequence[ParamTensor], param_dtype: str = "float32", **options: Any
    ) -> list[StateTensor]:
        """Every state tensor in steady state, in `optimizer.state` order (parameter, then key)."""
        dtype_bytes(param_dtype)  # validates the name
        return self.build(list(params), param_dtype.removeprefix("torch."), self.resolve_options(options))

    def state_bytes(self, params: Sequence[ParamTensor], param_dtype: str = "float32", **options: Any) -> int:
        return sum(t.nbytes for t in self.state_tensors(params, param_dtype, **options))

    def device_state_bytes(self, params: Sequence[ParamTensor], param_dtype: str = "float32", **options: Any) -> int:
        """The part of `state_bytes` on the parameters' device (host-resident scalars excluded)."""
        return sum(
            t.nbytes for t in self.state_tensors(params, param_dtype, **options) if not getattr(t, "host", False)
        )

    def bytes_by_key(
        self, params: Sequence[ParamTensor], param_dtype: str = "float32", **options: Any
    ) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.state_tensors(params, param_dtype, **options):
            out[t.key] = out.get(t.key, 0) + t.nbytes
        return out

    def bytes_per_parameter(self, params: Sequence[ParamTensor], param_dtype: str = "float32", **options: Any) -> float:
        n = sum(p.numel for p in params)
        return self.state_bytes(params, param_dtype, **options) / n if n else 0.0


# Small builders shared by the modules -------------------------------------------------------------


def like(key: str, p: ParamTensor, dtype: str) -> StateTensor:
    """`torch.zeros_like(p)` (or a clone of the gradient): same shape and dtype as the parameter."""
    return StateTensor(key, tuple(p.shape), dtype, p.name)


def scalar(key: str, p: ParamTensor | None, dtype: str = TORCH_SCALAR_DTYPE, host: bool = False) -> StateTensor:
    """A 0-d tensor such as torch's `step`; `host` when it stays in CPU memory."""
    return OptimizerStateTensor(key, (), dtype, p.name if p is not None else None, host)


def check_choice(optimizer: str, option: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise MemprofUserError(
            f"option {option}={value!r} of optimizer {optimizer!r} is not modelled; valid: "
            + ", ".join(repr(v) for v in valid)
        )


def check_int(optimizer: str, option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MemprofUserError(f"option {option}={value!r} of optimizer {optimizer!r} must be an integer >= {minimum}")
    return value


__all__ = [
    "Family",
    "OptimizerSpec",
    "OptimizerStateTensor",
    "StateBuilder",
    "FAMILY_ORDER",
    "PYTORCH_OPTIMIZER",
    "TORCH_SCALAR_DTYPE",
    "like",
    "scalar",
    "check_choice",
    "check_int",
]
