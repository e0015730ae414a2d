"""Tuning-free (learning-rate-free) optimizers: Prodigy, D-Adaptation Adam, Schedule-Free AdamW.

Their step counters and step-size estimates (d, d0, weight_sum, ...) are python numbers.
States and step scratch of each, read from the package's source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import MemprofUserError
from ..tensors import ParamTensor, StateTensor
from ._scratch import FOREACH, NONE, SINGLE, Context, Live, StepScratch, always_picks, by_implementation, exact
from ._spec import Family, OptimizerSpec, check_int, like

T = Family.TUNING_FREE


# ------------------------------------------------------------------------------------------ Prodigy
# Step scratch: the sliced / full products of the d-estimate and denom; exact.


def _prodigy_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    # s and p0 hold every slice_p-th element of the flattened parameter (ceil(n / slice_p)); p0 is the
    # initial weights, or a 0-d tensor when the parameter is all zeros at the first step (zero-init
    # biases: name them in `zero_params`). exp_avg exists only when betas[0] > 0.
    slice_p = check_int("prodigy", "slice_p", opts["slice_p"], 1)
    zero = set(opts["zero_params"])
    unknown = sorted(zero - {p.name for p in params})
    if unknown:
        raise MemprofUserError("zero_params not among the parameters: " + ", ".join(unknown[:5]))
    out = []
    for p in params:
        sliced = (-(-p.numel // slice_p),)
        out.append(StateTensor("s", sliced, dtype, p.name))
        out.append(StateTensor("p0", () if p.name in zero else sliced, dtype, p.name))
        if opts["betas"][0] > 0:
            out.append(like("exp_avg", p, dtype))
        out.append(like("exp_avg_sq", p, dtype))
    return out


def _prodigy_step(c: Context) -> int:
    # First loop: torch.dot(sliced_grad, p0 - p.flatten()[::slice_p]) (a slice-sized difference
    # and the 0-d dot) and s.abs().sum(); second loop: denom = exp_avg_sq.sqrt().add_(d * eps).
    live, e = Live(), c.elem
    slice_p = c.opts["slice_p"]
    for n in c.sizes:
        sliced = -(-n // slice_p) * e
        live.touch(sliced + e)
        live.touch(sliced + e)
    for i in range(len(c.sizes)):
        live.make("denom", c.nbytes(i))
    return live.peak


PRODIGY = OptimizerSpec(
    "prodigy",
    (),
    T,
    "prodigyopt.Prodigy (prodigyopt 1.1.2)",
    "Adam moments (2x) + s and the initial weights p0 (2x / slice_p): 4x params by default.",
    {"slice_p": 1, "betas": (0.9, 0.999), "zero_params": ()},
    _prodigy_states,
    step=StepScratch({NONE: _prodigy_step}, exact(NONE), "prodigyopt.Prodigy.step", default=always_picks(NONE)),
)


# ------------------------------------------------------------------------------------ D-Adapt Adam
# Step scratch: the products of the d-estimate and denom; exact.


def _dadapt_adam_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    return [like(k, p, dtype) for p in params for k in ("s", "exp_avg", "exp_avg_sq")]


def _dadapt_adam_step(c: Context) -> int:
    # First loop: denom = exp_avg_sq.sqrt().add_(eps), torch.dot(grad, s.div(denom)) and
    # s.abs().sum(); second loop: denom again. `denom` stays bound from one loop to the next.
    live, e = Live(), c.elem
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        live.make("denom", b)
        live.touch(b + e)
        live.touch(b + e)
    for i in range(len(c.sizes)):
        live.make("denom", c.nbytes(i))
    return live.peak


DADAPT_ADAM = OptimizerSpec(
    "dadapt-adam",
    ("dadaptadam", "d-adaptation", "dadaptation"),
    T,
    "dadaptation.DAdaptAdam (dadaptation 3.2)",
    "s + exp_avg + exp_avg_sq (3x params).",
    {},
    _dadapt_adam_states,
    step=StepScratch({NONE: _dadapt_adam_step}, exact(NONE), "dadaptation.DAdaptAdam.step", default=always_picks(NONE)),
)


# ----------------------------------------------------------------------------- Schedule-Free AdamW
# Step scratch: denom per parameter or list; exact. foreach=True by default, on every device.


def _schedulefree_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    # z (a clone of the weights: the SGD iterate; the parameters hold y) + exp_avg_sq
    return [like(k, p, dtype) for p in params for k in ("z", "exp_avg_sq")]


def _schedulefree_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        live.make("denom", c.nbytes(i))  # exp_avg_sq.div(bias_correction2).sqrt_()
    return live.peak


def _schedulefree_foreach(c: Context) -> int:
    return c.total  # torch._foreach_div(exp_avg_sq, bc2)


SCHEDULEFREE_ADAMW = OptimizerSpec(
    "schedulefree-adamw",
    ("adamw-schedulefree", "schedule-free", "schedulefree"),
    T,
    "schedulefree.AdamWScheduleFree (schedulefree 1.4.1)",
    "z (the weights' second copy) + exp_avg_sq (2x params); no first moment.",
    {},
    _schedulefree_states,
    step=StepScratch(
        by_implementation(_schedulefree_single, _schedulefree_foreach),
        exact(SINGLE, FOREACH),
        "schedulefree.AdamWScheduleFree.step (foreach=True by default)",
        default=always_picks(FOREACH),
    ),
)

SPECS = [PRODIGY, DADAPT_ADAM, SCHEDULEFREE_ADAMW]
