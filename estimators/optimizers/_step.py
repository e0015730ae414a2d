"""The step-scratch API: what an optimizer's `step()` allocates, for a registry name or an OptimizerSpec.

    >>> from memprof.estimators.optimizers import step_temporary_bytes
    >>> from memprof.estimators.tensors import ParamTensor
    >>> params = [ParamTensor("w", (1024, 1024)), ParamTensor("b", (1024,))]
    >>> step_temporary_bytes("adamw", params, "float32", device="cuda")      # foreach: one list
    4198400
    >>> step_temporary_bytes("adamw", params, "float32", device="cpu")       # single-tensor loop
    8388608
    >>> step_temporary_bytes("adamw", params, "float32", implementation="fused")
    0

Each optimizer's model is its spec's `step` (a `StepScratch`, defined next to its states); what the
figures count and how the implementations differ: _scratch.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..dtypes import dtype_bytes
from ..errors import MemprofUserError
from ..tensors import ParamTensor
from ._registry import OPTIMIZERS, get_optimizer
from ._scratch import FUSED, SINGLE, Context, StepScratch, device_type
from ._spec import OptimizerSpec


def _as_spec(optimizer: OptimizerSpec | str) -> OptimizerSpec:
    return get_optimizer(optimizer) if isinstance(optimizer, str) else optimizer


def _scratch_of(spec: OptimizerSpec) -> StepScratch:
    if spec.step is None:
        raise MemprofUserError(
            f"the step temporaries of optimizer {spec.name!r} are not modelled; modelled: "
            + ", ".join(sorted(name for name, s in OPTIMIZERS.items() if s.step is not None))
        )
    return spec.step


def implementations(optimizer: OptimizerSpec | str) -> tuple[str, ...]:
    """The implementations of `optimizer` memprof models ("n/a": it has only one)."""
    return tuple(_scratch_of(_as_spec(optimizer)).models)


def default_implementation(optimizer: OptimizerSpec | str, device: str, **options: Any) -> str:
    """The implementation torch picks for `device` when neither foreach nor fused is given:
    foreach on CUDA (and xpu, mtia), the single-tensor loop on the CPU (Adafactor and Muon: always
    the loop); "n/a" for optimizers with one implementation. The option fused=True selects "fused"."""
    spec = _as_spec(optimizer)
    scratch = _scratch_of(spec)
    kind = device_type(device)
    if options.get("fused") and FUSED in scratch.models:
        return FUSED
    return scratch.default(spec.resolve_options(options, step=True), kind)


def step_option_defaults(optimizer: OptimizerSpec | str) -> dict[str, Any]:
    """The defaults of the options only the step's scratch depends on (Adam's weight_decay, maximize),
    which the functions here accept besides the spec's own options; {} when the step is not modelled."""
    step = _as_spec(optimizer).step
    return dict(step.options) if step is not None else {}


@dataclass(frozen=True)
class _Resolved:
    spec: OptimizerSpec
    scratch: StepScratch
    implementation: str
    opts: dict[str, Any]
    device: str


def _resolve(
    optimizer: OptimizerSpec | str, device: str, implementation: str | None, options: Mapping[str, Any]
) -> _Resolved:
    spec = _as_spec(optimizer)
    scratch = _scratch_of(spec)
    opts = spec.resolve_options(options, step=True)
    kind = device_type(device)
    fused_opt = bool(opts.get("fused"))
    if implementation is None:
        implementation = default_implementation(spec, kind, **options)
    if implementation not in scratch.models:
        raise MemprofUserError(
            f"implementation {implementation!r} does not exist for optimizer {spec.name!r}; valid: "
            + ", ".join(scratch.models)
        )
    if fused_opt and implementation != FUSED:
        raise MemprofUserError(
            f"option fused=True contradicts implementation {implementation!r} for optimizer "
            f"{spec.name!r}; use implementation='fused' or leave it unset"
        )
    if scratch.check is not None:
        scratch.check(implementation, kind)
    if opts.get("capturable") and kind == "cpu" and implementation != FUSED:
        raise MemprofUserError(f"capturable=True needs a CUDA (or xpu, hpu) device; torch rejects it on {kind!r}")
    return _Resolved(spec, scratch, implementation, opts, kind)


def step_temporary_bytes(
    optimizer: OptimizerSpec | str,
    params: Sequence[ParamTensor],
    state_dtype: str,
    *,
    device: str = "cuda",
    implementation: str | None = None,
    **options: Any,
) -> int:
    """Peak bytes step() allocates on top of parameters, gradients and (existing) states.

    optimizer: an OptimizerSpec or a registry name. params: the parameters it steps, as one param
    group (`ModelSpec.parameter_tensors()`). state_dtype: dtype of params/grads/states ("float32").
    implementation: "single_tensor", "foreach", "fused" or "n/a"; None is torch's default for
    `device` (or "fused" when the option fused=True is given). options: the optimizer's
    memory-relevant options (the spec's, plus those only the temporaries depend on, e.g.
    weight_decay / maximize for torch.optim). What each implementation allocates: the comments
    of the optimizer's step models (its module) and _scratch.py; how exact each figure is:
    `exactness()`."""
    r = _resolve(optimizer, device, implementation, options)
    dtype_bytes(state_dtype)  # validates the name
    ctx = Context(
        tuple(tuple(p.shape) for p in params),
        state_dtype.removeprefix("torch."),
        r.device,
        r.opts,
        tuple(p.name for p in params),
    )
    if not ctx.shapes:
        return 0
    return r.scratch.models[r.implementation](ctx)


def needs_create_graph(optimizer: OptimizerSpec | str) -> bool:
    """Whether training with `optimizer` runs `loss.backward(create_graph=True)` (SophiaH, AdaHessian:
    their step() takes Hessian-vector products through the gradients' graph)."""
    return _scratch_of(_as_spec(optimizer)).create_graph


def create_graph_caveat(optimizer: OptimizerSpec | str, *, device: str = "cpu", **options: Any) -> str | None:
    """What an estimate's peak leaves out for an optimizer that needs backward(create_graph=True),
    as one warning line (None: nothing, or the optimizer does not need it)."""
    r = _resolve(optimizer, device, None, options)
    if not r.scratch.create_graph:
        return None
    if r.opts.get("hessian_step"):
        return (
            f"the Hessian-vector product of {r.spec.name} walks the create_graph backward's graph inside "
            "step(); what that walk allocates beyond the probes and h_zs is not modelled: the peak of a "
            "Hessian-update step is approximate (a few percent either way)"
        )
    return None


def exactness(
    optimizer: OptimizerSpec | str, implementation: str | None = None, *, device: str = "cuda", **options: Any
) -> str:
    """ "exact", or what the figure is when it is not ("upper bound", ...)."""
    r = _resolve(optimizer, device, implementation, options)
    if r.opts.get("capturable"):
        return "upper bound (capturable: 0-d tensors bounded; derived from the source, not measured)"
    if r.opts.get("hessian_step"):
        return (
            "lower bound on Hessian-update steps: the second backward's own memory "
            "(activation-dependent) is not counted"
        )
    if r.opts.get("adanorm") and r.implementation == SINGLE:
        return "upper bound (adanorm: the data-dependent rescaled gradient is counted)"
    return r.scratch.exactness[r.implementation]


__all__ = [
    "implementations",
    "default_implementation",
    "step_option_defaults",
    "step_temporary_bytes",
    "needs_create_graph",
    "create_graph_caveat",
    "exactness",
]
