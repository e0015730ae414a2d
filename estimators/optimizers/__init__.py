"""Optimizer registry: the state each real optimizer implementation keeps, to the byte.

    >>> from memprof.estimators.optimizers import get_optimizer
    >>> from memprof.estimators.tensors import ParamTensor
    >>> get_optimizer("AdamW").state_bytes([ParamTensor("w", (1024, 1024))])
    8388612

Each entry names the implementation (package, class, version) whose source it was read from and is
checked against by tests/test_optimizers.py, except the population methods (analytic only).
`state_bytes` counts every state tensor; `device_state_bytes` leaves out the scalars torch keeps in
host memory (non-capturable `step`), which is what a GPU's optimizer_states category should use.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import unknown_name
from ..tensors import ParamTensor
from . import adaptive, population, second_order, torch_optim, tuning_free
from ._spec import FAMILY_ORDER, Family, OptimizerSpec, OptimizerStateTensor

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for module in (torch_optim, adaptive, second_order, tuning_free, population)
    for spec in module.SPECS
}

_LOOKUP: dict[str, str] = {}
for _spec in OPTIMIZERS.values():
    for _key in (_spec.name, *_spec.aliases):
        assert _key.lower() not in _LOOKUP, f"duplicate optimizer name {_key}"
        _LOOKUP[_key.lower()] = _spec.name


def optimizer_names() -> list[str]:
    """Registry names, sorted."""
    return sorted(OPTIMIZERS)


def get_optimizer(name: str) -> OptimizerSpec:
    """The spec for a name or alias, case-insensitive (`AdamW`, `adamw8bit`, `L-BFGS`)."""
    key = _LOOKUP.get(name.strip().lower())
    if key is None:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[key]


def optimizer_table(params: Sequence[ParamTensor], param_dtype: str = "float32") -> list[dict[str, Any]]:
    """One row per optimizer (default options), sorted by family then state bytes."""
    n = sum(p.numel for p in params)
    rows = []
    for spec in OPTIMIZERS.values():
        nbytes = spec.state_bytes(params, param_dtype)
        rows.append({
            "name": spec.name,
            "family": spec.family.value,
            "implementation": spec.implementation,
            "state_bytes": nbytes,
            "bytes_per_param": nbytes / n if n else 0.0,
            "measured": spec.measured,
        })
    rows.sort(key=lambda r: (FAMILY_ORDER.index(Family(r["family"])), r["state_bytes"], r["name"]))
    return rows


__all__ = ["Family", "OptimizerSpec", "OptimizerStateTensor", "OPTIMIZERS", "get_optimizer", "optimizer_names", "optimizer_table"]

from .temporaries import default_implementation, step_temporary_bytes  # noqa: E402  (needs get_optimizer)
