"""Second-order optimizers of pytorch-optimizer 4.1.0: Shampoo, SOAP (preconditioners), SophiaH and
AdaHessian (diagonal Hessian estimates). L-BFGS lives with torch.optim (torch_optim.py)."""
from __future__ import annotations

from ..tensors import StateTensor
from ._spec import Family, OptimizerSpec, check_int, like

PYOPT = "pytorch-optimizer 4.1.0"


def _shampoo(params, dtype, opts):
    # One (d, d) statistic `pre_cond_i` and its inverse root `inv_pre_cond_i` per dimension, in the
    # gradient dtype. `momentum_buffer` is (re)assigned to the preconditioned gradient at the end of
    # every step, momentum or not, so it always exists after the first step (the `momentum` option
    # therefore changes nothing once stepped; it is accepted for completeness).
    out = []
    for p in params:
        for i, d in enumerate(p.shape):
            out.append(StateTensor(f"pre_cond_{i}", (d, d), dtype, p.name))
            out.append(StateTensor(f"inv_pre_cond_{i}", (d, d), dtype, p.name))
        out.append(like("momentum_buffer", p, dtype))
    return out


def _soap(params, dtype, opts):
    # Adam moments like the gradient, plus per dimension of size <= max_precondition_dim a (d, d)
    # statistic GG and its eigenbasis Q; 1-D tensors are preconditioned only with precondition_1d.
    # (merge_dims=True reshapes before preconditioning and is not modelled.)
    limit = check_int("soap", "max_precondition_dim", opts["max_precondition_dim"], 1)
    out = []
    for p in params:
        out += [like("exp_avg", p, dtype), like("exp_avg_sq", p, dtype)]
        if len(p.shape) == 1:
            dims = p.shape if opts["precondition_1d"] else ()
        else:
            dims = p.shape
        for d in dims:
            if d <= limit:
                out.append(StateTensor("GG", (d, d), dtype, p.name))
                out.append(StateTensor("Q", (d, d), dtype, p.name))
    return out


def _hessian(*keys):
    # the two moments + `hessian`, the Hutchinson estimate buffer (zeros_like(p) on the first update)
    def build(params, dtype, opts):
        return [like(k, p, dtype) for p in params for k in keys + ("hessian",)]
    return build


P, D = Family.SECOND_ORDER_PRECONDITIONER, Family.SECOND_ORDER_DIAGONAL

SPECS = [
    OptimizerSpec("shampoo", (), P, f"pytorch_optimizer.Shampoo ({PYOPT})",
                  "Per dimension d of each tensor a d x d statistic and its inverse root "
                  "(2 * sum d^2), plus the preconditioned-gradient buffer (1x params).",
                  {"momentum": 0.0}, _shampoo),
    OptimizerSpec("soap", (), P, f"pytorch_optimizer.SOAP ({PYOPT})",
                  "Adam moments (2x params) plus per dimension a d x d statistic GG and eigenbasis Q "
                  "(2 * sum d^2, dimensions <= max_precondition_dim; 1-D only with precondition_1d).",
                  {"max_precondition_dim": 10000, "precondition_1d": False}, _soap),
    OptimizerSpec("sophia", ("sophiah", "sophia-h"), D, f"pytorch_optimizer.SophiaH ({PYOPT})",
                  "momentum + hessian_moment + the Hutchinson hessian buffer (3x params); needs "
                  "backward(create_graph=True).", {}, _hessian("momentum", "hessian_moment")),
    OptimizerSpec("adahessian", (), D, f"pytorch_optimizer.AdaHessian ({PYOPT})",
                  "exp_avg + exp_hessian_diag_sq + the Hutchinson hessian buffer (3x params); needs "
                  "backward(create_graph=True).", {}, _hessian("exp_avg", "exp_hessian_diag_sq")),
]
