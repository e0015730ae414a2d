"""The scratch memory an optimizer's `step()` allocates on top of parameters, gradients and states.

    >>> from memprof.estimators.optimizers.temporaries import step_temporary_bytes
    >>> from memprof.estimators.tensors import ParamTensor
    >>> params = [ParamTensor("w", (1024, 1024)), ParamTensor("b", (1024,))]
    >>> step_temporary_bytes("adamw", params, "float32", device="cuda")      # foreach: one list
    4198400
    >>> step_temporary_bytes("adamw", params, "float32", device="cpu")       # single-tensor loop
    8388608
    >>> step_temporary_bytes("adamw", params, "float32", implementation="fused")
    0

Steady state: the states exist already (the first step also allocates them; that is
`OptimizerSpec.state_bytes`, not a temporary). The figure is the peak, during step(), of the tensor
storages step() itself allocated and still references, in bytes: what a TorchDispatchMode tracker
sees on the CPU and what the caching allocator is asked for on a GPU (before its 512-byte
rounding). Not counted: the 0-d CPU tensors PyTorch wraps python numbers into for a tensor-scalar
op (8 bytes plus a 4-byte cast on the CPU allocator; host memory on a GPU), and memory a library
allocates outside PyTorch (LAPACK workspaces). Checked against measurements by
tests/test_optimizer_temporaries.py (torch 2.13.0, CPU, float32 and bfloat16).

How the three implementations of torch.optim differ:
- single_tensor (`_single_tensor_<name>`): a python loop over the parameters. A temporary made for
  parameter i is held by a local variable until a later iteration rebinds it, so the peak is the
  largest, over i, of what iteration i allocates plus what earlier iterations left referenced:
  for AdamW max_i(2*n_i + n_(i-1)) elements. Derived statement by statement from the source with
  `_Live`, which follows the bytes each local variable references.
- foreach (`_multi_tensor_<name>`): every op works on the list of a (device, dtype) group, so each
  intermediate is a list the size of ALL parameters of the group (AdamW: one list, N elements).
  torch's default on CUDA (`_default_to_fused_or_foreach`: foreach kernels exist for cuda, xpu,
  mtia, not for the CPU).
- fused (`_fused_<name>`: Adam, AdamW, SGD, Adagrad (CPU only)): one kernel updates in place,
  nothing is allocated. Never torch's default (`use_fused=False`): only fused=True selects it.
pytorch-optimizer has its own `_step_foreach` / `_step_per_param` ("foreach" / "single_tensor"),
foreach by default on every device; schedulefree's foreach is on by default; the others have one
implementation ("n/a").

`params` are taken as ONE param group, in step() order. torch steps param group by param group
and frees a group's intermediates when it returns: with several groups (HF Trainer's decay /
no-decay split) the foreach figure is that of the largest group, so the one-group figure is an
upper bound. Options beyond the spec's that change the temporaries (weight_decay, maximize,
nesterov, hessian_step, svd_step, ...) are accepted where they matter: see `Temporaries`.

Per optimizer: source functions; what is alive at the peak (n_i: parameter i, N: all); exactness.
- adam, adamw: `_single_tensor_adam`: sqrt and quotient of denom for p_i + denom of p_(i-1)
  (+ the coupled weight-decay / maximize gradient copies); `_multi_tensor_adam`: exp_avg_sq_sqrt
  (N); `_fused_adam`: 0. Exact. capturable (CUDA only): + 0-d tensors, bounded (upper bound).
- sgd, sgd-momentum: `_single_tensor_sgd`: only maximize / weight_decay / nesterov gradient copies
  (0 by default); `_multi_tensor_sgd`: N with maximize or weight_decay; `_fused_sgd`: 0. Exact.
- adagrad: std of p_i + std of p_(i-1); foreach: std + numerator (2N); fused (CPU): 0. Exact.
- adadelta: std and delta of p_i and p_(i-1); foreach 2N. Exact.
- adamax: grad.abs() of p_i; foreach: abs list N. Exact.
- asgd: param.sub(ax) of p_i (after t0 steps; an upper bound before); foreach: intermediate N.
- nadam: denom (div, sqrt) as Adam; foreach exp_avg_sq_sqrt N. Exact.
- radam (rectified steady state): bias_corrected_exp_avg, the product chain and sqrt /
  reciprocal (Tensor.__rdiv__) of the adaptive lr: 5 n_i; foreach buffer N. Exact.
- rmsprop: avg of p_i + avg of p_(i-1); foreach avg N. Exact.
- rprop: sign (2 n_i while made), bool masks, the grad clone and grad.sign(); foreach: signs N +
  one tensor's mask and where(). Exact.
- adafactor: row/col means, var_estimate (n_i) + whatever earlier parameters left bound; foreach
  (per is-matrix group) var_estimates. Exact. Default on CUDA too: the loop.
- muon: `_zeropower_via_newtonschulz` in bfloat16 (the copy, X X^T, the addmm chain) per 2-D
  parameter, the AdamW fallback for the others as a second step(). Exact.
- lbfgs: 5 flat vectors of all parameters (flat_grad, q, d, d*t and its abs) in steady state;
  0-d tensors bounded; the closure's forward/backward not counted.
- sparse-adam: upper bound, every embedding row counted as touched.
- lion, adabelief, diffgrad (pytorch-optimizer): update / grad_residual / de_nom per parameter or
  list; exact (adanorm: the data-dependent rescaled gradient counted: upper bound).
- prodigy, dadapt-adam: the sliced / full products of the d-estimate and denom; exact.
- schedulefree-adamw: denom per parameter or list; exact.
- galore: low-rank gradient, denom, exp_avg / denom and the back-projection (2 n_i); with
  svd_step (default, every update_proj_gap steps) the float32 SVD factors; exact.
- adamw8bit: CUDA 0 (fused in-place kernels, not measured); CPU: the reference kernels'
  dequantized states, float gradient and denom (5 n_i float32), measured with the CPU allocator.
- shampoo: statement by statement (the U/C/R copies of each dimension, compute_power_svd's
  float32 U, S, Vh, products and cast); exact for vectors, matrices and 3-d / 4-d tensors,
  float32 and bfloat16.
- soap: statement by statement (tensordot rotations, de_nom, the quotient, outer products, the
  QR refresh: index_select, float32 Q and R); exact for vectors and matrices, both dtypes; an
  upper bound for tensors of 3 or more dimensions (tensordot's operand copies).
- sophia, adahessian: the update's intermediates and, on Hessian-update steps, the Hutchinson
  probes and h_zs (2N). They need `loss.backward(create_graph=True)` (`needs_create_graph`): what
  that backward's recorded graph keeps alive is the step timeline's (estimators/timeline.py);
  the Hessian-vector product's own walk through that graph is NOT counted here.
- ga, pso: analytic (no implementation): 2 / 3 population-sized copies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Mapping, Sequence

from ..dtypes import dtype_bytes
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from . import get_optimizer
from ._spec import TORCH_SCALAR_DTYPE, OptimizerSpec

SINGLE, FOREACH, FUSED, NONE = "single_tensor", "foreach", "fused", "n/a"
IMPLEMENTATIONS = (SINGLE, FOREACH, FUSED, NONE)

# torch.utils._foreach_utils._get_foreach_kernels_supported_devices (privateuse1 aside); fused
# kernels exist on these and on the CPU, but are never the default.
FOREACH_DEVICES = ("cuda", "xpu", "mtia")
KNOWN_DEVICES = ("cuda", "cpu", "xpu", "mtia", "mps", "hpu")
SCALAR = dtype_bytes(TORCH_SCALAR_DTYPE)     # a 0-d step-dtype tensor (bias corrections, ...)


class _Live:
    """The tensors the local variables of a step() reference, and the peak of their bytes.

    Python semantics: `make(var, nbytes, transient)` is `var = expr`, where expr allocates
    `transient` bytes of intermediates that die inside the statement and its `nbytes` result, all
    while the old value of `var` is still referenced; the old value is released after the
    assignment unless another variable still refers to it (`alias`)."""

    def __init__(self) -> None:
        self._names: dict[str, int] = {}     # variable -> object id
        self._sizes: dict[int, int] = {}     # object id -> bytes
        self.peak = 0

    @property
    def now(self) -> int:
        return sum(self._sizes[o] for o in set(self._names.values()))

    def make(self, var: str, nbytes: int, transient: int = 0) -> None:
        self.peak = max(self.peak, self.now + transient + nbytes)
        obj = len(self._sizes)
        self._sizes[obj] = nbytes
        self._names[var] = obj

    def touch(self, nbytes: int) -> None:
        """A temporary that dies within its statement (`param.addcmul_(grad.sign(), ...)`)."""
        self.peak = max(self.peak, self.now + nbytes)

    def alias(self, var: str, other: str) -> None:
        """`var = other` where other holds a temporary: both names keep it alive."""
        self._names[var] = self._names[other]

    def ref(self, var: str) -> None:
        """`var = an existing tensor` (a gradient, a state) or `del var`: releases what var held."""
        self._names.pop(var, None)

    free = ref


@dataclass(frozen=True)
class Context:
    """What a temporaries model reads: the parameters' shapes, their dtype, the device, the options."""

    shapes: tuple[tuple[int, ...], ...]   # each parameter's shape, in param_groups order
    dtype: str                            # dtype of params / grads / states
    device: str                           # device type: "cuda", "cpu", ...
    opts: Mapping[str, Any]
    names: tuple[str, ...] = ()           # the parameters' names (GaLore's galore_params)

    @property
    def elem(self) -> int:
        return dtype_bytes(self.dtype)

    @property
    def sizes(self) -> list[int]:
        return [prod(s) for s in self.shapes]

    @property
    def total(self) -> int:
        return sum(self.sizes) * self.elem

    def nbytes(self, i: int) -> int:
        return prod(self.shapes[i]) * self.elem

    def subset(self, idx: Sequence[int], **opts: Any) -> "Context":
        return Context(tuple(self.shapes[i] for i in idx), self.dtype, self.device, {**self.opts, **opts},
                       tuple(self.names[i] for i in idx) if self.names else ())


Model = Callable[[Context], int]


@dataclass(frozen=True)
class Temporaries:
    """How one registry optimizer's step() allocates scratch memory, per implementation."""

    models: Mapping[str, Model]          # implementation -> bytes
    exactness: Mapping[str, str]         # implementation -> "exact" | "upper bound" | ...
    source: str                          # the functions it is read from
    extra_options: Mapping[str, Any] = field(default_factory=dict)  # defaults of non-spec options
    # (options, device type) -> the implementation the library picks when not told
    default: Callable[[Mapping[str, Any], str], str] = field(default=lambda opts, device: _torch_default(device))
    # the training loop must call loss.backward(create_graph=True): step() differentiates the
    # gradients (Hutchinson Hessian-vector products), so the backward's graph lives into step()
    create_graph: bool = False


def _torch_default(device: str) -> str:
    """torch.optim's `_default_to_fused_or_foreach(..., use_fused=False)`."""
    return FOREACH if device in FOREACH_DEVICES else SINGLE


def _always(implementation: str) -> Callable[[Mapping[str, Any], str], str]:
    """A library that picks the same implementation on every device."""
    return lambda opts, device: implementation


# ------------------------------------------------------------------------------- shared patterns

# capturable (CUDA graphs) keeps the bias corrections etc. as 0-d device tensors. Not measurable
# without a GPU: the param-sized tensors are read from the source, the 0-d ones bounded by these.
CAPTURABLE_LOOP_SCALARS = 16      # 0-d tensors one iteration of a single-tensor loop may hold
CAPTURABLE_FOREACH_LISTS = 6      # lists of one 0-d tensor per parameter a foreach step may hold


def _coupled_wd(o: Mapping[str, Any]) -> bool:
    return o.get("weight_decay", 0) != 0 and not o.get("decoupled", False)


def _grad(live: _Live, b: int, o: Mapping[str, Any], weight_decay: bool = True) -> None:
    """`grad = grads[i] if not maximize else -grads[i]`, then `grad = grad.add(param, alpha=wd)`."""
    if o.get("maximize"):
        live.make("grad", b)
    else:
        live.ref("grad")
    if weight_decay and _coupled_wd(o):
        live.make("grad", b)


def _grads(live: _Live, n: int, o: Mapping[str, Any], weight_decay: bool = True) -> None:
    """`device_grads = torch._foreach_neg(device_grads)` (maximize), then the coupled weight decay:
    `torch._foreach_add(device_grads, device_params)` (in place when maximize already copied)."""
    if o.get("maximize"):
        live.make("grads", n)
    if weight_decay and _coupled_wd(o) and not o.get("maximize"):
        live.make("grads", n)


def _cpu_step(live: _Live, c: Context) -> None:
    """`torch._foreach_add_(state_steps, torch.tensor(1.0, device="cpu"))`: steps on the host
    (not capturable); the 0-d tensor counts only when the parameters are on the CPU too."""
    if c.device == "cpu" and not c.opts.get("capturable"):
        live.touch(SCALAR)


def _capturable_slack(c: Context, foreach: bool) -> int:
    if not c.opts.get("capturable"):
        return 0
    if foreach:
        return CAPTURABLE_FOREACH_LISTS * len(c.sizes) * SCALAR
    return 2 * CAPTURABLE_LOOP_SCALARS * SCALAR


def _nothing(c: Context) -> int:
    """Fused kernels update params and states in place (first-step state creation aside)."""
    return 0


# ------------------------------------------------------------------------------------ Adam, AdamW

def _adam_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)
        # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps): sqrt, then the quotient
        live.make("denom", b, transient=b)
    return live.peak + _capturable_slack(c, False)


def _adam_foreach(c: Context) -> int:
    live, n = _Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    _cpu_step(live, c)
    if _coupled_wd(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    live.free("grads")                                # del device_grads
    live.make("exp_avg_sq_sqrt", n)                   # torch._foreach_sqrt(exp_avg_sqs)
    return live.peak + _capturable_slack(c, True)


# ------------------------------------------------------------------------------------------- SGD

def _sgd_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)
        if c.opts["momentum"] != 0:
            if c.opts["nesterov"]:
                live.make("grad", b)                  # grad = grad.add(buf, alpha=momentum)
            else:
                live.ref("grad")                      # grad = buf
    return live.peak


def _sgd_foreach(c: Context) -> int:
    # nesterov adds the buffers into device_grads in place; grads = bufs otherwise
    live = _Live()
    _grads(live, c.total, c.opts)
    return live.peak


# --------------------------------------------------------------------------------------- Adagrad

def _adagrad_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)                        # the zip loop rebinds grad each iteration
        live.make("std", b)                           # std = state_sum.sqrt().add_(eps)
    return live.peak


def _adagrad_foreach(c: Context) -> int:
    live, n = _Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    _cpu_step(live, c)
    if _coupled_wd(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    live.make("std", n)                               # torch._foreach_sqrt(state_sums)
    if not (_coupled_wd(c.opts) or c.opts["maximize"]):
        live.make("numerator", n)                     # torch._foreach_mul(device_grads, minus_clr)
    return live.peak


# -------------------------------------------------------------------------------------- Adadelta

def _adadelta_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)
        live.make("std", b)                           # square_avg.add(eps).sqrt_()
        live.make("delta", b)                         # acc_delta.add(eps).sqrt_()
    return live.peak


def _adadelta_foreach(c: Context) -> int:
    live, n = _Live(), c.total
    _cpu_step(live, c)
    _grads(live, n, c.opts)
    live.make("std", n)                               # torch._foreach_add(square_avgs, eps)
    live.make("deltas", n)                            # torch._foreach_add(acc_deltas, eps)
    return live.peak


# ---------------------------------------------------------------------------------------- Adamax

def _adamax_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)
        live.touch(b)                                 # torch.maximum(..., grad.abs().add_(eps), out=)
        if c.opts["capturable"]:
            live.make("denom", b)                     # denom = exp_inf * neg_bias_correction
    return live.peak + _capturable_slack(c, False)


def _adamax_foreach(c: Context) -> int:
    live, n = _Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    _cpu_step(live, c)
    if _coupled_wd(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    if not c.opts["maximize"] and not _coupled_wd(c.opts):
        live.make("grads", n)                         # torch._foreach_abs(grouped_grads)
    if c.opts["capturable"]:
        live.make("denom", n)                         # torch._foreach_mul(exp_infs, bias_corrections)
    return live.peak + _capturable_slack(c, True)


# ------------------------------------------------------------------------------------------ ASGD

def _asgd_single(c: Context) -> int:
    # ax.add_(param.sub(ax).mul_(mu)) runs once mu = 1 / max(1, step - t0) != 1, i.e. after t0
    # steps (1e6 by default; before that ax.copy_(param)): counted, so the figure is exact from
    # then on and an upper bound before.
    # new_eta / new_mu (torch.as_tensor, host 0-d) stay referenced into the next iteration.
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)
        live.touch(b)
        if c.device == "cpu":
            live.make("new_eta", SCALAR)
            live.make("new_mu", SCALAR)
    return live.peak


def _asgd_foreach(c: Context) -> int:
    live, n, p = _Live(), c.total, len(c.sizes)
    if c.opts["maximize"]:
        live.make("grads", n)
    _cpu_step(live, c)
    if _coupled_wd(c.opts) and c.opts["maximize"]:
        live.alias("intermediate", "grads")
    else:
        live.make("intermediate", n)                  # torch._foreach_add(grads, params, ...)
    live.free("intermediate")
    live.make("intermediate", n)                      # torch._foreach_sub(params, axs)
    live.free("intermediate")
    live.make("new_etas", p * SCALAR)                 # torch.as_tensor(..., device=device) each
    live.make("new_mus", p * SCALAR)
    return live.peak


# ----------------------------------------------------------------------------------------- NAdam

def _nadam_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)
        live.make("denom", b, transient=b)            # exp_avg_sq.div(bias_correction2).sqrt()
        if c.opts["capturable"]:
            live.make("denom", b)                     # denom = denom.add(eps)
            live.make("grad", b)                      # grad = grad * (...)
            live.make("exp_avg", b)                   # exp_avg = exp_avg * (...)
            live.ref("exp_avg")                       # rebound to the state next iteration
    return live.peak + _capturable_slack(c, False)


def _nadam_foreach(c: Context) -> int:
    live, n = _Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    _cpu_step(live, c)
    if _coupled_wd(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    live.make("exp_avg_sq_sqrt", n)
    if c.opts["capturable"]:
        live.make("numerator", n)                     # torch._foreach_mul(step_size_grads, grads)
    return live.peak + _capturable_slack(c, True)


# ----------------------------------------------------------------------------------------- RAdam

def _radam_single(c: Context) -> int:
    # Steady state: the rectified branch (rho_t > 5, from about the 6th step with beta2=0.999)
    # param.add_(bias_corrected_exp_avg * lr * _compute_adaptive_lr() * _compute_rect()), where
    # the adaptive lr is (bias_correction2 ** 0.5) / exp_avg_sq.sqrt(): a python number divided
    # by a tensor is Tensor.__rdiv__, `self.reciprocal() * other`, two allocations.
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)
        live.make("bias_corrected_exp_avg", b)        # exp_avg / bias_correction1
        if c.opts["capturable"]:
            # torch.where(rho_t > 5, rect * adaptive_lr, 1.0), bc2 a 0-d tensor: a plain div
            live.make("adaptive_lr", b, transient=b)  # sqrt, then the quotient
            live.make("product", b)                   # rect * adaptive_lr
            live.free("adaptive_lr")
            live.make("update", b)                    # torch.where(...)
            live.free("product")
            live.make("x", b)                         # bias_corrected_exp_avg * lr
            live.touch(b)                             # ... * update
        else:
            live.make("x", b)                         # bias_corrected_exp_avg * lr
            live.make("adaptive_lr", b, transient=2 * b)  # sqrt, reciprocal, * (bc2 ** 0.5)
            live.make("x", b)                         # x * adaptive_lr
            live.free("adaptive_lr")
            live.touch(b)                             # ... * rect
        live.free("x")
        live.free("update")
    return live.peak + _capturable_slack(c, False)


def _radam_foreach(c: Context) -> int:
    live, n = _Live(), c.total
    _cpu_step(live, c)
    _grads(live, n, c.opts)
    live.free("grads")                                # del grouped_grads
    live.make("buffer", n)                            # torch._foreach_sqrt(exp_avg_sqs)
    return live.peak + _capturable_slack(c, True)


# --------------------------------------------------------------------------------------- RMSprop

def _rmsprop_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _grad(live, b, c.opts)
        live.make("avg", b)                           # square_avg.sqrt() or .addcmul(...).sqrt_()
    return live.peak


def _rmsprop_foreach(c: Context) -> int:
    live, n = _Live(), c.total
    if c.opts["maximize"]:
        live.make("grads", n)
    _cpu_step(live, c)
    if _coupled_wd(c.opts) and not c.opts["maximize"]:
        live.make("grads", n)
    live.make("avg", n)                               # torch._foreach_sqrt / _foreach_addcmul
    return live.peak


# ----------------------------------------------------------------------------------------- Rprop

def _rprop_single(c: Context) -> int:
    # `sign[sign.gt(0)] = etaplus`: a bool mask (1 byte per element); index_put_ with one boolean
    # mask and a scalar value is a masked_fill_, which allocates no indices.
    live = _Live()
    for i in range(len(c.sizes)):
        b, n = c.nbytes(i), c.sizes[i]
        _grad(live, b, c.opts, weight_decay=False)
        live.make("sign", b, transient=b)             # grad.mul(prev).sign()
        # capturable: sign.copy_(torch.where(sign.gt(0), etaplus, sign)): + the 0-d etaplus, result
        where = b + c.elem if c.opts["capturable"] else 0
        live.touch(n + where)                         # sign[sign.gt(0)] = etaplus (and lt, eq)
        live.make("grad", b)                          # grad = grad.clone()
        live.touch(n + where)                         # grad[sign.eq(etaminus)] = 0
        live.touch(b)                                 # param.addcmul_(grad.sign(), step_size)
    return live.peak + _capturable_slack(c, False)


def _rprop_foreach(c: Context) -> int:
    live, n = _Live(), c.total
    _cpu_step(live, c)
    live.make("signs", n)                             # torch._foreach_mul(grads, prevs)
    # one tensor at a time: sign[sign.gt(0)] = etaplus (bool mask), then
    # grad.copy_(torch.where(sign.eq(etaminus), 0, grad)): bool mask, the scalar 0 as a 0-d tensor
    # of the grad's dtype (where.ScalarSelf: at::scalar_tensor), and the result
    live.touch(max(n_i + c.nbytes(i) for i, n_i in enumerate(c.sizes)) + c.elem)
    live.free("signs")
    live.make("grad_signs", n)                        # [grad.sign() for grad in grouped_grads]
    return live.peak + _capturable_slack(c, True)


# ------------------------------------------------------------------------------------- Adafactor

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
    live, e = _Live(), c.elem
    for i, shape in enumerate(c.shapes):
        b = c.nbytes(i)
        _grad(live, b, c.opts, weight_decay=False)
        live.touch(e)                                 # param.norm(2)
        if len(shape) > 1:
            rows, cols = _factored(shape)
            live.make("row_mean", rows * e)           # torch.norm(grad, dim=-1, keepdim=True)
            live.make("col_mean", cols * e)
            live.make("var_estimate", b)              # row_var @ col_var
            live.touch(prod(shape[:-2]) * e)          # row_var.mean(dim=-2, keepdim=True)
        else:
            live.make("grad_squared", b)              # grad * grad
            live.make("var_estimate", b)              # variance.clone()
        live.alias("update", "var_estimate")          # var_estimate.clamp_(...).rsqrt_()
        live.touch(e)                                 # update.norm(2)
    return live.peak


def _adafactor_foreach(c: Context) -> int:
    # One pass per (device, dtype, is-matrix) group, in order of first appearance; `updates` of
    # the previous group is freed only when the next group rebinds it.
    live, e = _Live(), c.elem
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
        _cpu_step(live, c)
        live.touch(e)                                 # p.norm(2) per parameter, one at a time
        if matrix:
            rows = sum(_factored(c.shapes[i])[0] for i in idx) * e
            cols = sum(_factored(c.shapes[i])[1] for i in idx) * e
            live.make("row_means", rows)
            live.free("row_means")
            live.make("col_means", cols)
            live.free("col_means")
            live.make("var_estimates", n)             # [row_var @ col_var ...]
            live.make("row_var_means", sum(prod(c.shapes[i][:-2]) for i in idx) * e)
            live.free("row_var_means")
        else:
            live.make("grads_squared", n)
            live.free("grads_squared")
            live.make("var_estimates", n)             # [v.clone() for v in variances]
        live.alias("updates", "var_estimates")
        live.touch(e)                                 # update.norm(2)
    return live.peak


# ------------------------------------------------------------------------------------------ Muon

NS_DTYPE_BYTES = 2    # _zeropower_via_newtonschulz works in bfloat16


def _muon_part(c: Context, idx: Sequence[int]) -> int:
    """`_single_tensor_muon` over the 2-D parameters `idx`."""
    live, e = _Live(), c.elem
    for i in idx:
        rows, cols = c.shapes[i]
        b = c.nbytes(i)
        live.ref("grad")
        if c.opts["nesterov"]:
            live.make("update", b)                    # grad.lerp(buf, momentum)
        else:
            live.ref("update")                        # update = buf
        x = rows * cols * NS_DTYPE_BYTES
        m = min(rows, cols)
        if c.dtype == "bfloat16":
            live.alias("ortho_grad", "update")        # grad.bfloat16() is grad itself
        else:
            live.make("ortho_grad", x)                # grad.bfloat16()
        live.touch(2 * NS_DTYPE_BYTES)                # ortho_grad.norm().clamp(min=eps)
        for _ in range(c.opts["ns_steps"]):
            live.make("gram_matrix", m * m * NS_DTYPE_BYTES)      # X @ X.T
            live.make("gram_update", m * m * NS_DTYPE_BYTES)      # addmm(gram, gram, gram)
            live.make("ortho_grad", x)                            # addmm(X, gram_update, X)
        live.free("gram_matrix")
        live.free("gram_update")
        live.alias("update", "ortho_grad")            # update = _zeropower_via_newtonschulz(...)
        live.free("ortho_grad")
    return live.peak


def _muon(c: Context) -> int:
    # torch.optim.Muon steps the 2-D parameters; memprof's spec hands the others to a
    # torch.optim.AdamW stepped after it (a second step() call: the peak is the larger one).
    two_d = [i for i, s in enumerate(c.shapes) if len(s) == 2]
    rest = [i for i, s in enumerate(c.shapes) if len(s) != 2]
    peak = _muon_part(c, two_d) if two_d else 0
    if rest:
        sub = c.subset(rest, maximize=False, weight_decay=1e-2, decoupled=True, capturable=False)
        impl = _adam_foreach if c.device in FOREACH_DEVICES else _adam_single
        peak = max(peak, impl(sub))
    return peak


# ----------------------------------------------------------------------------------------- LBFGS

def _lbfgs(c: Context) -> int:
    # Steady state (history full, no line search), per inner iteration of step(): flat_grad (cat
    # of the grads), the previous iteration's q and d are alive when y = flat_grad - prev_flat_grad
    # and s = d * t are made (they replace the oldest history pair: states, see the spec); the
    # stopping test d.mul(t).abs().max() then holds flat_grad, q, d and two more vectors: 5 flat
    # vectors in all. The closure's own memory (forward, backward) is not counted; 0-d tensors
    # (ys, ro, al, gtd, tests) are bounded by LBFGS_SCALARS.
    if c.opts["line_search_fn"] is not None:
        raise MemprofUserError("lbfgs with line_search_fn='strong_wolfe' is not modelled; valid: None")
    return 5 * c.total + LBFGS_SCALARS * c.elem


LBFGS_SCALARS = 8


# ------------------------------------------------------------- pytorch-optimizer: Lion, AdaBelief, DiffGrad
# BaseOptimizer negates (maximize) and decays (coupled weight decay) the gradient in place, so only
# the update's own intermediates count. `_step_foreach` runs unless an option forces the loop.

def _adanorm(live: _Live, b: int, c: Context) -> None:
    """get_adanorm_gradient: grad.mul(exp_grad_norm).div_(grad_norm) when the running norm exceeds
    this step's norm (data-dependent: counted, an upper bound), with the 0-d norm alive."""
    if c.opts.get("adanorm"):
        live.make("s_grad", b, transient=c.elem)


def _lion_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _adanorm(live, b, c)
        live.make("update", b)                        # exp_avg.lerp(grad, 1 - beta1).sign_()
    return live.peak


def _lion_foreach(c: Context) -> int:
    return c.total                                    # torch._foreach_lerp(exp_avgs, grads, ...)


def _adabelief_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _adanorm(live, b, c)
        live.make("grad_residual", b)                 # grad - exp_avg
        live.make("de_nom", b)                        # apply_ams_bound: exp_avg_var.add(eps)
    return live.peak


def _adabelief_foreach(c: Context) -> int:
    return 2 * c.total                                # grad_residuals, de_noms (_foreach_sub, _add)


def _diffgrad_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _adanorm(live, b, c)
        live.make("de_nom", b)                        # apply_ams_bound; dfc works in previous_grad
    return live.peak


def _diffgrad_foreach(c: Context) -> int:
    return c.total                                    # apply_ams_bound_foreach: _foreach_add


def _pyopt_default(loop_options: Sequence[str]):
    """pytorch-optimizer takes `_step_foreach` (dense real gradients, foreach not False) unless one
    of `loop_options` is set; on every device, the CPU included."""
    def default(opts: Mapping[str, Any], device: str) -> str:
        return SINGLE if any(opts.get(k) for k in loop_options) else FOREACH
    return default


# ---------------------------------------------------------------------- tuning-free: Prodigy, D-Adapt, SF

def _prodigy(c: Context) -> int:
    # First loop: torch.dot(sliced_grad, p0 - p.flatten()[::slice_p]) (a slice-sized difference
    # and the 0-d dot) and s.abs().sum(); second loop: denom = exp_avg_sq.sqrt().add_(d * eps).
    live, e = _Live(), c.elem
    slice_p = c.opts["slice_p"]
    for n in c.sizes:
        sliced = -(-n // slice_p) * e
        live.touch(sliced + e)
        live.touch(sliced + e)
    for i in range(len(c.sizes)):
        live.make("denom", c.nbytes(i))
    return live.peak


def _dadapt_adam(c: Context) -> int:
    # First loop: denom = exp_avg_sq.sqrt().add_(eps), torch.dot(grad, s.div(denom)) and
    # s.abs().sum(); second loop: denom again. `denom` stays bound from one loop to the next.
    live, e = _Live(), c.elem
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        live.make("denom", b)
        live.touch(b + e)
        live.touch(b + e)
    for i in range(len(c.sizes)):
        live.make("denom", c.nbytes(i))
    return live.peak


def _schedulefree_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        live.make("denom", c.nbytes(i))               # exp_avg_sq.div(bias_correction2).sqrt_()
    return live.peak


def _schedulefree_foreach(c: Context) -> int:
    return c.total                                    # torch._foreach_div(exp_avg_sq, bc2)


# -------------------------------------------------------------------- Hutchinson: SophiaH, AdaHessian
# On a Hessian-update step (every update_period steps; SophiaH 10, AdaHessian 1)
# compute_hutchinson_hessian holds the probe vectors zs and torch.autograd.grad's h_zs (2 x all
# parameters). The graph that backward(create_graph=True) recorded, and that the Hessian-vector
# product walks, is the step timeline's (`needs_create_graph`). NOT counted: what the walk
# itself allocates beyond zs and h_zs (gradients of the graph's tensors; activation-dependent).

def _hutchinson(update: Model) -> Model:
    def model(c: Context) -> int:
        return max(2 * c.total if c.opts["hessian_step"] else 0, update(c))
    return model


def _sophia_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        live.make("update", c.nbytes(i))              # hessian_moment.clamp(min=eps); div out=
    return live.peak


def _sophia_foreach(c: Context) -> int:
    live = _Live()
    live.make("updates", c.total)                     # torch._foreach_clamp_min(hessian_moment)
    live.make("updates", c.total)                     # torch._foreach_div(momentum, updates)
    return live.peak


def _adahessian_single(c: Context) -> int:
    live = _Live()
    for i in range(len(c.sizes)):
        live.make("de_nom", c.nbytes(i))              # (exp_hessian_diag_sq / bc2).pow_().add_()
    return live.peak


def _adahessian_foreach(c: Context) -> int:
    return c.total                                    # torch._foreach_div(exp_hessian_diag_sq, bc2)


# ------------------------------------------------------------------------------------------ GaLore

def _galore(c: Context) -> int:
    # GaLoreAdamW.step per parameter. A projected (GaLore) m x n parameter, k = min(m, n),
    # r = min(rank, k): project() makes the low-rank gradient L (m x r if m >= n, else r x n);
    # denom = exp_avg_sq.sqrt() and exp_avg / denom are L-sized; project_back() multiplies back to
    # m x n and scales it (`* self.scale`): two full-size tensors. Other parameters: plain AdamW
    # (denom, exp_avg / denom). `denom` and `norm_grad` stay bound into the next parameter.
    # svd_step (every update_proj_gap steps; counted by default, the peak over a run):
    # get_orthogonal_matrix runs torch.linalg.svd(full_matrices=False): U (m x k), s (k),
    # Vh (k x n) in float32 (+ a float32 copy of the gradient for other dtypes), then
    # A = U[:, :r] @ diag(s[:r]) (m >= n) or B = diag(s[:r]) @ Vh[:r] (m < n); the factor kept
    # (a view for float32) replaces the previous projector when project() assigns it.
    # LAPACK's own workspace is not counted.
    chosen = c.opts["galore_params"]
    live, e = _Live(), c.elem
    for i, shape in enumerate(c.shapes):
        b = c.nbytes(i)
        live.ref("grad")
        is_galore = (chosen is None and len(shape) == 2) or (chosen is not None and c.names[i] in chosen)
        if not is_galore:
            live.make("denom", b)
            live.make("norm_grad", b)
            continue
        m, n = shape
        k = min(m, n)
        r = min(c.opts["rank"], k)
        low = (m * r if m >= n else r * n) * e
        if c.opts["svd_step"]:
            f32 = 4
            copy = 0 if c.dtype == "float32" else m * n * f32     # matrix = grad.float()
            svd = (m * k + k + k * n) * f32
            factor = (m * r if m >= n else r * n) * f32            # A (right) or B (left) product
            live.touch(copy + svd + r * r * f32 + factor)
            if c.dtype != "float32":
                live.touch(svd + (r * n if m >= n else m * r) * e)  # .type(dtype) of the kept factor
        live.make("grad", low)                        # grad = projector.project(grad, step)
        live.make("denom", low)                       # exp_avg_sq.sqrt().add_(eps)
        live.make("norm_grad", low)                   # exp_avg / denom
        live.make("norm_grad", b, transient=b)        # project_back: matmul, then * scale
    return live.peak


# ------------------------------------------------------------------ preconditioners: Shampoo, SOAP
# Statement by statement from pytorch-optimizer 4.1.0 (which tensordot / movedim / reshape makes a
# copy and which a view; what each local keeps alive), measured exact for vectors and matrices in
# float32 and bfloat16 (tests/test_optimizer_temporaries.py). Not counted: LAPACK's own workspace
# (gesdd / geqrf), which runs below the dispatcher and outside what a tracker of tensors sees.

F32 = 4


def _power_svd(d: int, e: int) -> int:
    """compute_power_svd(pre_cond, 2 * order) of a d x d statistic in dtype bytes e: U, S, Vh of
    torch.linalg.svd(matrix.to(float32)) (+ that copy while it runs, unless float32), then
    `((u * s.unsqueeze(-2)) @ vh)` with u * s still held by the matmul, then `.to(dtype)` of it
    (a copy unless float32). The largest of these moments."""
    copy = 0 if e == F32 else d * d * F32
    usv = (2 * d * d + d) * F32
    return max(copy + usv,                                # inside the SVD
               usv + 2 * d * d * F32,                     # u * s and the product
               usv + d * d * F32 + (0 if e == F32 else d * d * e))   # the product cast back


def _shampoo(c: Context) -> int:
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


def _soap_dims(shape: tuple[int, ...], o: Mapping[str, Any]) -> list[int | None]:
    """The size of each dimension SOAP keeps an eigenbasis Q for (None: `[]`, left unrotated)."""
    limit = o["max_precondition_dim"]
    if len(shape) == 1 and not o["precondition_1d"]:
        return [None]
    return [d if d <= limit else None for d in shape]


def _soap(c: Context) -> int:
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
    live, e = _Live(), c.elem
    for i, shape in enumerate(c.shapes):
        n = c.nbytes(i)
        dims = _soap_dims(shape, c.opts)
        rotations = sum(d is not None for d in dims)
        copies = n if len(shape) > 2 else 0               # tensordot's permute + reshape of a >= 3-d operand
        held = n if rotations >= 2 else 0                 # the previous rotation, while the next is made
        rotate = dict(nbytes=n if rotations else 0, transient=(held + copies) if rotations else 0)
        live.ref("grad")
        live.make("grad_projected", **rotate)
        live.touch(n)                                     # grad_projected.square()
        live.make("de_nom", n)
        live.make("exp_avg_projected", **rotate)
        live.make("quotient", n)                          # exp_avg_projected / de_nom
        if rotations:
            live.make("norm_grad", **rotate)
        else:
            live.alias("norm_grad", "quotient")           # a permuted view of the quotient
        live.free("quotient")
        if len(shape) == 1:
            if dims[0] is not None:
                live.touch(dims[0] * dims[0] * e)         # the outer product, within the statement
        else:
            last = len(shape) - 1
            for idx, d in enumerate(dims):
                if d is not None:                         # operands permuted off their order are copied
                    operand_copies = ((idx > 0) + (idx < last)) * copies
                    live.make("outer_product", d * d * e, transient=operand_copies)
        selected = False
        for ind, d in enumerate(dims):
            if d is None:
                continue
            dd = d * d
            live.make("matrix_product", dd * e)
            live.touch(dd * e)                            # o * matrix_product
            live.make("est_eig", d * e)
            live.make("sort_idx", 8 * d)
            live.make("exp_avg_sq", n)
            selected = True
            live.make("power_iter", dd * e)
            live.make("q", dd * F32, transient=(0 if e == F32 else dd * F32) + dd * F32)
            live.make("_", dd * F32)                      # R
            if e != F32:
                live.make("q", dd * e)
            live.alias(f"Q{ind}", "q")
        for var in ("matrix_product", "est_eig", "sort_idx", "power_iter", "q", "_", "outer_product"):
            live.free(var)                                # locals of get_orthogonal_matrix_qr / update_pre_conditioner
        if selected:
            live.free("exp_avg_sq")                       # state['exp_avg_sq'] = exp_avg_sq
        for ind in range(len(dims)):
            live.free(f"Q{ind}")                          # state['Q'] = matrices
    return live.peak


# ------------------------------------------------------------------------------ bitsandbytes 8-bit

def _adamw8bit(c: Context) -> int:
    # On CUDA the update is one kernel per parameter (optimizer_update_8bit_blockwise, or the
    # 32-bit one below min_8bit_size) working in place on the quantized states: nothing
    # allocated (derived from the kernels; no GPU here to measure it). On the CPU bitsandbytes
    # runs a PyTorch reference (backends/cpu/ops.py), one parameter at a time:
    # - 8-bit: both states dequantized to float32, grad = g.float() * gnorm_scale,
    #   p_fp32 = p.float() (a copy unless float32), denom = (state2.sqrt() / correction2): 5 (6)
    #   float32 tensors of the parameter's size;
    # - 32-bit (small tensors): g_float, p_float (unless float32), state2.sqrt() + eps and the
    #   quotient: 3 (4).
    if c.device != "cpu":
        return 0
    copy = c.dtype != "float32"
    peak = 0
    for n in c.sizes:
        if c.opts["optim_bits"] == 8 and n >= c.opts["min_8bit_size"]:
            peak = max(peak, (5 + copy) * n * F32)
        else:
            peak = max(peak, (3 + copy) * n * F32)
    return peak


# ------------------------------------------------------------------------------------ SparseAdam

def _sparse_adam(c: Context) -> int:
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


# ------------------------------------------------------------------------- population (analytic)
# No installed package implements these as an optimizer: a vectorised generation step is
# assumed, like the spec's states. GA: the mutation noise and the offspring population, made
# before the offspring replace the population (2 P copies). PSO: the random coefficients r1, r2
# of the velocity update and one (best - position) difference (3 P copies).

def _population(copies: int) -> Model:
    def model(c: Context) -> int:
        return copies * c.opts["population_size"] * c.total
    return model


# --------------------------------------------------------------------------------------- the table

def _impls(single: Model, foreach: Model, fused: Model | None = None) -> dict[str, Model]:
    out = {SINGLE: single, FOREACH: foreach}
    if fused is not None:
        out[FUSED] = fused
    return out


def _exact(*impls: str) -> dict[str, str]:
    return {i: "exact" for i in impls}


WD_MAX = {"weight_decay": 0.0, "maximize": False}
_ADAM = _impls(_adam_single, _adam_foreach, _nothing)

TEMPORARIES: dict[str, Temporaries] = {
    "adam": Temporaries(_ADAM, _exact(SINGLE, FOREACH, FUSED),
                        "torch.optim.adam: _single_tensor_adam, _multi_tensor_adam, _fused_adam",
                        {**WD_MAX, "decoupled": False}),
    "adamw": Temporaries(_ADAM, _exact(SINGLE, FOREACH, FUSED),
                         "torch.optim.adam (AdamW = decoupled Adam): the same three functions",
                         {"weight_decay": 1e-2, "maximize": False, "decoupled": True}),
    "sgd": Temporaries(_impls(_sgd_single, _sgd_foreach, _nothing), _exact(SINGLE, FOREACH, FUSED),
                       "torch.optim.sgd: _single_tensor_sgd, _multi_tensor_sgd, _fused_sgd",
                       {**WD_MAX, "nesterov": False}),
    "sgd-momentum": Temporaries(_impls(_sgd_single, _sgd_foreach, _nothing),
                                _exact(SINGLE, FOREACH, FUSED),
                                "torch.optim.sgd: _single_tensor_sgd, _multi_tensor_sgd, _fused_sgd",
                                {**WD_MAX, "nesterov": False}),
    "adagrad": Temporaries(_impls(_adagrad_single, _adagrad_foreach, _nothing),
                           _exact(SINGLE, FOREACH, FUSED),
                           "torch.optim.adagrad: _single_tensor_adagrad, _multi_tensor_adagrad, "
                           "_fused_adagrad (CPU only)", WD_MAX),
    "adadelta": Temporaries(_impls(_adadelta_single, _adadelta_foreach), _exact(SINGLE, FOREACH),
                            "torch.optim.adadelta: _single_tensor_adadelta, _multi_tensor_adadelta",
                            WD_MAX),
    "adamax": Temporaries(_impls(_adamax_single, _adamax_foreach), _exact(SINGLE, FOREACH),
                          "torch.optim.adamax: _single_tensor_adamax, _multi_tensor_adamax", WD_MAX),
    "asgd": Temporaries(_impls(_asgd_single, _asgd_foreach),
                        {SINGLE: "exact after t0 steps (averaging), an upper bound before",
                         FOREACH: "exact"},
                        "torch.optim.asgd: _single_tensor_asgd, _multi_tensor_asgd",
                        WD_MAX),
    "nadam": Temporaries(_impls(_nadam_single, _nadam_foreach), _exact(SINGLE, FOREACH),
                         "torch.optim.nadam: _single_tensor_nadam, _multi_tensor_nadam",
                         {**WD_MAX, "decoupled": False}),
    "radam": Temporaries(_impls(_radam_single, _radam_foreach), _exact(SINGLE, FOREACH),
                         "torch.optim.radam: _single_tensor_radam, _multi_tensor_radam",
                         {**WD_MAX, "decoupled": False}),
    "rmsprop": Temporaries(_impls(_rmsprop_single, _rmsprop_foreach), _exact(SINGLE, FOREACH),
                           "torch.optim.rmsprop: _single_tensor_rmsprop, _multi_tensor_rmsprop",
                           WD_MAX),
    "rprop": Temporaries(_impls(_rprop_single, _rprop_foreach),
                         _exact(SINGLE, FOREACH),
                         "torch.optim.rprop: _single_tensor_rprop, _multi_tensor_rprop",
                         {"maximize": False}),
    "adafactor": Temporaries(_impls(_adafactor_single, _adafactor_foreach), _exact(SINGLE, FOREACH),
                             "torch.optim._adafactor: _single_tensor_adafactor, "
                             "_multi_tensor_adafactor", {"maximize": False},
                             default=_always(SINGLE)),
    "muon": Temporaries({SINGLE: _muon}, _exact(SINGLE),
                        "torch.optim._muon: _single_tensor_muon, _zeropower_via_newtonschulz "
                        "(+ AdamW for the other parameters)",
                        {"nesterov": True, "ns_steps": 5}, default=_always(SINGLE)),
    "lbfgs": Temporaries({NONE: _lbfgs}, {NONE: "exact (flat vectors); 0-d tensors bounded"},
                         "torch.optim.lbfgs: LBFGS.step", {"line_search_fn": None},
                         default=_always(NONE)),
    "lion": Temporaries(_impls(_lion_single, _lion_foreach),
                        _exact(SINGLE, FOREACH),
                        "pytorch_optimizer.Lion: _step_per_param, _step_foreach",
                        default=_pyopt_default(("adanorm",))),
    "adabelief": Temporaries(_impls(_adabelief_single, _adabelief_foreach),
                             _exact(SINGLE, FOREACH),
                             "pytorch_optimizer.AdaBelief: _step_per_param, _step_foreach",
                             default=_pyopt_default(("adanorm", "ams_bound"))),
    "diffgrad": Temporaries(_impls(_diffgrad_single, _diffgrad_foreach),
                            _exact(SINGLE, FOREACH),
                            "pytorch_optimizer.DiffGrad: _step_per_param, _step_foreach",
                            default=_pyopt_default(("adanorm",))),
    "prodigy": Temporaries({NONE: _prodigy}, _exact(NONE), "prodigyopt.Prodigy.step",
                           default=_always(NONE)),
    "dadapt-adam": Temporaries({NONE: _dadapt_adam}, _exact(NONE), "dadaptation.DAdaptAdam.step",
                               default=_always(NONE)),
    "schedulefree-adamw": Temporaries(_impls(_schedulefree_single, _schedulefree_foreach),
                                      _exact(SINGLE, FOREACH),
                                      "schedulefree.AdamWScheduleFree.step (foreach=True by default)",
                                      default=_always(FOREACH)),
    "galore": Temporaries({NONE: _galore}, _exact(NONE),
                          "galore_torch.GaLoreAdamW.step, GaLoreProjector.project / project_back / "
                          "get_orthogonal_matrix", {"svd_step": True}, default=_always(NONE)),
    "shampoo": Temporaries({NONE: _shampoo},
                           {NONE: "exact (vectors, matrices, 3-d and 4-d tensors measured); LAPACK's SVD "
                                  "workspace not counted"},
                           "pytorch_optimizer.Shampoo.step, compute_power_svd", default=_always(NONE)),
    "soap": Temporaries({NONE: _soap},
                        {NONE: "exact for vectors and matrices; for 3 or more dimensions an upper bound "
                               "(measured +9 % to +11 % on 3-d and 4-d weights); merge_dims not modelled; LAPACK's QR "
                               "workspace not counted"},
                        "pytorch_optimizer.SOAP.step, project, update_pre_conditioner, "
                        "get_orthogonal_matrix_qr", default=_always(NONE)),
    "adamw8bit": Temporaries({NONE: _adamw8bit},
                             {NONE: "exact on the CPU (measured with the CPU allocator's profiler); "
                                    "CUDA: derived from the kernels, not measured"},
                             "bitsandbytes.optim.AdamW8bit: optimizer_update_8bit_blockwise "
                             "(backends/cpu/ops.py on the CPU)", default=_always(NONE)),
    "sparse-adam": Temporaries({NONE: _sparse_adam}, {NONE: "upper bound (every row touched)"},
                               "torch.optim._functional.sparse_adam", default=_always(NONE)),
    "ga": Temporaries({NONE: _population(2)}, {NONE: "analytic (no implementation to measure)"},
                      "analytic: a vectorised genetic-algorithm generation", default=_always(NONE)),
    "pso": Temporaries({NONE: _population(3)}, {NONE: "analytic (no implementation to measure)"},
                       "analytic: a vectorised particle-swarm velocity update", default=_always(NONE)),
    "sophia": Temporaries(_impls(_hutchinson(_sophia_single), _hutchinson(_sophia_foreach)),
                          _exact(SINGLE, FOREACH),
                          "pytorch_optimizer.SophiaH.step, _step_foreach, compute_hutchinson_hessian",
                          {"hessian_step": True}, default=_always(FOREACH), create_graph=True),
    "adahessian": Temporaries(_impls(_hutchinson(_adahessian_single), _hutchinson(_adahessian_foreach)),
                              _exact(SINGLE, FOREACH),
                              "pytorch_optimizer.AdaHessian.step, _step_foreach, "
                              "compute_hutchinson_hessian", {"hessian_step": True},
                              default=_always(FOREACH), create_graph=True),
}


# ---------------------------------------------------------------------------------------- the API

def _spec(optimizer: OptimizerSpec | str) -> OptimizerSpec:
    return get_optimizer(optimizer) if isinstance(optimizer, str) else optimizer


def _device_type(device: str) -> str:
    kind = str(device).split(":", 1)[0].strip().lower()
    if kind not in KNOWN_DEVICES:
        raise MemprofUserError(f"unknown device {device!r}; valid: {', '.join(KNOWN_DEVICES)}")
    return kind


def _model(spec: OptimizerSpec) -> Temporaries:
    model = TEMPORARIES.get(spec.name)
    if model is None:
        raise MemprofUserError(
            f"the step temporaries of optimizer {spec.name!r} are not modelled; modelled: "
            + ", ".join(sorted(TEMPORARIES)))
    return model


def implementations(optimizer: OptimizerSpec | str) -> tuple[str, ...]:
    """The implementations of `optimizer` memprof models ("n/a": it has only one)."""
    return tuple(_model(_spec(optimizer)).models)


def default_implementation(optimizer: OptimizerSpec | str, device: str, **options: Any) -> str:
    """The implementation torch picks for `device` when neither foreach nor fused is given:
    foreach on CUDA (and xpu, mtia), the single-tensor loop on the CPU (Adafactor and Muon: always
    the loop); "n/a" for optimizers with one implementation. The option fused=True selects "fused"."""
    spec = _spec(optimizer)
    model = _model(spec)
    kind = _device_type(device)
    if options.get("fused") and FUSED in model.models:
        return FUSED
    return model.default(_options(spec, model, options), kind)


def _options(spec: OptimizerSpec, model: Temporaries, options: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's options (validated by the spec) plus the options only temporaries depend on."""
    unknown = sorted(set(options) - set(spec.options) - set(_public_extra(model)))
    if unknown:
        valid = ", ".join(sorted({*spec.options, *_public_extra(model)})) or "none"
        raise MemprofUserError(f"unknown option(s) {', '.join(unknown)} for optimizer {spec.name!r}; "
                               f"valid: {valid}")
    merged = spec._options({k: v for k, v in options.items() if k in spec.options})
    extra = {k: v for k, v in options.items() if k not in spec.options}
    return {**model.extra_options, **merged, **extra}


def _public_extra(model: Temporaries) -> list[str]:
    return [k for k in model.extra_options if k != "decoupled"]


@dataclass(frozen=True)
class _Resolved:
    spec: OptimizerSpec
    model: Temporaries
    implementation: str
    opts: dict[str, Any]
    device: str


def _resolve(optimizer: OptimizerSpec | str, device: str, implementation: str | None,
             options: Mapping[str, Any]) -> _Resolved:
    spec = _spec(optimizer)
    model = _model(spec)
    opts = _options(spec, model, options)
    kind = _device_type(device)
    fused_opt = bool(opts.get("fused"))
    if implementation is None:
        implementation = default_implementation(spec, kind, **options)
    if implementation not in model.models:
        raise MemprofUserError(
            f"implementation {implementation!r} does not exist for optimizer {spec.name!r}; valid: "
            + ", ".join(model.models))
    if fused_opt and implementation != FUSED:
        raise MemprofUserError(
            f"option fused=True contradicts implementation {implementation!r} for optimizer "
            f"{spec.name!r}; use implementation='fused' or leave it unset")
    if implementation == FUSED and spec.name == "adagrad" and kind != "cpu":
        raise MemprofUserError(f"torch's fused Adagrad runs on the CPU only, not on {kind!r}; valid "
                               "implementations there: single_tensor, foreach")
    if opts.get("capturable") and kind == "cpu" and implementation != FUSED:
        raise MemprofUserError(
            f"capturable=True needs a CUDA (or xpu, hpu) device; torch rejects it on {kind!r}")
    return _Resolved(spec, model, implementation, opts, kind)


def step_temporary_bytes(optimizer: OptimizerSpec | str, params: Sequence[ParamTensor], state_dtype: str,
                         *, device: str = "cuda", implementation: str | None = None,
                         **options: Any) -> int:
    """Peak bytes step() allocates on top of parameters, gradients and (existing) states.

    optimizer: an OptimizerSpec or a registry name. params: the parameters it steps, as one param
    group (`ModelSpec.parameter_tensors()`). state_dtype: dtype of params/grads/states ("float32").
    implementation: "single_tensor", "foreach", "fused" or "n/a"; None is torch's default for
    `device` (or "fused" when the option fused=True is given). options: the optimizer's
    memory-relevant options (the spec's, plus those only the temporaries depend on, e.g.
    weight_decay / maximize for torch.optim). See the module docstring for what each
    implementation allocates, and `exactness()` for how exact each figure is."""
    r = _resolve(optimizer, device, implementation, options)
    dtype_bytes(state_dtype)  # validates the name
    ctx = Context(tuple(tuple(p.shape) for p in params), state_dtype.removeprefix("torch."), r.device,
                  r.opts, tuple(p.name for p in params))
    if not ctx.shapes:
        return 0
    return r.model.models[r.implementation](ctx)


def needs_create_graph(optimizer: OptimizerSpec | str) -> bool:
    """Whether training with `optimizer` runs `loss.backward(create_graph=True)` (SophiaH, AdaHessian:
    their step() takes Hessian-vector products through the gradients' graph)."""
    return _model(_spec(optimizer)).create_graph


def create_graph_caveat(optimizer: OptimizerSpec | str, *, device: str = "cpu", **options: Any) -> str | None:
    """What an estimate's peak leaves out for an optimizer that needs backward(create_graph=True),
    as one warning line (None: nothing, or the optimizer does not need it)."""
    r = _resolve(optimizer, device, None, options)
    if not r.model.create_graph:
        return None
    if r.opts.get("hessian_step"):
        return (f"the Hessian-vector product of {r.spec.name} walks the create_graph backward's graph inside "
                "step(); what that walk allocates beyond the probes and h_zs is not modelled: the peak of a "
                "Hessian-update step is approximate (a few percent either way)")
    return None


def exactness(optimizer: OptimizerSpec | str, implementation: str | None = None, *, device: str = "cuda",
              **options: Any) -> str:
    """"exact", or what the figure is when it is not ("upper bound", ...)."""
    r = _resolve(optimizer, device, implementation, options)
    if r.opts.get("capturable"):
        return "upper bound (capturable: 0-d tensors bounded; derived from the source, not measured)"
    if r.opts.get("hessian_step"):
        return ("lower bound on Hessian-update steps: the second backward's own memory "
                "(activation-dependent) is not counted")
    if r.opts.get("adanorm") and r.implementation == SINGLE:
        return "upper bound (adanorm: the data-dependent rescaled gradient is counted)"
    return r.model.exactness[r.implementation]


__all__ = ["IMPLEMENTATIONS", "TEMPORARIES", "Temporaries", "default_implementation", "exactness",
           "create_graph_caveat", "implementations", "needs_create_graph", "step_temporary_bytes"]
