"""Device memory outside the model's tensors: CUDA context, cuBLAS/cuBLASLt workspaces, allocator rounding.

- CUDA context: driver state plus the kernel images loaded into the process. It is not visible to
  the caching allocator (NVML per-process usage minus `torch.cuda.memory_reserved()`), depends on
  the GPU, the CUDA version and on lazy module loading (CUDA >= 11.7; PyTorch sets
  CUDA_MODULE_LOADING=LAZY by default since 1.13). No formula exists, so `cuda_context_bytes`
  takes the median of measured figures from `profiles/cuda_context.json` (each one cited, fields in
  `profiles/cuda_context.md`): same architecture and CUDA major version if any, else same
  architecture, else every figure with the same loading mode. `lazy_loading` decides the mode from
  the CUDA runtime, the driver and CUDA_MODULE_LOADING the way CUDA and PyTorch do: eager below
  CUDA 11.7 (runtime or driver), else what the variable says, else lazy (PyTorch's default). The
  eager figures are 2-5x the lazy ones: 1,341 MiB on a V100 with CUDA 11.2 (transformers' model
  memory anatomy page) against 366 MiB on a V100 with a 2023 stack.
- cuBLAS / cuBLASLt workspaces: sizes as aten/src/ATen/cuda/CublasHandlePool.cpp computes them in
  torch 2.13 (see the functions' docstrings). They are allocated through the caching allocator, so
  they count in allocated/reserved memory, not in the context.
- Allocator rounding: every request is rounded to a multiple of 512 bytes (at least 512); this
  reuses the allocator simulator's rounding rather than restating it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from .allocator.simulator import K_MIN_BLOCK, CachingAllocatorSimulator
from .cuda import parse_compute_capability, parse_cuda_major, parse_cuda_version
from .errors import MemprofUserError

MIB = 2**20
KIB = 2**10

# ---------------------------------------------------------------------------- allocator rounding

ALLOCATOR_ROUNDING = K_MIN_BLOCK  # kMinBlockSize = 512 B in CUDACachingAllocator.cpp
_DEFAULT_ALLOCATOR = CachingAllocatorSimulator()


def round_allocation(nbytes: int) -> int:
    """The bytes the caching allocator hands out for a request of `nbytes` (default config).

    < 512 -> 512 (an empty tensor's 0-byte request included); otherwise rounded up to a multiple of
    512. PYTORCH_CUDA_ALLOC_CONF=roundup_power2_divisions changes this: use the allocator simulator
    with that config instead.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise MemprofUserError(f"allocation size must be a non-negative integer number of bytes, got {nbytes!r}")
    return _DEFAULT_ALLOCATOR.round_size(nbytes)


# ---------------------------------------------------------------------------- compute capability

# Compute capability major (and 7.5 / 8.9 by minor) -> architecture name, lowercase.
_ARCH_BY_MAJOR = {
    3: "kepler",
    5: "maxwell",
    6: "pascal",
    7: "volta",
    8: "ampere",
    9: "hopper",
    10: "blackwell",
    11: "blackwell",
    12: "blackwell",
}
_ARCH_BY_CC: dict[tuple[int, ...], str] = {(7, 5): "turing", (8, 9): "ada"}
_ARCH_ALIASES = {"ada lovelace": "ada", "ada-lovelace": "ada", "ada_lovelace": "ada", "lovelace": "ada"}


def architecture_of(compute_capability: tuple[int, int]) -> str | None:
    """ "ampere", "ada", "hopper", ... for a (major, minor) compute capability; None if unknown."""
    cc = tuple(compute_capability)
    return _ARCH_BY_CC.get(cc) or _ARCH_BY_MAJOR.get(cc[0])


def _normalise_architecture(name: str | None) -> str | None:
    if not name:
        return None
    key = name.strip().lower()
    return _ARCH_ALIASES.get(key, key)


# ---------------------------------------------------------------------------- cuBLAS workspaces

CUBLAS_DEFAULT_WORKSPACE = 4096 * KIB * 2 + 16 * KIB * 8  # ":4096:2:16:8" = 8,519,680 B
CUBLAS_LARGE_WORKSPACE = 4096 * 8 * KIB  # 32 MiB
# Compute-capability majors that get the 32 MiB default in torch 2.13: Hopper (sm_90) since
# pytorch#91564 (2023), datacenter and GeForce Blackwell (sm_100, sm_120) since pytorch#175344
# (main 2026-02-19). sm_110 (Thor) joined in pytorch#189312 (2026-07), after the 2.13 branch cut.
CUBLAS_LARGE_WORKSPACE_MAJORS = frozenset({9, 10, 12})
CUBLASLT_DEFAULT_KIB_SEPARATE = 1024  # default Lt size when workspaces are not unified (#73328)

_CONFIG_PAIR = re.compile(r":([0-9]+):([0-9]+)")  # the regex in parseChosenWorkspaceSize
_STOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")  # what std::stoi accepts as a prefix
_INT_MAX = 2**31 - 1


def parse_cublas_workspace_config(config: str) -> int | None:
    """Bytes of a CUBLAS_WORKSPACE_CONFIG string, or None when torch could not parse it.

    Like parseChosenWorkspaceSize: every non-overlapping ":SIZE:COUNT" match adds
    SIZE KiB * COUNT; with no match torch warns and keeps its default (None here).
    ":4096:8" -> 32 MiB, ":16:8" -> 128 KiB, ":4096:2:16:8" -> 8,519,680 B.
    """
    if not isinstance(config, str):
        raise MemprofUserError(f"CUBLAS_WORKSPACE_CONFIG must be a string like ':4096:8', got {config!r}")
    pairs = _CONFIG_PAIR.findall(config)
    if not pairs:
        return None
    return sum(int(size) * KIB * int(count) for size, count in pairs)


def cublas_workspace_bytes(compute_capability: Any, cublas_workspace_config: str | None = None) -> int:
    """Size of one cuBLAS workspace, as torch 2.13's getChosenWorkspaceSize computes it.

    Default ":4096:2:16:8" = 8,519,680 B; 32 MiB when the compute-capability major is 9, 10 or 12
    (sm_90, sm_100, sm_120). `cublas_workspace_config` is a CUBLAS_WORKSPACE_CONFIG value; an
    unparsable one leaves the default, as in torch. torch.backends.cuda.cublas_workspace_size(n)
    overrides both. The workspace is allocated through the caching allocator once per
    (thread, device, stream) that runs a cuBLAS call.
    """
    major, _ = parse_compute_capability(compute_capability)
    default = CUBLAS_LARGE_WORKSPACE if major in CUBLAS_LARGE_WORKSPACE_MAJORS else CUBLAS_DEFAULT_WORKSPACE
    if cublas_workspace_config is None:
        return default
    parsed = parse_cublas_workspace_config(cublas_workspace_config)
    return default if parsed is None else parsed


def _stoi_kib(value: str, default_kib: int) -> int:
    """CUBLASLT_WORKSPACE_SIZE as torch reads it: std::stoi (leading integer), default on failure."""
    if not isinstance(value, str):
        raise MemprofUserError(f"CUBLASLT_WORKSPACE_SIZE must be a string of KiB like '1024', got {value!r}")
    m = _STOI.match(value)
    if m is None:
        return default_kib  # std::invalid_argument: torch warns, keeps default
    kib = int(m.group(1))
    if kib > _INT_MAX or kib < -_INT_MAX - 1:
        return default_kib  # std::out_of_range: torch warns, keeps default
    if kib < 0:
        raise MemprofUserError(
            f"CUBLASLT_WORKSPACE_SIZE={value!r} is negative; torch would wrap it to a huge size. "
            "Give a size in KiB, e.g. '1024'"
        )
    return kib


def cublaslt_workspace_bytes(
    compute_capability: Any,
    cublaslt_workspace_size: str | None = None,
    cublas_workspace_config: str | None = None,
    unified: bool = True,
) -> int:
    """Size of the cuBLASLt workspace, as torch 2.13's getCUDABlasLtWorkspaceSize computes it.

    `unified` is TORCH_CUBLASLT_UNIFIED_WORKSPACE, on by default in open-source CUDA builds
    (pytorch#168175, #175879): the default Lt size is then the cuBLAS size (pytorch#173002), a
    CUBLASLT_WORKSPACE_SIZE value (KiB) is capped at the cuBLAS size, and Lt reuses the cuBLAS
    workspace allocation instead of allocating its own. Not unified (fbcode default, or the
    variable set to 0): 1024 KiB by default, no cap, a separate allocation.
    """
    cublas = cublas_workspace_bytes(compute_capability, cublas_workspace_config)
    default_kib = cublas // KIB if unified else CUBLASLT_DEFAULT_KIB_SEPARATE
    kib = default_kib if cublaslt_workspace_size is None else _stoi_kib(cublaslt_workspace_size, default_kib)
    size = kib * KIB
    return min(size, cublas) if unified else size


def blas_workspace_allocations(
    compute_capability: Any,
    cublas_workspace_config: str | None = None,
    cublaslt_workspace_size: str | None = None,
    unified: bool = True,
    uses_cublaslt: bool = True,
) -> tuple[int, ...]:
    """Caching-allocator requests for BLAS workspaces of one (thread, device, stream), torch 2.13.

    Unified workspaces (the default): one cuBLAS-sized block shared by cuBLAS and cuBLASLt.
    Otherwise a cuBLAS block plus, once cuBLASLt runs, a cuBLASLt block.
    """
    cublas = cublas_workspace_bytes(compute_capability, cublas_workspace_config)
    if unified or not uses_cublaslt:
        return (cublas,)
    lt = cublaslt_workspace_bytes(compute_capability, cublaslt_workspace_size, cublas_workspace_config, unified)
    return (cublas, lt)


# ---------------------------------------------------------------------------- CUDA context


@dataclass(frozen=True)
class ContextObservation:
    """One measured CUDA-context figure from profiles/cuda_context.json."""

    id: str
    gpu: str | None
    compute_capability: tuple[int, int] | None
    architecture: str | None
    cuda: str | None
    torch: str | None
    lazy_loading: bool | None
    context_bytes: int
    measured: str
    quality: str  # direct | derived | approximate | upper_bound (see cuda_context.md)
    source_url: str
    use_in_estimate: bool = True  # False: documented, but contaminated by tensors, NCCL, ...

    @property
    def cuda_major(self) -> int | None:
        return _cuda_major_or_none(self.cuda)


@dataclass(frozen=True)
class ContextEstimate:
    """Predicted CUDA-context bytes with the observations behind it."""

    bytes: int
    low: int  # smallest observation used
    high: int  # largest observation used
    observations: tuple[ContextObservation, ...]
    basis: str  # one line: which figures, e.g. "median of 2 measured Ampere figures, ..."

    @property
    def mib(self) -> float:
        return self.bytes / MIB


def _cuda_major_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    m = re.match(r"\s*(?:cu)?(\d+)", text)
    return int(m.group(1)) if m else None


def _observation(entry: dict[str, Any]) -> ContextObservation:
    cc = entry.get("compute_capability")
    cc = tuple(cc) if cc is not None else None
    arch = _normalise_architecture(entry.get("architecture"))
    if cc is not None and arch != architecture_of(cc):
        raise ValueError(
            f"cuda_context.json: {entry['id']}: architecture {arch!r} does not match compute capability {cc}"
        )
    source = entry.get("source") or {}
    if not source.get("url"):
        raise ValueError(f"cuda_context.json: {entry['id']}: no source url")
    if not isinstance(entry["context_bytes"], int) or entry["context_bytes"] <= 0:
        raise ValueError(f"cuda_context.json: {entry['id']}: context_bytes must be a positive int")
    use = entry.get("use_in_estimate", True)
    if not use and not entry.get("excluded_because"):
        raise ValueError(f"cuda_context.json: {entry['id']}: excluded without excluded_because")
    return ContextObservation(
        id=entry["id"],
        gpu=entry.get("gpu"),
        compute_capability=cc,
        architecture=arch,
        cuda=entry.get("cuda"),
        torch=entry.get("torch"),
        lazy_loading=entry.get("lazy_loading"),
        context_bytes=entry["context_bytes"],
        measured=entry["measured"],
        quality=entry["quality"],
        source_url=source["url"],
        use_in_estimate=use,
    )


@cache
def context_observations() -> tuple[ContextObservation, ...]:
    """Every observation in profiles/cuda_context.json, excluded ones too (loaded and checked once)."""
    from memprof.profiles import data_path

    with open(data_path("cuda_context.json"), encoding="utf-8") as f:
        entries = json.load(f)["observations"]
    obs = tuple(_observation(e) for e in entries)
    ids = [o.id for o in obs]
    if len(set(ids)) != len(ids):
        raise ValueError("cuda_context.json: duplicate observation ids")
    return obs


def _gpu_architecture(gpu: Any) -> str | None:
    if gpu is None:
        return None
    cc = getattr(gpu, "compute_capability", None)
    if cc is not None:
        arch = architecture_of(parse_compute_capability(cc))
        if arch is not None:
            return arch
    return _normalise_architecture(getattr(gpu, "architecture", None))


def _median(values: list[int]) -> int:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2


def _figures(n: int) -> str:
    return f"{n} measured {'figure' if n == 1 else 'figures'}"


LAZY_LOADING_MIN_CUDA = (11, 7)  # CUDA Programming Guide, "Lazy Loading": first in runtime 11.7
CUDA_LAZY_BY_DEFAULT = (12, 2)  # ... "enabled by default for Linux" since 12.2 (Windows 12.3)
_MODULE_LOADING_VALUES = ("LAZY", "EAGER")


@dataclass(frozen=True)
class LazyLoading:
    """Whether kernels load lazily in a PyTorch process, and why (one line)."""

    enabled: bool
    reason: str


def lazy_loading(
    cuda_version: str | None = None, *, driver_cuda: str | None = None, module_loading: str | None = None
) -> LazyLoading:
    """Whether CUDA loads kernels lazily for a PyTorch process (which sets the context's size).

    - `cuda_version`: the CUDA runtime PyTorch was built with (`torch.version.cuda`, "cu124").
      Lazy loading exists from runtime 11.7 on (CUDA Programming Guide, "Lazy Loading":
      "available starting in CUDA runtime version 11.7 ... Libraries compiled using older CUDA
      runtime versions will load all modules eagerly").
    - `driver_cuda`: the CUDA version the driver supports (nvidia-smi's header, "CUDA Version:
      11.2"). "Lazy loading is a joint feature of both the CUDA runtime and driver"; a driver whose
      CUDA version is below 11.7 predates it (a newer runtime can run on it through minor-version
      compatibility, eagerly).
    - `module_loading`: the CUDA_MODULE_LOADING value the user set ("LAZY" / "EAGER"), or None when
      unset: PyTorch then sets LAZY itself (aten/src/ATen/cuda/detail/CUDAHooks.cpp,
      maybe_set_cuda_module_loading("LAZY"), only if the variable is unset; since 1.13, #86509).
    Unknown versions are taken as new enough (PyTorch >= 1.13 wheels are all CUDA >= 11.7).
    """
    for name, version in (("CUDA runtime", cuda_version), ("driver CUDA", driver_cuda)):
        if version is not None and parse_cuda_version(version) < LAZY_LOADING_MIN_CUDA:
            return LazyLoading(False, f"eager: {name} {version} is older than 11.7, the first with lazy loading")
    if module_loading is None:
        return LazyLoading(True, "lazy: PyTorch sets CUDA_MODULE_LOADING=LAZY when the variable is unset")
    value = module_loading.strip().upper() if isinstance(module_loading, str) else module_loading
    if value not in _MODULE_LOADING_VALUES:
        raise MemprofUserError(f"CUDA_MODULE_LOADING must be 'LAZY' or 'EAGER', got {module_loading!r}")
    return LazyLoading(value == "LAZY", f"{value.lower()}: CUDA_MODULE_LOADING={value} set by the user")


def cuda_context_bytes(
    gpu: Any = None,
    cuda_version: str | None = None,
    lazy: bool | None = None,
    *,
    driver_cuda: str | None = None,
    module_loading: str | None = None,
) -> ContextEstimate:
    """Estimate the CUDA context of one PyTorch process on one device from measured figures.

    `gpu` is anything with `compute_capability` (major, minor) and/or `architecture` (a GPUSpec),
    or None. The loading mode is `lazy` if given, else `lazy_loading(cuda_version, driver_cuda=...,
    module_loading=...)`; lazy=True with a CUDA runtime or driver older than 11.7 is eager (lazy
    loading does not exist there) and the basis says so. Among observations with that loading mode,
    prefer the same architecture and CUDA major version, else the same architecture, else all of
    them; the estimate is their median (the mean of the middle two for an even count), with min/max
    as the spread.
    """
    if lazy is not None and not isinstance(lazy, bool):
        raise MemprofUserError(f"lazy must be True, False or None (decide from the versions), got {lazy!r}")
    forced = ""
    if lazy is None:
        lazy = lazy_loading(cuda_version, driver_cuda=driver_cuda, module_loading=module_loading).enabled
    elif lazy:
        possible = lazy_loading(cuda_version, driver_cuda=driver_cuda)  # versions only
        if not possible.enabled:
            lazy, forced = False, f" ({possible.reason})"
    cuda_major = None if cuda_version is None else parse_cuda_major(cuda_version)
    arch = _gpu_architecture(gpu)
    mode = ("lazy loading" if lazy else "eager loading") + forced
    pool = [o for o in context_observations() if o.use_in_estimate and o.lazy_loading is lazy]
    if not pool:
        raise MemprofUserError(f"no measured CUDA-context figure with {mode} in cuda_context.json")

    chosen, basis = pool, None
    if arch is not None:
        same_arch = [o for o in pool if o.architecture == arch]
        same_cuda = [o for o in same_arch if cuda_major is not None and o.cuda_major == cuda_major]
        title = arch.capitalize()
        if same_cuda:
            chosen = same_cuda
            basis = f"median of {_figures(len(chosen))} on {title}, CUDA {cuda_major}.x, {mode}"
        elif same_arch:
            chosen = same_arch
            missing = f" (none for CUDA {cuda_major}.x)" if cuda_major is not None else ""
            basis = f"median of {_figures(len(chosen))} on {title}, any CUDA version, {mode}{missing}"
        else:
            basis = f"median of all {_figures(len(chosen))} with {mode} (none for {title})"
    if basis is None:
        basis = f"median of all {_figures(len(chosen))} with {mode} (GPU architecture not given)"

    values = [o.context_bytes for o in chosen]
    return ContextEstimate(
        bytes=_median(values), low=min(values), high=max(values), observations=tuple(chosen), basis=basis
    )
