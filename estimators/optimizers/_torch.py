"""What the torch.optim entries share (torch 2.13.0), read from their `_init_group` / `step`.

Shared facts: states made with `torch.zeros_like(p)` / `full_like` / `clone(grad)` follow the parameter
dtype; scalar states (`step`, ASGD's `eta`/`mu`, NAdam's `mu_product`) are 0-d tensors of
`_get_scalar_dtype()` (float32 unless torch's default dtype is float64), 4 bytes each per parameter,
whatever the parameter dtype. Where they live: torch keeps them on the CPU ("host") unless the group
is `capturable` (or `fused`, for Adam/AdamW/Adagrad); ASGD always puts them on the parameter's device,
Adafactor always on the CPU. `device_state_bytes` leaves the host ones out.

Step scratch: torch.optim's single_tensor / foreach / fused implementations and the patterns their
models share are described in _scratch.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..tensors import ParamTensor, StateTensor
from ._scratch import StepScratch
from ._spec import Family, OptimizerSpec, StateBuilder, like, scalar

TORCH = "torch 2.13.0"

# the step-only options of most torch.optim optimizers, with torch's defaults
WEIGHT_DECAY_MAXIMIZE: Mapping[str, Any] = {"weight_decay": 0.0, "maximize": False}


def torch_class(cls: str) -> str:
    """The implementation string of a torch.optim class."""
    return f"torch.optim.{cls} ({TORCH})"


def capturable_or_fused(opts: Mapping[str, Any]) -> bool:
    """torch keeps the scalar states on the parameters' device when capturable (or fused)."""
    return bool(opts.get("capturable")) or bool(opts.get("fused"))


def scalars_on_device(opts: Mapping[str, Any]) -> bool:
    """ASGD: the scalar states are on the parameters' device whatever the options."""
    return True


def per_param(
    *keys: str,
    step: bool = True,
    scalars: Sequence[str] = (),
    on_device: Callable[[Mapping[str, Any]], bool] = capturable_or_fused,
) -> StateBuilder:
    """A builder for optimizers whose state is `step` (+ other 0-d scalars) and param-shaped tensors;
    `on_device(opts)` tells whether the scalars live on the parameters' device."""

    def build(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
        host = not on_device(opts)
        out: list[StateTensor] = []
        for p in params:
            if step:
                out.append(scalar("step", p, host=host))
            out.extend(scalar(k, p, host=host) for k in scalars)
            out.extend(like(k, p, dtype) for k in keys)
        return out

    return build


def torch_spec(
    name: str,
    aliases: Sequence[str],
    family: Family,
    cls: str,
    summary: str,
    options: Mapping[str, Any],
    build: StateBuilder,
    *,
    step: StepScratch,
    states_at_init: bool = False,
) -> OptimizerSpec:
    """The registry entry of torch.optim.`cls`."""
    return OptimizerSpec(
        name,
        tuple(aliases),
        family,
        torch_class(cls),
        summary,
        dict(options),
        build,
        states_at_init=states_at_init,
        step=step,
    )


__all__ = [
    "TORCH",
    "WEIGHT_DECAY_MAXIMIZE",
    "torch_class",
    "capturable_or_fused",
    "scalars_on_device",
    "per_param",
    "torch_spec",
]
