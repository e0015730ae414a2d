"""Tuning-free (learning-rate-free) optimizers: Prodigy, D-Adaptation Adam, Schedule-Free AdamW.

Their step counters and step-size estimates (d, d0, weight_sum, ...) are python numbers."""
from __future__ import annotations

from ..errors import MemprofUserError
from ..tensors import StateTensor
from ._spec import Family, OptimizerSpec, check_int, like


def _prodigy(params, dtype, opts):
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


def _dadapt_adam(params, dtype, opts):
    return [like(k, p, dtype) for p in params for k in ("s", "exp_avg", "exp_avg_sq")]


def _schedulefree(params, dtype, opts):
    # z (a clone of the weights: the SGD iterate; the parameters hold y) + exp_avg_sq
    return [like(k, p, dtype) for p in params for k in ("z", "exp_avg_sq")]


T = Family.TUNING_FREE

SPECS = [
    OptimizerSpec("prodigy", (), T, "prodigyopt.Prodigy (prodigyopt 1.1.2)",
                  "Adam moments (2x) + s and the initial weights p0 (2x / slice_p): 4x params by default.",
                  {"slice_p": 1, "betas": (0.9, 0.999), "zero_params": ()}, _prodigy),
    OptimizerSpec("dadapt-adam", ("dadaptadam", "d-adaptation", "dadaptation"), T,
                  "dadaptation.DAdaptAdam (dadaptation 3.2)",
                  "s + exp_avg + exp_avg_sq (3x params).", {}, _dadapt_adam),
    OptimizerSpec("schedulefree-adamw", ("adamw-schedulefree", "schedule-free", "schedulefree"), T,
                  "schedulefree.AdamWScheduleFree (schedulefree 1.4.1)",
                  "z (the weights' second copy) + exp_avg_sq (2x params); no first moment.",
                  {}, _schedulefree),
]
