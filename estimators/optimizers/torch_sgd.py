"""torch.optim's stochastic gradient descent: SGD (with and without momentum) and averaged SGD (ASGD).

States and step scratch of each, read from torch 2.13.0 (shared facts: _torch.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..tensors import ParamTensor, StateTensor
from ._scratch import (
    FOREACH,
    FUSED,
    SCALAR,
    SINGLE,
    Context,
    Live,
    StepScratch,
    by_implementation,
    coupled_weight_decay,
    cpu_step,
    exact,
    foreach_grads,
    loop_grad,
    no_scratch,
)
from ._spec import Family, like
from ._torch import WEIGHT_DECAY_MAXIMIZE, per_param, scalars_on_device, torch_spec

# ------------------------------------------------------------------------------------------- SGD
# Step scratch: `_single_tensor_sgd`: only maximize / weight_decay / nesterov gradient copies
# (0 by default); `_multi_tensor_sgd`: N with maximize or weight_decay; `_fused_sgd`: 0. Exact.


def _sgd_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    # momentum_buffer = clone(grad) on the first step; with momentum == 0 the state is never touched.
    if opts["momentum"] == 0:
        return []
    return [like("momentum_buffer", p, dtype) for p in params]


def _sgd_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)
        if c.opts["momentum"] != 0:
            if c.opts["nesterov"]:
                live.make("grad", b)  # grad = grad.add(buf, alpha=momentum)
            else:
                live.ref("grad")  # grad = buf
    return live.peak


def _sgd_foreach(c: Context) -> int:
    # nesterov adds the buffers into device_grads in place; grads = bufs otherwise
    live = Live()
    foreach_grads(live, c.total, c.opts)
    return live.peak


_SGD_STEP = StepScratch(
    by_implementation(_sgd_single, _sgd_foreach, no_scratch),
    exact(SINGLE, FOREACH, FUSED),
    "torch.optim.sgd: _single_tensor_sgd, _multi_tensor_sgd, _fused_sgd",
    {**WEIGHT_DECAY_MAXIMIZE, "nesterov": False},
)

SGD = torch_spec(
    "sgd",
    ["torch.optim.sgd"],
    Family.FIRST_ORDER_STOCHASTIC,
    "SGD",
    "Plain SGD (momentum=0, torch's default): no state at all; with momentum, one buffer.",
    {"momentum": 0.0},
    _sgd_states,
    step=_SGD_STEP,
)

SGD_MOMENTUM = torch_spec(
    "sgd-momentum",
    ["sgdm", "sgd+m", "nag", "nesterov"],
    Family.FIRST_ORDER_STOCHASTIC,
    "SGD",
    "SGD with (Nesterov) momentum: momentum_buffer, a clone of the first gradient (1x params).",
    {"momentum": 0.9},
    _sgd_states,
    step=_SGD_STEP,
)


# ------------------------------------------------------------------------------------------ ASGD
# Step scratch: param.sub(ax) of p_i (after t0 steps; an upper bound before); foreach: intermediate N.


def _asgd_single(c: Context) -> int:
    # ax.add_(param.sub(ax).mul_(mu)) runs once mu = 1 / max(1, step - t0) != 1, i.e. after t0
    # steps (1e6 by default; before that ax.copy_(param)): counted, so the figure is exact from
    # then on and an upper bound before.
    # new_eta / new_mu (torch.as_tensor, host 0-d) stay referenced into the next iteration.
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)
        live.touch(b)
        if c.device == "cpu":
            live.make("new_eta", SCALAR)
            live.make("new_mu", SCALAR)
    return live.peak


def _asgd_foreach(c: Context) -> int:
    live, n, p = Live(), c.total, len(c.sizes)
    if c.opts["maximize"]:
        live.make("grads", n)
    cpu_step(live, c)
    if coupled_weight_decay(c.opts) and c.opts["maximize"]:
        live.alias("intermediate", "grads")
    else:
        live.make("intermediate", n)  # torch._foreach_add(grads, params, ...)
    live.free("intermediate")
    live.make("intermediate", n)  # torch._foreach_sub(params, axs)
    live.free("intermediate")
    live.make("new_etas", p * SCALAR)  # torch.as_tensor(..., device=device) each
    live.make("new_mus", p * SCALAR)
    return live.peak


ASGD = torch_spec(
    "asgd",
    [],
    Family.FIRST_ORDER_STOCHASTIC,
    "ASGD",
    "step, eta, mu (three 0-d float32) + ax, the running average of the weights (1x params).",
    {},
    per_param("ax", scalars=("eta", "mu"), on_device=scalars_on_device),
    step=StepScratch(
        by_implementation(_asgd_single, _asgd_foreach),
        {SINGLE: "exact after t0 steps (averaging), an upper bound before", FOREACH: "exact"},
        "torch.optim.asgd: _single_tensor_asgd, _multi_tensor_asgd",
        WEIGHT_DECAY_MAXIMIZE,
    ),
)


SPECS = [SGD, SGD_MOMENTUM, ASGD]
