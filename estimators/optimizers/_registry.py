"""The registry: every optimizer's `OptimizerSpec` by name, in registry order, and the lookups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import unknown_name
from ..tensors import ParamTensor
from . import adaptive, population, second_order, torch_optim, tuning_free
from ._spec import FAMILY_ORDER, Family, OptimizerSpec

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for module in (torch_optim, adaptive, second_order, tuning_free, population)
    for spec in module.SPECS
}


def _lookup_table(specs: Iterable[OptimizerSpec]) -> dict[str, str]:
    """Lower-cased name or alias -> registry name."""
    table: dict[str, str] = {}
    for spec in specs:
        for key in (spec.name, *spec.aliases):
            assert key.lower() not in table, f"duplicate optimizer name {key}"
            table[key.lower()] = spec.name
    return table


_LOOKUP = _lookup_table(OPTIMIZERS.values())


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
        rows.append(
            {
                "name": spec.name,
                "family": spec.family.value,
                "implementation": spec.implementation,
                "state_bytes": nbytes,
                "bytes_per_param": nbytes / n if n else 0.0,
                "measured": spec.measured,
            }
        )
    rows.sort(key=lambda r: (FAMILY_ORDER.index(Family(r["family"])), r["state_bytes"], r["name"]))
    return rows


__all__ = ["OPTIMIZERS", "get_optimizer", "optimizer_names", "optimizer_table"]
