"""torch.optim's per-coordinate step sizes from the gradients' history: Adagrad, Adadelta, RMSprop, Rprop.

States and step scratch of each, read from torch 2.13.0 (shared facts: _torch.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import MemprofUserError
from ..tensors import ParamTensor, StateTensor
from ._scratch import (
    FOREACH,
    FUSED,
    SINGLE,
    Context,
    Live,
    StepScratch,
    by_implementation,
    capturable_slack,
    coupled_weight_decay,
    cpu_step,
    exact,
    foreach_grads,
    loop_grad,
    no_scratch,
)
from ._spec import Family
from ._torch import WEIGHT_DECAY_MAXIMIZE, per_param, torch_spec

# --------------------------------------------------------------------------------------- Adagrad
# Step scratch: std of p_i + std of p_(i-1); foreach: std + numerator (2N); fused (CPU only): 0. Exact.


def _adagrad_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)  # the zip loop rebinds grad each iteration
        live.make("std", b)  # std = state_sum.sqrt().add_(eps)
    return live.peak


def _adagrad_foreach(c: Context) -> int:
    live, n = Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    cpu_step(live, c)
    if coupled_weight_decay(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    live.make("std", n)  # torch._foreach_sqrt(state_sums)
    if not (coupled_weight_decay(c.opts) or c.opts["maximize"]):
        live.make("numerator", n)  # torch._foreach_mul(device_grads, minus_clr)
    return live.peak


def _adagrad_fused_on_cpu_only(implementation: str, device: str) -> None:
    if implementation == FUSED and device != "cpu":
        raise MemprofUserError(
            f"torch's fused Adagrad runs on the CPU only, not on {device!r}; valid "
            "implementations there: single_tensor, foreach"
        )


ADAGRAD = torch_spec(
    "adagrad",
    [],
    Family.FIRST_ORDER_ADAPTIVE,
    "Adagrad",
    "step + sum (1x params); created in __init__ for every parameter given, gradient or not.",
    {"fused": False},
    per_param("sum"),
    states_at_init=True,
    step=StepScratch(
        by_implementation(_adagrad_single, _adagrad_foreach, no_scratch),
        exact(SINGLE, FOREACH, FUSED),
        "torch.optim.adagrad: _single_tensor_adagrad, _multi_tensor_adagrad, _fused_adagrad (CPU only)",
        WEIGHT_DECAY_MAXIMIZE,
        check=_adagrad_fused_on_cpu_only,
    ),
)


# -------------------------------------------------------------------------------------- Adadelta
# Step scratch: std and delta of p_i and p_(i-1); foreach 2N. Exact.


def _adadelta_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)
        live.make("std", b)  # square_avg.add(eps).sqrt_()
        live.make("delta", b)  # acc_delta.add(eps).sqrt_()
    return live.peak


def _adadelta_foreach(c: Context) -> int:
    live, n = Live(), c.total
    cpu_step(live, c)
    foreach_grads(live, n, c.opts)
    live.make("std", n)  # torch._foreach_add(square_avgs, eps)
    live.make("deltas", n)  # torch._foreach_add(acc_deltas, eps)
    return live.peak


ADADELTA = torch_spec(
    "adadelta",
    [],
    Family.FIRST_ORDER_ADAPTIVE,
    "Adadelta",
    "step + square_avg + acc_delta (2x params).",
    {"capturable": False},
    per_param("square_avg", "acc_delta"),
    step=StepScratch(
        by_implementation(_adadelta_single, _adadelta_foreach),
        exact(SINGLE, FOREACH),
        "torch.optim.adadelta: _single_tensor_adadelta, _multi_tensor_adadelta",
        WEIGHT_DECAY_MAXIMIZE,
    ),
)


# --------------------------------------------------------------------------------------- RMSprop
# Step scratch: avg of p_i + avg of p_(i-1); foreach avg N. Exact.


def _rmsprop_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    keys = (
        ("square_avg",)
        + (("momentum_buffer",) if opts["momentum"] > 0 else ())
        + (("grad_avg",) if opts["centered"] else ())
    )
    return per_param(*keys)(params, dtype, opts)


def _rmsprop_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)
        live.make("avg", b)  # square_avg.sqrt() or .addcmul(...).sqrt_()
    return live.peak


def _rmsprop_foreach(c: Context) -> int:
    live, n = Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    cpu_step(live, c)
    if coupled_weight_decay(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    live.make("avg", n)  # torch._foreach_sqrt / _foreach_addcmul
    return live.peak


RMSPROP = torch_spec(
    "rmsprop",
    [],
    Family.FIRST_ORDER_ADAPTIVE,
    "RMSprop",
    "step + square_avg (1x); momentum > 0 adds momentum_buffer, centered adds grad_avg.",
    {"momentum": 0.0, "centered": False, "capturable": False},
    _rmsprop_states,
    step=StepScratch(
        by_implementation(_rmsprop_single, _rmsprop_foreach),
        exact(SINGLE, FOREACH),
        "torch.optim.rmsprop: _single_tensor_rmsprop, _multi_tensor_rmsprop",
        WEIGHT_DECAY_MAXIMIZE,
    ),
)


# ----------------------------------------------------------------------------------------- Rprop
# Step scratch: sign (2 n_i while made), bool masks, the grad clone and grad.sign(); foreach: signs N
# + one tensor's mask and where(). Exact.


def _rprop_single(c: Context) -> int:
    # `sign[sign.gt(0)] = etaplus`: a bool mask (1 byte per element); index_put_ with one boolean
    # mask and a scalar value is a masked_fill_, which allocates no indices.
    live = Live()
    for i in range(len(c.sizes)):
        b, n = c.nbytes(i), c.sizes[i]
        loop_grad(live, b, c.opts, weight_decay=False)
        live.make("sign", b, transient=b)  # grad.mul(prev).sign()
        # capturable: sign.copy_(torch.where(sign.gt(0), etaplus, sign)): + the 0-d etaplus, result
        where = b + c.elem if c.opts["capturable"] else 0
        live.touch(n + where)  # sign[sign.gt(0)] = etaplus (and lt, eq)
        live.make("grad", b)  # grad = grad.clone()
        live.touch(n + where)  # grad[sign.eq(etaminus)] = 0
        live.touch(b)  # param.addcmul_(grad.sign(), step_size)
    return live.peak + capturable_slack(c, False)


def _rprop_foreach(c: Context) -> int:
    live, n = Live(), c.total
    cpu_step(live, c)
    live.make("signs", n)  # torch._foreach_mul(grads, prevs)
    # one tensor at a time: sign[sign.gt(0)] = etaplus (bool mask), then
    # grad.copy_(torch.where(sign.eq(etaminus), 0, grad)): bool mask, the scalar 0 as a 0-d tensor
    # of the grad's dtype (where.ScalarSelf: at::scalar_tensor), and the result
    live.touch(max(n_i + c.nbytes(i) for i, n_i in enumerate(c.sizes)) + c.elem)
    live.free("signs")
    live.make("grad_signs", n)  # [grad.sign() for grad in grouped_grads]
    return live.peak + capturable_slack(c, True)


RPROP = torch_spec(
    "rprop",
    [],
    Family.FIRST_ORDER_ADAPTIVE,
    "Rprop",
    "step + prev + step_size (2x params).",
    {"capturable": False},
    per_param("prev", "step_size"),
    step=StepScratch(
        by_implementation(_rprop_single, _rprop_foreach),
        exact(SINGLE, FOREACH),
        "torch.optim.rprop: _single_tensor_rprop, _multi_tensor_rprop",
        {"maximize": False},
    ),
)

SPECS = [ADAGRAD, ADADELTA, RMSPROP, RPROP]
