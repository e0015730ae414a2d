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

How an estimate accounts for them (`gradient_free`): a generation evaluates each member's fitness
with a forward pass under torch.no_grad, one member after another, so there are no gradients
(model_states.gradients is 0), autograd saves nothing (activations_saved is 0: only the forward's
transient tensors and the outputs the loop holds) and there is no backward phase. The population is
an optimizer state held from the start. The option `population` (default 16; `population_size` is
the older spelling) sets P; the estimate's settings report it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ParameterError
from ..tensors import ParamTensor, StateTensor
from ._scratch import NONE, Context, ScratchModel, StepScratch, always_picks
from ._spec import Family, OptimizerSpec, StateBuilder


def _population_states(per_member: tuple[str, ...], global_best: bool) -> StateBuilder:
    """`per_member` keys hold P copies of each parameter; `global_best` adds one more copy."""

    def build(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
        size = population_of(opts)
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
        return copies * population_of(c.opts) * c.total

    return model


DEFAULT_POPULATION = 16


def population_of(opts: Mapping[str, Any]) -> int:
    """P from the options: `population`, or its older spelling `population_size`."""
    size, old = opts.get("population", DEFAULT_POPULATION), opts.get("population_size")
    if old is not None:
        if size != DEFAULT_POPULATION and size != old:
            raise ParameterError(
                f"{{population}} {size!r} and population_size {old!r} disagree; pass only {{population}}",
                "population",
            )
        size = old
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ParameterError(f"{{population}} must be a whole number of members >= 1, got {size!r}", "population")
    return size


def gradient_free(spec: OptimizerSpec) -> bool:
    """True for the population methods: no backward, no gradients (module docstring)."""
    return spec.family is Family.ZEROTH_ORDER_POPULATION


Z = Family.ZEROTH_ORDER_POPULATION
NOTE = "analytic (no implementation measured)"
ANALYTIC_SCRATCH = {NONE: "analytic (no implementation to measure)"}

GA = OptimizerSpec(
    "ga",
    ("genetic-algorithm",),
    Z,
    f"{NOTE}: genetic algorithm",
    "P full copies of the weights (the population) + P float32 fitness values: O(P*p).",
    {"population": DEFAULT_POPULATION, "population_size": None},
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
    {"population": DEFAULT_POPULATION, "population_size": None},
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
