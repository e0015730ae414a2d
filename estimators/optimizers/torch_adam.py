"""torch.optim's Adam and its variants: Adam, AdamW, Adamax, NAdam, RAdam, SparseAdam.

States and step scratch of each, read from torch 2.13.0 (shared facts: _torch.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..tensors import ParamTensor, StateTensor
from ._scratch import (
    FOREACH,
    FUSED,
    NONE,
    SINGLE,
    Context,
    Live,
    StepScratch,
    always_picks,
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

# ------------------------------------------------------------------------------------ Adam, AdamW
# Step scratch: `_single_tensor_adam`: sqrt and quotient of denom for p_i + denom of p_(i-1) (+ the
# coupled weight-decay / maximize gradient copies); `_multi_tensor_adam`: exp_avg_sq_sqrt (N);
# `_fused_adam`: 0. Exact. capturable (CUDA only): + 0-d tensors, bounded (upper bound).
# AdamW is Adam with decoupled weight decay: the same three functions, weight_decay=1e-2.


def _adam_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if opts["amsgrad"] else ())
    return per_param(*keys)(params, dtype, opts)


def adam_single(c: Context) -> int:
    """`_single_tensor_adam` (also Muon's AdamW fallback, torch_matrix.py)."""
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)
        # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps): sqrt, then the quotient
        live.make("denom", b, transient=b)
    return live.peak + capturable_slack(c, False)


def adam_foreach(c: Context) -> int:
    """`_multi_tensor_adam` (also Muon's AdamW fallback, torch_matrix.py)."""
    live, n = Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    cpu_step(live, c)
    if coupled_weight_decay(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    live.free("grads")  # del device_grads
    live.make("exp_avg_sq_sqrt", n)  # torch._foreach_sqrt(exp_avg_sqs)
    return live.peak + capturable_slack(c, True)


_ADAM_MODELS = by_implementation(adam_single, adam_foreach, no_scratch)
_ADAM_OPTIONS = {"amsgrad": False, "capturable": False, "fused": False}

ADAM = torch_spec(
    "adam",
    ["torch.optim.adam"],
    Family.FIRST_ORDER_ADAPTIVE,
    "Adam",
    "step (0-d float32) + exp_avg + exp_avg_sq (2x params); amsgrad adds max_exp_avg_sq.",
    _ADAM_OPTIONS,
    _adam_states,
    step=StepScratch(
        _ADAM_MODELS,
        exact(SINGLE, FOREACH, FUSED),
        "torch.optim.adam: _single_tensor_adam, _multi_tensor_adam, _fused_adam",
        WEIGHT_DECAY_MAXIMIZE,
        implied={"decoupled": False},
    ),
)

ADAMW = torch_spec(
    "adamw",
    ["torch.optim.adamw"],
    Family.FIRST_ORDER_ADAPTIVE,
    "AdamW",
    "Same state as Adam (AdamW subclasses Adam): step + exp_avg + exp_avg_sq (+ max_exp_avg_sq).",
    _ADAM_OPTIONS,
    _adam_states,
    step=StepScratch(
        _ADAM_MODELS,
        exact(SINGLE, FOREACH, FUSED),
        "torch.optim.adam (AdamW = decoupled Adam): the same three functions",
        {"weight_decay": 1e-2, "maximize": False},
        implied={"decoupled": True},
    ),
)


# ---------------------------------------------------------------------------------------- Adamax
# Step scratch: grad.abs() of p_i; foreach: abs list N. Exact.


def _adamax_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)
        live.touch(b)  # torch.maximum(..., grad.abs().add_(eps), out=)
        if c.opts["capturable"]:
            live.make("denom", b)  # denom = exp_inf * neg_bias_correction
    return live.peak + capturable_slack(c, False)


def _adamax_foreach(c: Context) -> int:
    live, n = Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    cpu_step(live, c)
    if coupled_weight_decay(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    if not c.opts["maximize"] and not coupled_weight_decay(c.opts):
        live.make("grads", n)  # torch._foreach_abs(grouped_grads)
    if c.opts["capturable"]:
        live.make("denom", n)  # torch._foreach_mul(exp_infs, bias_corrections)
    return live.peak + capturable_slack(c, True)


ADAMAX = torch_spec(
    "adamax",
    [],
    Family.FIRST_ORDER_ADAPTIVE,
    "Adamax",
    "step + exp_avg + exp_inf (2x params).",
    {"capturable": False},
    per_param("exp_avg", "exp_inf"),
    step=StepScratch(
        by_implementation(_adamax_single, _adamax_foreach),
        exact(SINGLE, FOREACH),
        "torch.optim.adamax: _single_tensor_adamax, _multi_tensor_adamax",
        WEIGHT_DECAY_MAXIMIZE,
    ),
)


# ----------------------------------------------------------------------------------------- NAdam
# Step scratch: denom (div, sqrt) as Adam; foreach exp_avg_sq_sqrt N. Exact.


def _nadam_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)
        live.make("denom", b, transient=b)  # exp_avg_sq.div(bias_correction2).sqrt()
        if c.opts["capturable"]:
            live.make("denom", b)  # denom = denom.add(eps)
            live.make("grad", b)  # grad = grad * (...)
            live.make("exp_avg", b)  # exp_avg = exp_avg * (...)
            live.ref("exp_avg")  # rebound to the state next iteration
    return live.peak + capturable_slack(c, False)


def _nadam_foreach(c: Context) -> int:
    live, n = Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    cpu_step(live, c)
    if coupled_weight_decay(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    live.make("exp_avg_sq_sqrt", n)
    if c.opts["capturable"]:
        live.make("numerator", n)  # torch._foreach_mul(step_size_grads, grads)
    return live.peak + capturable_slack(c, True)


NADAM = torch_spec(
    "nadam",
    [],
    Family.FIRST_ORDER_ADAPTIVE,
    "NAdam",
    "step + mu_product (0-d) + exp_avg + exp_avg_sq (2x params).",
    {"capturable": False},
    per_param("exp_avg", "exp_avg_sq", scalars=("mu_product",)),
    step=StepScratch(
        by_implementation(_nadam_single, _nadam_foreach),
        exact(SINGLE, FOREACH),
        "torch.optim.nadam: _single_tensor_nadam, _multi_tensor_nadam",
        WEIGHT_DECAY_MAXIMIZE,
        implied={"decoupled": False},
    ),
)


# ----------------------------------------------------------------------------------------- RAdam
# Step scratch (rectified steady state): bias_corrected_exp_avg, the product chain and sqrt /
# reciprocal (Tensor.__rdiv__) of the adaptive lr: 5 n_i; foreach buffer N. Exact.


def _radam_single(c: Context) -> int:
    # Steady state: the rectified branch (rho_t > 5, from about the 6th step with beta2=0.999)
    # param.add_(bias_corrected_exp_avg * lr * _compute_adaptive_lr() * _compute_rect()), where
    # the adaptive lr is (bias_correction2 ** 0.5) / exp_avg_sq.sqrt(): a python number divided
    # by a tensor is Tensor.__rdiv__, `self.reciprocal() * other`, two allocations.
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts)
        live.make("bias_corrected_exp_avg", b)  # exp_avg / bias_correction1
        if c.opts["capturable"]:
            # torch.where(rho_t > 5, rect * adaptive_lr, 1.0), bc2 a 0-d tensor: a plain div
            live.make("adaptive_lr", b, transient=b)  # sqrt, then the quotient
            live.make("product", b)  # rect * adaptive_lr
            live.free("adaptive_lr")
            live.make("update", b)  # torch.where(...)
            live.free("product")
            live.make("x", b)  # bias_corrected_exp_avg * lr
            live.touch(b)  # ... * update
        else:
            live.make("x", b)  # bias_corrected_exp_avg * lr
            live.make("adaptive_lr", b, transient=2 * b)  # sqrt, reciprocal, * (bc2 ** 0.5)
            live.make("x", b)  # x * adaptive_lr
            live.free("adaptive_lr")
            live.touch(b)  # ... * rect
        live.free("x")
        live.free("update")
    return live.peak + capturable_slack(c, False)


def _radam_foreach(c: Context) -> int:
    live, n = Live(), c.total
    cpu_step(live, c)
    foreach_grads(live, n, c.opts)
    live.free("grads")  # del grouped_grads
    live.make("buffer", n)  # torch._foreach_sqrt(exp_avg_sqs)
    return live.peak + capturable_slack(c, True)


RADAM = torch_spec(
    "radam",
    [],
    Family.FIRST_ORDER_ADAPTIVE,
    "RAdam",
    "step + exp_avg + exp_avg_sq (2x params).",
    {"capturable": False},
    per_param("exp_avg", "exp_avg_sq"),
    step=StepScratch(
        by_implementation(_radam_single, _radam_foreach),
        exact(SINGLE, FOREACH),
        "torch.optim.radam: _single_tensor_radam, _multi_tensor_radam",
        WEIGHT_DECAY_MAXIMIZE,
        implied={"decoupled": False},
    ),
)


# ------------------------------------------------------------------------------------ SparseAdam
# Step scratch: an upper bound, every embedding row counted as touched.


def _sparse_adam_step(c: Context) -> int:
    # torch.optim._functional.sparse_adam per parameter: the coalesced gradient, the values of
    # exp_avg / exp_avg_sq at its rows (sparse_mask), the two update values, and finally
    # -step_size * numer: <= 6 value tensors of (rows touched x row width), plus their int64 row
    # indices; the previous parameter's locals (5 value tensors) until rebound. The rows touched
    # depend on the batch: counted as ALL rows, so this is an upper bound that is loose when a
    # step touches few rows of a large table.
    e, peak, prev = c.elem, 0, 0
    for shape, n in zip(c.shapes, c.sizes):
        rows = shape[0] if shape else 1
        here = 6 * n * e + 4 * 8 * rows
        peak = max(peak, here + prev)
        prev = 5 * n * e + 4 * 8 * rows
    return peak


SPARSE_ADAM = torch_spec(
    "sparse-adam",
    ["sparseadam"],
    Family.FIRST_ORDER_ADAPTIVE,
    "SparseAdam",
    "Dense exp_avg + exp_avg_sq (2x params) although the gradients are sparse; step is a python int.",
    {},
    per_param("exp_avg", "exp_avg_sq", step=False),
    step=StepScratch(
        {NONE: _sparse_adam_step},
        {NONE: "upper bound (every row touched)"},
        "torch.optim._functional.sparse_adam",
        default=always_picks(NONE),
    ),
)

SPECS = [ADAM, ADAMW, ADAMAX, NADAM, RADAM, SPARSE_ADAM]
