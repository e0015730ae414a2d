"""Zeroth-order population methods. ANALYTIC ONLY: no installed package implements them as a
torch.optim-style optimizer, so nothing is measured against these models.

Each member of a population of size P is a full copy of the weights, in the parameter dtype; the
model's own parameters hold the individual being evaluated and are not counted.
- GA: the population (P copies) and one float32 fitness per member.
- PSO: positions (P copies) + velocities (P) + personal bests (P) + the global best (1), plus
  one float32 fitness per member.
"""
from __future__ import annotations

from ..tensors import StateTensor
from ._spec import Family, OptimizerSpec, check_int


def _population(per_member: tuple[str, ...], global_best: bool):
    """`per_member` keys hold P copies of each parameter; `global_best` adds one more copy."""
    def build(params, dtype, opts):
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


Z = Family.ZEROTH_ORDER_POPULATION
NOTE = "analytic (no implementation measured)"

SPECS = [
    OptimizerSpec("ga", ("genetic-algorithm",), Z, f"{NOTE}: genetic algorithm",
                  "P full copies of the weights (the population) + P float32 fitness values: O(P*p).",
                  {"population_size": 16}, _population(("population",), False), measured=False),
    OptimizerSpec("pso", ("particle-swarm",), Z, f"{NOTE}: particle swarm optimization",
                  "Positions, velocities and personal bests (3P copies) + the global best "
                  "+ P fitness values.",
                  {"population_size": 16},
                  _population(("position", "velocity", "personal_best"), True), measured=False),
]
