"""Step scratch: the memory an optimizer's `step()` allocates on top of parameters, gradients and
states, and the machinery every optimizer's model of it shares.

Each registry optimizer carries its own model (`OptimizerSpec.step`, a `StepScratch`), next to its
states, in the module that defines it; this module holds what those models share: `Live` (the bytes
each local variable of a step() references), `Context` (what a model reads), the implementation
names, device handling and the patterns torch.optim repeats (the maximize / weight-decay gradient
copies, the host step counter, the capturable 0-d tensors). The public functions
(`step_temporary_bytes`, ...) are in `memprof.estimators.optimizers`.

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
  `Live`, which follows the bytes each local variable references.
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
nesterov, hessian_step, svd_step, ...) are accepted where they matter: see `StepScratch.options`.

In the models, n_i is the bytes of parameter i and N those of all parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

from ..dtypes import dtype_bytes
from ..errors import MemprofUserError

SINGLE, FOREACH, FUSED, NONE = "single_tensor", "foreach", "fused", "n/a"
IMPLEMENTATIONS = (SINGLE, FOREACH, FUSED, NONE)

# torch.utils._foreach_utils._get_foreach_kernels_supported_devices (privateuse1 aside); fused
# kernels exist on these and on the CPU, but are never the default.
FOREACH_DEVICES = ("cuda", "xpu", "mtia")
KNOWN_DEVICES = ("cuda", "cpu", "xpu", "mtia", "mps", "hpu")

# torch's `_get_scalar_dtype()`: the dtype of scalar states such as Adam's `step` (float64 only when
# torch's default dtype has been set to float64, which memprof does not model).
TORCH_SCALAR_DTYPE = "float32"
SCALAR = dtype_bytes(TORCH_SCALAR_DTYPE)  # a 0-d step-dtype tensor (bias corrections, ...)
F32 = 4  # bytes of a float32 element (SVD / QR factors, ...)


class Live:
    """The tensors the local variables of a step() reference, and the peak of their bytes.

    Python semantics: `make(var, nbytes, transient)` is `var = expr`, where expr allocates
    `transient` bytes of intermediates that die inside the statement and its `nbytes` result, all
    while the old value of `var` is still referenced; the old value is released after the
    assignment unless another variable still refers to it (`alias`)."""

    def __init__(self) -> None:
        self._names: dict[str, int] = {}  # variable -> object id
        self._sizes: dict[int, int] = {}  # object id -> bytes
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
    """What a step-scratch model reads: the parameters' shapes, their dtype, the device, the options."""

    shapes: tuple[tuple[int, ...], ...]  # each parameter's shape, in param_groups order
    dtype: str  # dtype of params / grads / states
    device: str  # device type: "cuda", "cpu", ...
    opts: Mapping[str, Any]
    names: tuple[str, ...] = ()  # the parameters' names (GaLore's galore_params)

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

    def subset(self, idx: Sequence[int], **opts: Any) -> Context:
        return Context(
            tuple(self.shapes[i] for i in idx),
            self.dtype,
            self.device,
            {**self.opts, **opts},
            tuple(self.names[i] for i in idx) if self.names else (),
        )


ScratchModel = Callable[[Context], int]
"""Peak scratch bytes of one implementation's step()."""
DefaultRule = Callable[[Mapping[str, Any], str], str]
"""(options, device type) -> the implementation the library picks when not told."""
ImplementationCheck = Callable[[str, str], None]
"""(implementation, device type) -> raises MemprofUserError when the library rejects the pair."""


def torch_default(opts: Mapping[str, Any], device: str) -> str:
    """torch.optim's `_default_to_fused_or_foreach(..., use_fused=False)`."""
    return FOREACH if device in FOREACH_DEVICES else SINGLE


def always_picks(implementation: str) -> DefaultRule:
    """A library that picks the same implementation on every device."""

    def rule(opts: Mapping[str, Any], device: str) -> str:
        return implementation

    return rule


@dataclass(frozen=True)
class StepScratch:
    """How one optimizer's step() allocates scratch memory, per implementation."""

    models: Mapping[str, ScratchModel]  # implementation -> bytes
    exactness: Mapping[str, str]  # implementation -> "exact" | "upper bound" | ...
    source: str  # the functions it is read from
    # defaults of the options only the step's scratch depends on (callers may pass them)
    options: Mapping[str, Any] = field(default_factory=dict)
    # settings the registry entry fixes for the models, not options (AdamW: decoupled=True)
    implied: Mapping[str, Any] = field(default_factory=dict)
    # the implementation the library picks when not told
    default: DefaultRule = torch_default
    # the training loop must call loss.backward(create_graph=True): step() differentiates the
    # gradients (Hutchinson Hessian-vector products), so the backward's graph lives into step()
    create_graph: bool = False
    # an (implementation, device) restriction of the library, checked before anything is computed
    check: ImplementationCheck | None = None


def device_type(device: str) -> str:
    """ "cuda" for "cuda:1"; a MemprofUserError for a device type memprof does not know."""
    kind = str(device).split(":", 1)[0].strip().lower()
    if kind not in KNOWN_DEVICES:
        raise MemprofUserError(f"unknown device {device!r}; valid: {', '.join(KNOWN_DEVICES)}")
    return kind


def by_implementation(
    single: ScratchModel, foreach: ScratchModel, fused: ScratchModel | None = None
) -> dict[str, ScratchModel]:
    """The models of a library with a single-tensor loop, a foreach path and maybe a fused kernel."""
    out = {SINGLE: single, FOREACH: foreach}
    if fused is not None:
        out[FUSED] = fused
    return out


def exact(*implementations: str) -> dict[str, str]:
    """Every one of `implementations` is exact."""
    return dict.fromkeys(implementations, "exact")


def no_scratch(c: Context) -> int:
    """Fused kernels update params and states in place (first-step state creation aside)."""
    return 0


# ------------------------------------------------------------------ patterns torch.optim repeats

# capturable (CUDA graphs) keeps the bias corrections etc. as 0-d device tensors. Not measurable
# without a GPU: the param-sized tensors are read from the source, the 0-d ones bounded by these.
CAPTURABLE_LOOP_SCALARS = 16  # 0-d tensors one iteration of a single-tensor loop may hold
CAPTURABLE_FOREACH_LISTS = 6  # lists of one 0-d tensor per parameter a foreach step may hold


def coupled_weight_decay(o: Mapping[str, Any]) -> bool:
    """Weight decay added to the gradient (Adam's), not applied to the weights (AdamW's)."""
    return o.get("weight_decay", 0) != 0 and not o.get("decoupled", False)


def loop_grad(live: Live, b: int, o: Mapping[str, Any], weight_decay: bool = True) -> None:
    """`grad = grads[i] if not maximize else -grads[i]`, then `grad = grad.add(param, alpha=wd)`."""
    if o.get("maximize"):
        live.make("grad", b)
    else:
        live.ref("grad")
    if weight_decay and coupled_weight_decay(o):
        live.make("grad", b)


def foreach_grads(live: Live, n: int, o: Mapping[str, Any], weight_decay: bool = True) -> None:
    """`device_grads = torch._foreach_neg(device_grads)` (maximize), then the coupled weight decay:
    `torch._foreach_add(device_grads, device_params)` (in place when maximize already copied)."""
    if o.get("maximize"):
        live.make("grads", n)
    if weight_decay and coupled_weight_decay(o) and not o.get("maximize"):
        live.make("grads", n)


def cpu_step(live: Live, c: Context) -> None:
    """`torch._foreach_add_(state_steps, torch.tensor(1.0, device="cpu"))`: steps on the host
    (not capturable); the 0-d tensor counts only when the parameters are on the CPU too."""
    if c.device == "cpu" and not c.opts.get("capturable"):
        live.touch(SCALAR)


def capturable_slack(c: Context, foreach: bool) -> int:
    """The bound on the 0-d device tensors a capturable step may hold."""
    if not c.opts.get("capturable"):
        return 0
    if foreach:
        return CAPTURABLE_FOREACH_LISTS * len(c.sizes) * SCALAR
    return 2 * CAPTURABLE_LOOP_SCALARS * SCALAR


__all__ = [
    "SINGLE",
    "FOREACH",
    "FUSED",
    "NONE",
    "IMPLEMENTATIONS",
    "FOREACH_DEVICES",
    "KNOWN_DEVICES",
    "TORCH_SCALAR_DTYPE",
    "SCALAR",
    "F32",
    "Live",
    "Context",
    "ScratchModel",
    "DefaultRule",
    "ImplementationCheck",
    "StepScratch",
    "torch_default",
    "always_picks",
    "device_type",
    "by_implementation",
    "exact",
    "no_scratch",
    "CAPTURABLE_LOOP_SCALARS",
    "CAPTURABLE_FOREACH_LISTS",
    "coupled_weight_decay",
    "loop_grad",
    "foreach_grads",
    "cpu_step",
    "capturable_slack",
]
