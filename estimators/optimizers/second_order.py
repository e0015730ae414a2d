"""Second-order optimizers of pytorch-optimizer 4.1.0: Shampoo, SOAP (preconditioners), SophiaH and
AdaHessian (diagonal Hessian estimates). L-BFGS lives with torch.optim (torch_lbfgs.py).

States and step scratch of each, read from the package's source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..tensors import ParamTensor, StateTensor
from ._scratch import (
    F32,
    FOREACH,
    NONE,
    SINGLE,
    Context,
    Live,
    ScratchModel,
    StepScratch,
    always_picks,
    by_implementation,
    exact,
)
from ._spec import PYTORCH_OPTIMIZER, Family, OptimizerSpec, StateBuilder, check_int, like

# ------------------------------------------------------------------ preconditioners: Shampoo, SOAP
# Step scratch, statement by statement from pytorch-optimizer 4.1.0 (which tensordot / movedim /
# reshape makes a copy and which a view; what each local keeps alive), measured exact for vectors
# and matrices in float32 and bfloat16 (tests/test_optimizer_temporaries.py). Not counted: LAPACK's
# own workspace (gesdd / geqrf), which runs below the dispatcher and outside what a tracker of
# tensors sees.


# ----------------------------------------------------------------------------------------- Shampoo
# Step scratch: statement by statement (the U/C/R copies of each dimension, compute_power_svd's
# float32 U, S, Vh, products and cast); exact for vectors, matrices and 3-d / 4-d tensors, float32
# and bfloat16.


def _shampoo_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
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


def _power_svd(d: int, e: int) -> int:
    """compute_power_svd(pre_cond, 2 * order) of a d x d statistic in dtype bytes e: U, S, Vh of
    torch.linalg.svd(matrix.to(float32)) (+ that copy while it runs, unless float32), then
    `((u * s.unsqueeze(-2)) @ vh)` with u * s still held by the matmul, then `.to(dtype)` of it
    (a copy unless float32). The largest of these moments."""
    copy = 0 if e == F32 else d * d * F32
    usv = (2 * d * d + d) * F32
    return max(
        copy + usv,  # inside the SVD
        usv + 2 * d * d * F32,  # u * s and the product
        usv + d * d * F32 + (0 if e == F32 else d * d * e),
    )  # the product cast back


def _shampoo_step(c: Context) -> int:
    # Shampoo.step per parameter, dimension by dimension (preconditioning_compute_steps=1: the SVD
    # every step); n: the parameter's bytes. Dimension 0: `unfolded_grad` and
    # `grad.transpose_(0, 0).contiguous()` are p.grad itself (views), the SVD, then
    # `grad = inv_pre_cond @ grad` (A, n). Dimension k >= 1: `movedim(k, 0).reshape(dim, -1)` of
    # p.grad is a view for a matrix (the shape does not change) and a copy (U, n) for a tensor of
    # 3 or more dimensions; `grad.transpose_(0, k).contiguous()` copies A (C, n) before `grad` is
    # rebound (A released); `grad_t` keeps C through the SVD and `grad_t @ inv_pre_cond` (or
    # `inv_pre_cond @ grad`: R, n). R becomes state['momentum_buffer'], replacing the old one
    # (net 0). U and C stay bound into the next parameter until `unfolded_grad` and `grad_t` are
    # rebound, before its first SVD: no overlap.
    # For 3 or more dimensions U is a copy too, and dimension k >= 2 starts with U, C and R of
    # k - 1 alive: its U (4n), then its C while R of k - 1 is still `grad` (4n); the SVD with
    # U and C (2n + SVD); the product (3n). Dimension 1: U, A and C (3n), the SVD (2n + SVD).
    e, peak = c.elem, 0
    for i, shape in enumerate(c.shapes):
        n = c.nbytes(i)
        peak = max(peak, _power_svd(shape[0], e), n)
        for k, d in enumerate(shape[1:], start=1):
            if len(shape) == 2:
                peak = max(peak, 2 * n, n + _power_svd(d, e))
            else:
                peak = max(peak, (3 if k == 1 else 4) * n, 2 * n + _power_svd(d, e))
    return peak


SHAMPOO = OptimizerSpec(
    "shampoo",
    (),
    Family.SECOND_ORDER_PRECONDITIONER,
    f"pytorch_optimizer.Shampoo ({PYTORCH_OPTIMIZER})",
    "Per dimension d of each tensor a d x d statistic and its inverse root "
    "(2 * sum d^2), plus the preconditioned-gradient buffer (1x params).",
    {"momentum": 0.0},
    _shampoo_states,
    step=StepScratch(
        {NONE: _shampoo_step},
        {NONE: "exact (vectors, matrices, 3-d and 4-d tensors measured); LAPACK's SVD workspace not counted"},
        "pytorch_optimizer.Shampoo.step, compute_power_svd",
        default=always_picks(NONE),
    ),
)


# -------------------------------------------------------------------------------------------- SOAP
# Step scratch: statement by statement (tensordot rotations, de_nom, the quotient, outer products,
# the QR refresh: index_select, float32 Q and R); exact for vectors and matrices, both dtypes; an
# upper bound for tensors of 3 or more dimensions (tensordot's operand copies).


def _soap_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    # Adam moments like the gradient, plus per dimension of size <= max_precondition_dim a (d, d)
    # statistic GG and its eigenbasis Q; 1-D tensors are preconditioned only with precondition_1d.
    # (merge_dims=True reshapes before preconditioning and is not modelled.)
    limit = check_int("soap", "max_precondition_dim", opts["max_precondition_dim"], 1)
    out = []
    for p in params:
        out += [like("exp_avg", p, dtype), like("exp_avg_sq", p, dtype)]
        dims: tuple[int, ...]
        if len(p.shape) == 1:
            dims = p.shape if opts["precondition_1d"] else ()
        else:
            dims = p.shape
        for d in dims:
            if d <= limit:
                out.append(StateTensor("GG", (d, d), dtype, p.name))
                out.append(StateTensor("Q", (d, d), dtype, p.name))
    return out


def _soap_dims(shape: tuple[int, ...], o: Mapping[str, Any]) -> list[int | None]:
    """The size of each dimension SOAP keeps an eigenbasis Q for (None: `[]`, left unrotated)."""
    limit = o["max_precondition_dim"]
    if len(shape) == 1 and not o["precondition_1d"]:
        return [None]
    return [d if d <= limit else None for d in shape]


def _soap_step(c: Context) -> int:
    # SOAP.step per parameter (steps > 1; merge_dims=False), n: the parameter's bytes, k: how many
    # of its dimensions have an eigenbasis. project() rotates dimension by dimension with
    # torch.tensordot(grad, Q, dims=[[0], [0 or 1]]); tensordot permutes and reshapes both
    # operands (views for a matrix or a vector: the shape does not change; a copy of the operand
    # for 3 or more dimensions), then one mm (n): the previous rotation is released after the
    # next exists, so k >= 2 rotations hold 2n at once; k = 0 returns a permuted view. Then:
    # grad_projected (n), its square (n, within the statement), de_nom = exp_avg_sq.sqrt() (n),
    # exp_avg_projected (n), `exp_avg_projected / de_nom` (n) rotated back into norm_grad (n).
    # The four stay bound into the next parameter. update_pre_conditioner: each outer product
    # tensordot(grad, grad) (d x d; the previous one kept until rebound), or for a vector
    # `grad.unsqueeze(1) @ grad.unsqueeze(0)` (d x d within the statement); then
    # get_orthogonal_matrix_qr (counted: every precondition_frequency steps, the peak over a run)
    # per rotated dimension: matrix_product = GG @ Q (d^2), `Q * matrix_product` (d^2, within
    # the statement), est_eig (d), argsort (int64, d), exp_avg_sq.index_select (n, the previous
    # selection released after), power_iter (d^2), torch.linalg.qr(power_iter.to(float32)): the
    # copy (unless float32), Q and R (float32, R kept in `_`), q.to(dtype) (a copy unless float32)
    # appended to the new basis list. The new exp_avg_sq and Q replace the states when returned.
    # Not counted: LAPACK's own workspace (geqrf/orgqr run below the dispatcher).
    live, e = Live(), c.elem
    for i, shape in enumerate(c.shapes):
        n = c.nbytes(i)
        dims = _soap_dims(shape, c.opts)
        rotations = sum(d is not None for d in dims)
        copies = n if len(shape) > 2 else 0  # tensordot's permute + reshape of a >= 3-d operand
        held = n if rotations >= 2 else 0  # the previous rotation, while the next is made
        rotated = n if rotations else 0  # a rotation's result, and what making it holds
        rotating = (held + copies) if rotations else 0
        live.ref("grad")
        live.make("grad_projected", rotated, transient=rotating)
        live.touch(n)  # grad_projected.square()
        live.make("de_nom", n)
        live.make("exp_avg_projected", rotated, transient=rotating)
        live.make("quotient", n)  # exp_avg_projected / de_nom
        if rotations:
            live.make("norm_grad", rotated, transient=rotating)
        else:
            live.alias("norm_grad", "quotient")  # a permuted view of the quotient
        live.free("quotient")
        if len(shape) == 1:
            if dims[0] is not None:
                live.touch(dims[0] * dims[0] * e)  # the outer product, within the statement
        else:
            last = len(shape) - 1
            for idx, d in enumerate(dims):
                if d is not None:  # operands permuted off their order are copied
                    operand_copies = ((idx > 0) + (idx < last)) * copies
                    live.make("outer_product", d * d * e, transient=operand_copies)
        selected = False
        for ind, d in enumerate(dims):
            if d is None:
                continue
            dd = d * d
            live.make("matrix_product", dd * e)
            live.touch(dd * e)  # o * matrix_product
            live.make("est_eig", d * e)
            live.make("sort_idx", 8 * d)
            live.make("exp_avg_sq", n)
            selected = True
            live.make("power_iter", dd * e)
            live.make("q", dd * F32, transient=(0 if e == F32 else dd * F32) + dd * F32)
            live.make("_", dd * F32)  # R
            if e != F32:
                live.make("q", dd * e)
            live.alias(f"Q{ind}", "q")
        for var in ("matrix_product", "est_eig", "sort_idx", "power_iter", "q", "_", "outer_product"):
            live.free(var)  # locals of get_orthogonal_matrix_qr / update_pre_conditioner
        if selected:
            live.free("exp_avg_sq")  # state['exp_avg_sq'] = exp_avg_sq
        for ind in range(len(dims)):
            live.free(f"Q{ind}")  # state['Q'] = matrices
    return live.peak


SOAP = OptimizerSpec(
    "soap",
    (),
    Family.SECOND_ORDER_PRECONDITIONER,
    f"pytorch_optimizer.SOAP ({PYTORCH_OPTIMIZER})",
    "Adam moments (2x params) plus per dimension a d x d statistic GG and eigenbasis Q "
    "(2 * sum d^2, dimensions <= max_precondition_dim; 1-D only with precondition_1d).",
    {"max_precondition_dim": 10000, "precondition_1d": False},
    _soap_states,
    step=StepScratch(
        {NONE: _soap_step},
        {
            NONE: "exact for vectors and matrices; for 3 or more dimensions an upper "
            "bound (measured +9 % to +11 % on 3-d and 4-d weights); merge_dims not "
            "modelled; LAPACK's QR workspace not counted"
        },
        "pytorch_optimizer.SOAP.step, project, update_pre_conditioner, get_orthogonal_matrix_qr",
        default=always_picks(NONE),
    ),
)


# -------------------------------------------------------------------- Hutchinson: SophiaH, AdaHessian
# Step scratch: the update's intermediates and, on Hessian-update steps (every update_period steps;
# SophiaH 10, AdaHessian 1), compute_hutchinson_hessian's probe vectors zs and
# torch.autograd.grad's h_zs (2N). They need `loss.backward(create_graph=True)`
# (`needs_create_graph`): what that backward's recorded graph keeps alive, and the Hessian-vector
# product walks, is the step timeline's (estimators/timeline.py). NOT counted: what the walk itself
# allocates beyond zs and h_zs (gradients of the graph's tensors; activation-dependent).


def _hessian_states(*keys: str) -> StateBuilder:
    # the two moments + `hessian`, the Hutchinson estimate buffer (zeros_like(p) on the first update)
    def build(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
        return [like(k, p, dtype) for p in params for k in keys + ("hessian",)]

    return build


def _hutchinson(update: ScratchModel) -> ScratchModel:
    def model(c: Context) -> int:
        return max(2 * c.total if c.opts["hessian_step"] else 0, update(c))

    return model


def _sophia_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        live.make("update", c.nbytes(i))  # hessian_moment.clamp(min=eps); div out=
    return live.peak


def _sophia_foreach(c: Context) -> int:
    live = Live()
    live.make("updates", c.total)  # torch._foreach_clamp_min(hessian_moment)
    live.make("updates", c.total)  # torch._foreach_div(momentum, updates)
    return live.peak


def _adahessian_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        live.make("de_nom", c.nbytes(i))  # (exp_hessian_diag_sq / bc2).pow_().add_()
    return live.peak


def _adahessian_foreach(c: Context) -> int:
    return c.total  # torch._foreach_div(exp_hessian_diag_sq, bc2)


SOPHIA = OptimizerSpec(
    "sophia",
    ("sophiah", "sophia-h"),
    Family.SECOND_ORDER_DIAGONAL,
    f"pytorch_optimizer.SophiaH ({PYTORCH_OPTIMIZER})",
    "momentum + hessian_moment + the Hutchinson hessian buffer (3x params); needs backward(create_graph=True).",
    {},
    _hessian_states("momentum", "hessian_moment"),
    step=StepScratch(
        by_implementation(_hutchinson(_sophia_single), _hutchinson(_sophia_foreach)),
        exact(SINGLE, FOREACH),
        "pytorch_optimizer.SophiaH.step, _step_foreach, compute_hutchinson_hessian",
        {"hessian_step": True},
        default=always_picks(FOREACH),
        create_graph=True,
    ),
)

ADAHESSIAN = OptimizerSpec(
    "adahessian",
    (),
    Family.SECOND_ORDER_DIAGONAL,
    f"pytorch_optimizer.AdaHessian ({PYTORCH_OPTIMIZER})",
    "exp_avg + exp_hessian_diag_sq + the Hutchinson hessian buffer (3x params); needs backward(create_graph=True).",
    {},
    _hessian_states("exp_avg", "exp_hessian_diag_sq"),
    step=StepScratch(
        by_implementation(_hutchinson(_adahessian_single), _hutchinson(_adahessian_foreach)),
        exact(SINGLE, FOREACH),
        "pytorch_optimizer.AdaHessian.step, _step_foreach, compute_hutchinson_hessian",
        {"hessian_step": True},
        default=always_picks(FOREACH),
        create_graph=True,
    ),
)

SPECS = [SHAMPOO, SOAP, SOPHIA, ADAHESSIAN]
