"""Zeroth-order population methods. ANALYTIC ONLY: no installed package implements them as a
torch.optim-style optimizer, so nothing is measured against these models.

Each member of a population of size P is a full copy of the weights, in the parameter dtype; the
model's own parameters hold the individual being evaluated and are not counted.
- GA: the population (P copies) and one float32 fitness per member.
- PSO: positions (P copies) + velocities (P) + personal bests (P) + the global best (1), plus
  one float32 fitness per member.

Step scratch (analytic, no implementation): a vectorised generation step is assumed, like the
states. GA: the mutation noise and the offspring population, made before the offspring replace the
population (2 P copies). PSO: the random coefficients r1, r2 of the velocity update and one
(best - position) difference (3 P copies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..tensors import ParamTensor, StateTensor
from ._scratch import NONE, Context, ScratchModel, StepScratch, always_picks
from ._spec import Family, OptimizerSpec, StateBuilder, check_int


def _population_states(per_member: tuple[str, ...], global_best: bool) -> StateBuilder:
    """`per_member` keys hold P copies of each parameter; `global_best` adds one more copy."""

    def build(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
        size = check_int("population", "population_size", opts["population_size"], 1)
        out = []
        for p in params:
            for key in per_member:
                out.append(StateTensor(key, (size,) + tuple(p.shape), dtype, p.name))
            if global_best:
                out.append(StateTensor("global_best", tuple(p.shape), dtype, p.name))
        out.append(StateTensor("fitness", (size,), "float32", None))
        return out

    return build


def _population_step(copies: int) -> ScratchModel:
    """`copies` population-sized copies of the weights."""

    def model(c: Context) -> int:
        size: int = c.opts["population_size"]
        return copies * size * c.total

    return model


Z = Family.ZEROTH_ORDER_POPULATION
NOTE = "analytic (no implementation measured)"
ANALYTIC_SCRATCH = {NONE: "analytic (no implementation to measure)"}

GA = OptimizerSpec(
    "ga",
    ("genetic-algorithm",),
    Z,
    f"{NOTE}: genetic algorithm",
    "P full copies of the weights (the population) + P float32 fitness values: O(P*p).",
    {"population_size": 16},
    _population_states(("population",), False),
    measured=False,
    step=StepScratch(
        {NONE: _population_step(2)},
        ANALYTIC_SCRATCH,
        "analytic: a vectorised genetic-algorithm generation",
        default=always_picks(NONE),
    ),
)

PSO = OptimizerSpec(
    "pso",
    ("particle-swarm",),
    Z,
    f"{NOTE}: particle swarm optimization",
    "Positions, velocities and personal bests (3P copies) + the global best + P fitness values.",
    {"population_size": 16},
    _population_states(("position", "velocity", "personal_best"), True),
    measured=False,
    step=StepScratch(
        {NONE: _population_step(3)},
        ANALYTIC_SCRATCH,
        "analytic: a vectorised particle-swarm velocity update",
        default=always_picks(NONE),
    ),
)

SPECS = [GA, PSO]
