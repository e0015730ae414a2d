"""torch.optim.LBFGS: the quasi-Newton method, one global flat state (torch 2.13.0; shared facts: _torch.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import MemprofUserError
from ..tensors import ParamTensor, StateTensor
from ._scratch import NONE, Context, StepScratch, always_picks
from ._spec import Family, check_int
from ._torch import torch_spec

# Step scratch: 5 flat vectors of all parameters (flat_grad, q, d, d*t and its abs) in steady state;
# 0-d tensors bounded by LBFGS_SCALARS; the closure's forward/backward not counted.

LBFGS_SCALARS = 8


def _lbfgs_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    # One global state, registered on the first parameter. Flat vectors have the length of all
    # parameters together and their dtype (`_gather_flat_grad` concatenates the gradients):
    # d, prev_flat_grad, and history_size pairs old_dirs (y) / old_stps (s); 0-d tensors: ro[i]
    # (1 / y.s), al[i] (the two-loop coefficients, a list of history_size), H_diag. `t`, `prev_loss`,
    # `func_evals`, `n_iter` are python numbers once n_iter > 1. Steady state = history full: each
    # step() runs up to max_iter (20) inner iterations and adds one pair per iteration whose
    # curvature y.s > 1e-10, so it is reached after about history_size / max_iter steps.
    m = check_int("lbfgs", "history_size", opts["history_size"], 1)
    if not params:
        return []
    n = sum(p.numel for p in params)
    owner = params[0].name
    vec = (n,)
    out = [StateTensor("d", vec, dtype, owner)]
    out += [StateTensor("old_dirs", vec, dtype, owner) for _ in range(m)]
    out += [StateTensor("old_stps", vec, dtype, owner) for _ in range(m)]
    out += [StateTensor("ro", (), dtype, owner) for _ in range(m)]
    out.append(StateTensor("H_diag", (), dtype, owner))
    out.append(StateTensor("prev_flat_grad", vec, dtype, owner))
    out += [StateTensor("al", (), dtype, owner) for _ in range(m)]
    return out


def _lbfgs_step(c: Context) -> int:
    # Steady state (history full, no line search), per inner iteration of step(): flat_grad (cat
    # of the grads), the previous iteration's q and d are alive when y = flat_grad - prev_flat_grad
    # and s = d * t are made (they replace the oldest history pair: states, see the spec); the
    # stopping test d.mul(t).abs().max() then holds flat_grad, q, d and two more vectors: 5 flat
    # vectors in all. The closure's own memory (forward, backward) is not counted; 0-d tensors
    # (ys, ro, al, gtd, tests) are bounded by LBFGS_SCALARS.
    if c.opts["line_search_fn"] is not None:
        raise MemprofUserError("lbfgs with line_search_fn='strong_wolfe' is not modelled; valid: None")
    return 5 * c.total + LBFGS_SCALARS * c.elem


LBFGS = torch_spec(
    "lbfgs",
    ("l-bfgs",),
    Family.SECOND_ORDER_QUASI_NEWTON,
    "LBFGS",
    "Global flat state: (2*history_size + 2) vectors of all parameters (old_dirs, old_stps, d, "
    "prev_flat_grad) + 2*history_size + 1 scalars; steady state once the history is full.",
    {"history_size": 100},
    _lbfgs_states,
    step=StepScratch(
        {NONE: _lbfgs_step},
        {NONE: "exact (flat vectors); 0-d tensors bounded"},
        "torch.optim.lbfgs: LBFGS.step",
        {"line_search_fn": None},
        default=always_picks(NONE),
    ),
)

SPECS = [LBFGS]
