"""CUDA autocast's casting policy run by `torch.autocast("cpu", dtype)` on CPU (and fake CPU) tensors.

The tracer runs a `device="cuda"` step on CPU fake tensors (fake CUDA tensors abort a CPU-only torch
in CUDA autocast), so a plain `torch.autocast("cpu")` would apply CPU autocast's op lists, which differ
from CUDA's (layer_norm, pow, softmax, cross-entropy's log_softmax run in float32 on CUDA, in the lower
precision on the CPU). `CudaAutocast(dtype)` is a context manager that, while it is entered, makes
`torch.autocast("cpu", dtype)` follow CUDA's policy, and enters that autocast.

The policy comes from torch itself, not from memprof.estimators.autocast (the analytic estimator's
lists), so the two stay independent measurements of the same thing: the macros of the header the
wheel ships (torch/include/ATen/autocast_mode.h: AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE, AT_FORALL_PROMOTE) and the set
of ops registered for the AutocastCUDA dispatch key (aten/src/ATen/autocast_mode.cpp registers them on
every build). On entry a `torch.library.Library("aten", "IMPL")` registers, for the AutocastCPU key,
one Python kernel per op registered for AutocastCUDA doing what autocast_mode.h's WrapFunction_ does
for its policy (cached_cast, set_opt_dtype, type_from_firstarg + the redispatch overload, promote_type,
the banned list), and a fallthrough kernel for every op only CPU autocast registers (so a composite op
such as cross_entropy_loss decomposes and its parts meet CUDA's policy, as on CUDA). The kernels sit
at the autocast key, above autograd, so autograd records the casts and saves what the policy produces.
On exit the library is destroyed: the dispatcher drops the Python kernels and CPU autocast's own C++
kernels are active again (OperatorEntry keeps every registration per key; deregistering one restores
the previous) and `torch.clear_autocast_cache`, wrapped meanwhile so that leaving autocast also empties the
kernels' cast cache, is torch's own again: nothing outlives the context in the user's process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import torch

HEADER = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "autocast_mode.h")
_MACROS = {
    "lower_precision_fp": "AT_FORALL_LOWER_PRECISION_FP",
    "fp32": "AT_FORALL_FP32",
    "fp32_set_opt_dtype": "AT_FORALL_FP32_SET_OPT_DTYPE",
    "promote": "AT_FORALL_PROMOTE",
}
# AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE: the overload the fp32_append_dtype wrapper calls, with a dtype
_REDISPATCH = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}


def available() -> bool:
    """Whether this torch wheel ships the header the policies are read from."""
    return os.path.exists(HEADER)


def _macro(text: str, name: str) -> list[str]:
    body = re.search(r"#define " + name + r"\(_\)(.*?)\n\n", text, re.S)
    if body is None:
        raise RuntimeError(f"{HEADER}: no {name} macro (an autocast header this module does not know)")
    return ["aten::" + ".".join(p.strip() for p in a.split(",")) for a in re.findall(r"_\(([^()]*?)\)", body.group(1))]


@functools.cache
def _policies() -> tuple[tuple[str, str], ...]:
    with open(HEADER, encoding="utf-8") as f:
        text = f.read()
    policy = {op: name for name, macro in _MACROS.items() for op in _macro(text, macro)}
    redispatch = re.search(r"#define AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE\(_\)(.*?)\n\n", text, re.S)
    if redispatch is None:
        raise RuntimeError(f"{HEADER}: no AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE macro")
    for op in re.findall(r'"(norm\.[A-Za-z_]+)"', redispatch.group(1)):
        policy["aten::" + op] = "fp32_append_dtype"
    registered = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA"))
    # autocast_mode.cpp registers a few ops outside the macros: cudnn convolutions (lower precision,
    # beside the macro), binary_cross_entropy (banned: "unsafe to autocast")
    for op in registered - set(policy):
        policy[op] = "banned" if "binary_cross_entropy" in op else "lower_precision_fp"
    return tuple(sorted((op, p) for op, p in policy.items() if op in registered))


def torch_cuda_policies() -> dict[str, str]:
    """op ("aten::softmax.int") -> CUDA autocast policy, from torch's header and its dispatcher."""
    return dict(_policies())


def _overload(op: str) -> Any:
    name, _, overload = op.removeprefix("aten::").partition(".")
    return getattr(getattr(torch.ops.aten, name), overload or "default")


def _eligible(x: Any) -> bool:
    # is_eligible / is_autocast_eligible: a defined floating tensor that is not float64
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64


class _Casts:
    """cached_cast: lower-precision casts of fp32 leaf tensors that require grad are cached while
    autocast is on (autocast_mode.cpp, get_cached_casts), so a weight used twice is cast once; the
    cache holds the casts until autocast exits (clear_cache), as CUDA's does."""

    def __init__(self) -> None:
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def cast(self, x: Any, dtype: torch.dtype, lower: torch.dtype) -> Any:
        if isinstance(x, (list, tuple)):
            return type(x)(self.cast(v, dtype, lower) for v in x)
        if not _eligible(x) or x.dtype == dtype:
            return x
        cacheable = (
            dtype == lower
            and x.dtype == torch.float32
            and x.requires_grad
            and x.is_leaf
            and not x._is_view()
            and torch.is_autocast_cache_enabled()
        )
        if cacheable and id(x) in self.cache and self.cache[id(x)][0] is x:
            return self.cache[id(x)][1]
        y = x.to(dtype)
        if cacheable:
            self.cache[id(x)] = (x, y)
        return y


def _tensors(args: Any) -> Iterator[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


def _kernel(op: str, policy: str, casts: _Casts) -> Any:
    target = _overload(op)
    dtype_args = [i for i, a in enumerate(target._schema.arguments) if a.name == "dtype"]
    redispatch = _overload("aten::" + _REDISPATCH[op.removeprefix("aten::")]) if policy == "fp32_append_dtype" else None
    excluded = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def run(*args: Any, **kwargs: Any) -> Any:
        lower = torch.get_autocast_dtype("cpu")
        if policy == "banned":
            raise RuntimeError(f"{op} is unsafe to autocast (CUDA autocast's banned list)")
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            if policy == "lower_precision_fp":
                args = casts.cast(args, lower, lower)
                kwargs = {k: casts.cast(v, lower, lower) for k, v in kwargs.items()}
            elif policy == "fp32":
                args = casts.cast(args, torch.float32, lower)
                kwargs = {k: casts.cast(v, torch.float32, lower) for k, v in kwargs.items()}
            elif policy == "fp32_set_opt_dtype":
                if args and _eligible(args[0]):  # firstarg_is_eligible, then set_opt_dtype
                    if dtype_args and dtype_args[0] < len(args):
                        if args[dtype_args[0]] is None:
                            args = (*args[: dtype_args[0]], torch.float32, *args[dtype_args[0] + 1 :])
                    elif kwargs.get("dtype") is None:
                        kwargs["dtype"] = torch.float32
            elif policy == "fp32_append_dtype":  # type_from_firstarg, then the overload taking a dtype
                assert redispatch is not None
                dtype = torch.float32 if args and _eligible(args[0]) else args[0].dtype
                return redispatch(*args, **kwargs, dtype=dtype)
            elif policy == "promote":  # promote_type: the widest eligible type, starting from lower
                widest = lower
                for t in _tensors([*args, *kwargs.values()]):
                    if _eligible(t) and t.dtype == torch.float32:
                        widest = torch.float32
                    elif _eligible(t) and t.dtype != lower:
                        raise RuntimeError(f"{op}: promote meets a 16-bit input other than the autocast dtype")
                args = casts.cast(args, widest, lower)
                kwargs = {k: casts.cast(v, widest, lower) for k, v in kwargs.items()}
            return target(*args, **kwargs)

    return run


class CudaAutocast:
    """`torch.autocast("cpu", dtype)` following CUDA autocast's policy while entered (module docstring).

    `with CudaAutocast(dtype):` registers the kernels, enables CPU autocast, and on exit disables it and
    removes them. `with cuda.kernels():` keeps the kernels registered over a longer stretch (a whole
    training step): activation checkpointing recomputes its forward in backward under the autocast state
    it recorded (torch/utils/checkpoint.py, `torch.amp.autocast("cpu", **cpu_autocast_kwargs)`), which must
    meet CUDA's policy again, as on CUDA. The kernels act only while CPU autocast is enabled (the
    AutocastCPU key is excluded otherwise), so registered they change nothing outside autocast. Both
    may be entered again, one after the other. `policies`: op -> policy. A torch without the header (or
    with macros this module cannot read) runs CPU autocast's lists and says so in `notes` (the tracer's
    record warnings)."""

    def __init__(self, dtype: torch.dtype, notes: list[str] | None = None) -> None:
        self.dtype = dtype
        try:
            self.policies = torch_cuda_policies()
        except (OSError, RuntimeError) as exc:
            self.policies = {}
            if notes is not None:
                notes.append(f"CUDA autocast's op lists not applied ({exc}): the forward and loss ran CPU autocast's")
        self._lib: torch.library.Library | None = None
        self._casts = _Casts()
        self._autocast: torch.autocast | None = None
        self._own: contextlib.AbstractContextManager[None] | None = None

    @contextlib.contextmanager
    def kernels(self) -> Iterator[None]:
        """The policy kernels registered at AutocastCPU while entered (nothing when no policy was read)."""
        if self._lib is not None or not self.policies:
            yield
            return
        cpu_only = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCPU")) - set(self.policies)
        clear = torch.clear_autocast_cache

        def clear_both() -> None:
            # torch.autocast.__exit__ clears autocast's cast cache when the outermost autocast exits
            # (torch/amp/autocast_mode.py): the kernels' cache goes with it, a checkpoint's recompute included
            self._casts.cache.clear()
            clear()

        self._lib = torch.library.Library("aten", "IMPL")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
                for op, policy in self.policies.items():
                    self._lib.impl(op.removeprefix("aten::"), _kernel(op, policy, self._casts), "AutocastCPU")
                for op in sorted(cpu_only):  # not autocast on CUDA: fall through, as CUDA's key does
                    self._lib.impl(op.removeprefix("aten::"), torch.library.fallthrough_kernel, "AutocastCPU")
            torch.clear_autocast_cache = clear_both
            yield
        finally:
            torch.clear_autocast_cache = clear
            self._casts.cache.clear()
            self._lib._destroy()
            self._lib = None

    def __enter__(self) -> CudaAutocast:
        if self._autocast is not None:
            raise RuntimeError("CudaAutocast is already entered")
        own = None if self._lib is not None else self.kernels()
        if own is not None:
            own.__enter__()
        try:
            self._autocast = torch.autocast("cpu", dtype=self.dtype)
            self._autocast.__enter__()
        except BaseException:
            self._autocast = None
            if own is not None:
                own.__exit__(None, None, None)
            raise
        self._own = own
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        own, self._own = self._own, None
        try:
            if self._autocast is not None:
                self._autocast.__exit__(kind, exc, tb)
        finally:
            self._autocast = None
            if own is not None:
                own.__exit__(None, None, None)
