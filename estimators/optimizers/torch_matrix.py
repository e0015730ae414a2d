"""torch.optim's updates built from a tensor's matrix structure: Adafactor (a factored second moment)
and Muon (an orthogonalized momentum, Newton-Schulz).

States and step scratch of each, read from torch 2.13.0 (shared facts: _torch.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

from ..errors import MemprofUserError
from ..tensors import ParamTensor, StateTensor
from ._scratch import (
    FOREACH,
    FOREACH_DEVICES,
    SINGLE,
    Context,
    Live,
    StepScratch,
    always_picks,
    by_implementation,
    cpu_step,
    exact,
    loop_grad,
)
from ._spec import Family, like, scalar
from ._torch import torch_spec
from .torch_adam import adam_foreach, adam_single

# ------------------------------------------------------------------------------------- Adafactor
# Step scratch: row/col means, var_estimate (n_i) + whatever earlier parameters left bound; foreach
# (per is-matrix group) var_estimates. Exact. The default on CUDA too is the loop (adafactor():
# foreach=None is falsy).


def _adafactor_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    # >= 2-D: row_var (last dim -> 1) and col_var (second-to-last dim -> 1); 1-D: a full variance.
    out: list[StateTensor] = []
    for p in params:
        out.append(scalar("step", p, host=True))  # "Deliberately host `step` on CPU"
        if len(p.shape) > 1:
            out.append(StateTensor("row_var", tuple(p.shape[:-1]) + (1,), dtype, p.name))
            out.append(StateTensor("col_var", tuple(p.shape[:-2]) + (1, p.shape[-1]), dtype, p.name))
        else:
            out.append(like("variance", p, dtype))
    return out


def _factored(shape: tuple[int, ...]) -> tuple[int, int]:
    """numel of row_mean (last dim -> 1) and col_mean (second-to-last dim -> 1)."""
    rows = 1
    for d in shape[:-1]:
        rows *= d
    cols = shape[-1]
    for d in shape[:-2]:
        cols *= d
    return rows, cols


def _adafactor_single(c: Context) -> int:
    # Locals are bound only in their branch, so a vector's grad_squared or a matrix's row_mean,
    # col_mean stay referenced until a later parameter of the same kind rebinds them.
    live, e = Live(), c.elem
    for i, shape in enumerate(c.shapes):
        b = c.nbytes(i)
        loop_grad(live, b, c.opts, weight_decay=False)
        live.touch(e)  # param.norm(2)
        if len(shape) > 1:
            rows, cols = _factored(shape)
            live.make("row_mean", rows * e)  # torch.norm(grad, dim=-1, keepdim=True)
            live.make("col_mean", cols * e)
            live.make("var_estimate", b)  # row_var @ col_var
            live.touch(prod(shape[:-2]) * e)  # row_var.mean(dim=-2, keepdim=True)
        else:
            live.make("grad_squared", b)  # grad * grad
            live.make("var_estimate", b)  # variance.clone()
        live.alias("update", "var_estimate")  # var_estimate.clamp_(...).rsqrt_()
        live.touch(e)  # update.norm(2)
    return live.peak


def _adafactor_foreach(c: Context) -> int:
    # One pass per (device, dtype, is-matrix) group, in order of first appearance; `updates` of
    # the previous group is freed only when the next group rebinds it.
    live, e = Live(), c.elem
    order: list[bool] = []
    for shape in c.shapes:
        if (len(shape) > 1) not in order:
            order.append(len(shape) > 1)
    for matrix in order:
        idx = [i for i, s in enumerate(c.shapes) if (len(s) > 1) == matrix]
        n = sum(c.nbytes(i) for i in idx)
        live.ref("grads")
        if c.opts["maximize"]:
            live.make("grads", n)
        cpu_step(live, c)
        live.touch(e)  # p.norm(2) per parameter, one at a time
        if matrix:
            rows = sum(_factored(c.shapes[i])[0] for i in idx) * e
            cols = sum(_factored(c.shapes[i])[1] for i in idx) * e
            live.make("row_means", rows)
            live.free("row_means")
            live.make("col_means", cols)
            live.free("col_means")
            live.make("var_estimates", n)  # [row_var @ col_var ...]
            live.make("row_var_means", sum(prod(c.shapes[i][:-2]) for i in idx) * e)
            live.free("row_var_means")
        else:
            live.make("grads_squared", n)
            live.free("grads_squared")
            live.make("var_estimates", n)  # [v.clone() for v in variances]
        live.alias("updates", "var_estimates")
        live.touch(e)  # update.norm(2)
    return live.peak


ADAFACTOR = torch_spec(
    "adafactor",
    ["torch.optim.adafactor"],
    Family.FIRST_ORDER_ADAPTIVE,
    "Adafactor",
    "step + factored second moment: row_var and col_var for >= 2-D tensors, a full variance for 1-D.",
    {},
    _adafactor_states,
    step=StepScratch(
        by_implementation(_adafactor_single, _adafactor_foreach),
        exact(SINGLE, FOREACH),
        "torch.optim._adafactor: _single_tensor_adafactor, _multi_tensor_adafactor",
        {"maximize": False},
        default=always_picks(SINGLE),
    ),
)


# ------------------------------------------------------------------------------------------ Muon
# Step scratch: `_zeropower_via_newtonschulz` in bfloat16 (the copy, X X^T, the addmm chain) per 2-D
# parameter, the AdamW fallback for the others as a second step(). Exact. Muon has no foreach
# implementation.

NS_DTYPE_BYTES = 2  # _zeropower_via_newtonschulz works in bfloat16


def _muon_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    out: list[StateTensor] = []
    others = [p for p in params if len(p.shape) != 2]
    if others and opts["fallback"] != "adamw":
        raise MemprofUserError(
            "torch.optim.Muon only accepts 2-D parameters; not 2-D: "
            + ", ".join(p.name for p in others[:5])
            + (" ..." if len(others) > 5 else "")
            + "; use fallback='adamw' to step them with torch.optim.AdamW"
        )
    for p in params:
        if len(p.shape) == 2:
            out.append(like("momentum_buffer", p, dtype))
        else:
            out.extend([scalar("step", p, host=True), like("exp_avg", p, dtype), like("exp_avg_sq", p, dtype)])
    return out


def _muon_part(c: Context, idx: Sequence[int]) -> int:
    """`_single_tensor_muon` over the 2-D parameters `idx`."""
    live = Live()
    for i in idx:
        rows, cols = c.shapes[i]
        b = c.nbytes(i)
        live.ref("grad")
        if c.opts["nesterov"]:
            live.make("update", b)  # grad.lerp(buf, momentum)
        else:
            live.ref("update")  # update = buf
        x = rows * cols * NS_DTYPE_BYTES
        m = min(rows, cols)
        if c.dtype == "bfloat16":
            live.alias("ortho_grad", "update")  # grad.bfloat16() is grad itself
        else:
            live.make("ortho_grad", x)  # grad.bfloat16()
        live.touch(2 * NS_DTYPE_BYTES)  # ortho_grad.norm().clamp(min=eps)
        for _ in range(c.opts["ns_steps"]):
            live.make("gram_matrix", m * m * NS_DTYPE_BYTES)  # X @ X.T
            live.make("gram_update", m * m * NS_DTYPE_BYTES)  # addmm(gram, gram, gram)
            live.make("ortho_grad", x)  # addmm(X, gram_update, X)
        live.free("gram_matrix")
        live.free("gram_update")
        live.alias("update", "ortho_grad")  # update = _zeropower_via_newtonschulz(...)
        live.free("ortho_grad")
    return live.peak


def _muon_step(c: Context) -> int:
    # torch.optim.Muon steps the 2-D parameters; memprof's spec hands the others to a
    # torch.optim.AdamW stepped after it (a second step() call: the peak is the larger one).
    two_d = [i for i, s in enumerate(c.shapes) if len(s) == 2]
    rest = [i for i, s in enumerate(c.shapes) if len(s) != 2]
    peak = _muon_part(c, two_d) if two_d else 0
    if rest:
        sub = c.subset(rest, maximize=False, weight_decay=1e-2, decoupled=True, capturable=False)
        impl = adam_foreach if c.device in FOREACH_DEVICES else adam_single
        peak = max(peak, impl(sub))
    return peak


MUON = torch_spec(
    "muon",
    [],
    Family.FIRST_ORDER_ADAPTIVE,
    "Muon",
    "momentum_buffer (1x) for 2-D parameters; Muon rejects others, which go to AdamW (fallback).",
    {"fallback": "adamw"},
    _muon_states,
    step=StepScratch(
        {SINGLE: _muon_step},
        exact(SINGLE),
        "torch.optim._muon: _single_tensor_muon, _zeropower_via_newtonschulz (+ AdamW for the other parameters)",
        {"nesterov": True, "ns_steps": 5},
        default=always_picks(SINGLE),
    ),
)

SPECS = [ADAFACTOR, MUON]
