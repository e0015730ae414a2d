"""Every optimizer of `torch.optim` in torch 2.13.0, read from its `_init_group` / `step`.

Shared facts: states made with `torch.zeros_like(p)` / `full_like` / `clone(grad)` follow the parameter
dtype; scalar states (`step`, ASGD's `eta`/`mu`, NAdam's `mu_product`) are 0-d tensors of
`_get_scalar_dtype()` (float32 unless torch's default dtype is float64), 4 bytes each per parameter,
whatever the parameter dtype. Where they live: torch keeps them on the CPU ("host") unless the group
is `capturable` (or `fused`, for Adam/AdamW/Adagrad); ASGD always puts them on the parameter's device,
Adafactor always on the CPU. `device_state_bytes` leaves the host ones out.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import MemprofUserError
from ..tensors import ParamTensor, StateTensor
from ._spec import Family, OptimizerSpec, check_int, like, scalar

TORCH = "torch 2.13.0"


def _impl(cls: str) -> str:
    return f"torch.optim.{cls} ({TORCH})"


def _capturable(opts: Mapping[str, Any]) -> bool:
    return bool(opts.get("capturable")) or bool(opts.get("fused"))


def _always(opts: Mapping[str, Any]) -> bool:
    return True


def _per_param(*keys: str, step: bool = True, scalars: Sequence[str] = (), on_device=_capturable):
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


def _sgd(params, dtype, opts):
    # momentum_buffer = clone(grad) on the first step; with momentum == 0 the state is never touched.
    if opts["momentum"] == 0:
        return []
    return [like("momentum_buffer", p, dtype) for p in params]


def _adam(params, dtype, opts):
    keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if opts["amsgrad"] else ())
    return _per_param(*keys)(params, dtype, opts)


def _rmsprop(params, dtype, opts):
    keys = ("square_avg",) + (("momentum_buffer",) if opts["momentum"] > 0 else ()) \
        + (("grad_avg",) if opts["centered"] else ())
    return _per_param(*keys)(params, dtype, opts)


def _adafactor(params, dtype, opts):
    # >= 2-D: row_var (last dim -> 1) and col_var (second-to-last dim -> 1); 1-D: a full variance.
    out = []
    for p in params:
        out.append(scalar("step", p, host=True))  # "Deliberately host `step` on CPU"
        if len(p.shape) > 1:
            out.append(StateTensor("row_var", tuple(p.shape[:-1]) + (1,), dtype, p.name))
            out.append(StateTensor("col_var", tuple(p.shape[:-2]) + (1, p.shape[-1]), dtype, p.name))
        else:
            out.append(like("variance", p, dtype))
    return out


def _muon(params, dtype, opts):
    out = []
    others = [p for p in params if len(p.shape) != 2]
    if others and opts["fallback"] != "adamw":
        raise MemprofUserError(
            "torch.optim.Muon only accepts 2-D parameters; not 2-D: "
            + ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
            + "; use fallback='adamw' to step them with torch.optim.AdamW")
    for p in params:
        if len(p.shape) == 2:
            out.append(like("momentum_buffer", p, dtype))
        else:
            out.extend([scalar("step", p, host=True), like("exp_avg", p, dtype),
                        like("exp_avg_sq", p, dtype)])
    return out


def _lbfgs(params, dtype, opts):
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


def _spec(name, aliases, family, cls, summary, options, build, **kw) -> OptimizerSpec:
    return OptimizerSpec(name, tuple(aliases), family, _impl(cls), summary, dict(options), build, **kw)


A, S = Family.FIRST_ORDER_ADAPTIVE, Family.FIRST_ORDER_STOCHASTIC

SPECS = [
    _spec("sgd", ["torch.optim.sgd"], S, "SGD",
          "Plain SGD (momentum=0, torch's default): no state at all; with momentum, one buffer.",
          {"momentum": 0.0}, _sgd),
    _spec("sgd-momentum", ["sgdm", "sgd+m", "nag", "nesterov"], S, "SGD",
          "SGD with (Nesterov) momentum: momentum_buffer, a clone of the first gradient (1x params).",
          {"momentum": 0.9}, _sgd),
    _spec("adam", ["torch.optim.adam"], A, "Adam",
          "step (0-d float32) + exp_avg + exp_avg_sq (2x params); amsgrad adds max_exp_avg_sq.",
          {"amsgrad": False, "capturable": False, "fused": False}, _adam),
    _spec("adamw", ["torch.optim.adamw"], A, "AdamW",
          "Same state as Adam (AdamW subclasses Adam): step + exp_avg + exp_avg_sq (+ max_exp_avg_sq).",
          {"amsgrad": False, "capturable": False, "fused": False}, _adam),
    _spec("adagrad", [], A, "Adagrad",
          "step + sum (1x params); created in __init__ for every parameter given, gradient or not.",
          {"fused": False}, _per_param("sum"), states_at_init=True),
    _spec("adadelta", [], A, "Adadelta", "step + square_avg + acc_delta (2x params).",
          {"capturable": False}, _per_param("square_avg", "acc_delta")),
    _spec("adamax", [], A, "Adamax", "step + exp_avg + exp_inf (2x params).",
          {"capturable": False}, _per_param("exp_avg", "exp_inf")),
    _spec("asgd", [], S, "ASGD",
          "step, eta, mu (three 0-d float32) + ax, the running average of the weights (1x params).",
          {}, _per_param("ax", scalars=("eta", "mu"), on_device=_always)),
    _spec("nadam", [], A, "NAdam", "step + mu_product (0-d) + exp_avg + exp_avg_sq (2x params).",
          {"capturable": False}, _per_param("exp_avg", "exp_avg_sq", scalars=("mu_product",))),
    _spec("radam", [], A, "RAdam", "step + exp_avg + exp_avg_sq (2x params).",
          {"capturable": False}, _per_param("exp_avg", "exp_avg_sq")),
    _spec("rmsprop", [], A, "RMSprop",
          "step + square_avg (1x); momentum > 0 adds momentum_buffer, centered adds grad_avg.",
          {"momentum": 0.0, "centered": False, "capturable": False}, _rmsprop),
    _spec("rprop", [], A, "Rprop", "step + prev + step_size (2x params).",
          {"capturable": False}, _per_param("prev", "step_size")),
    _spec("sparse-adam", ["sparseadam"], A, "SparseAdam",
          "Dense exp_avg + exp_avg_sq (2x params) although the gradients are sparse; step is a python int.",
          {}, _per_param("exp_avg", "exp_avg_sq", step=False)),
    _spec("adafactor", ["torch.optim.adafactor"], A, "Adafactor",
          "step + factored second moment: row_var and col_var for >= 2-D tensors, a full variance for 1-D.",
          {}, _adafactor),
    _spec("muon", [], A, "Muon",
          "momentum_buffer (1x) for 2-D parameters; Muon rejects others, which go to AdamW (fallback).",
          {"fallback": "adamw"}, _muon),
    OptimizerSpec(
        "lbfgs", ("l-bfgs",), Family.SECOND_ORDER_QUASI_NEWTON, _impl("LBFGS"),
        "Global flat state: (2*history_size + 2) vectors of all parameters (old_dirs, old_stps, d, "
        "prev_flat_grad) + 2*history_size + 1 scalars; steady state once the history is full.",
        {"history_size": 100}, _lbfgs),
]
