"""Which CUDA kernels a GPU can run, and which attention kernel PyTorch picks there (torch 2.13).

Everything keys on the compute capability (a `GPUSpec`, a (major, minor) pair, "8.0" or "sm_80"),
and follows PyTorch's own checks rather than marketing tables:

- SDPA backends (`torch.nn.functional.scaled_dot_product_attention` on CUDA) as
  aten/src/ATen/native/transformers/cuda/sdp_utils.cpp decides them (read at pytorch commit
  001f694a; the filters are quoted at each function): flash needs sm80..sm121, float16/bfloat16,
  q/k/v head dims equal and <= 256, no explicit mask; memory-efficient needs sm50..sm121 and a head
  dim divisible by the GEMM alignment (8 for 16-bit, 4 for float32 on sm80+); cuDNN needs sm80..sm121
  and 16-bit inputs with head dim <= 128 (256 on sm90/sm10x with cuDNN > 9.22), divisible by 8.
  The order is flash, efficient, math, cuDNN (`at::globalContext().sDPPriorityOrder()`), with
  cuDNN moved first on sm90 / sm100 (minor 0 or 3 with CUDA < 13) when cuDNN > 9.15.0 and
  TORCH_CUDNN_SDPA_DEPRIORITIZED is not set (`check_prefer_cudnn_attention`).
- flash_attention_2 (transformers' `attn_implementation="flash_attention_2"`, the flash-attn
  package): sm8x / sm90 only, "FlashAttention only supports Ampere GPUs or newer." and 16-bit inputs
  only (flash-attn csrc/flash_attn/flash_api.cpp, mha_fwd).
- bfloat16: native on sm80+; older GPUs run bf16 tensors through emulation:
  `torch.cuda.is_bf16_supported(including_emulation=True)` (the default, and what `torch.autocast`
  checks) creates a bf16 tensor and succeeds, so bf16 autocast runs (same bytes, no bf16 tensor
  cores, slow). TF32: `torch.cuda.is_tf32_supported()` is `is_bf16_supported(including_emulation=False)`,
  i.e. sm80+; on older GPUs `allow_tf32` has no effect. Neither changes memory.

`check_request` turns these into what memprof says about a requested precision/attention on a GPU:
"error" where PyTorch (or flash-attn) raises, "warning" where it runs degraded, "ok" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cuda import parse_compute_capability, parse_cuda_version
from .errors import MemprofUserError
from .precision import get_precision

__all__ = [
    "SDPA_DEFAULT_PRIORITY",
    "AttentionChoice",
    "KernelCheck",
    "RequestCheck",
    "bf16_support",
    "check_cuda",
    "check_request",
    "cudnn_sdpa",
    "efficient_sdpa",
    "flash_attention_2",
    "flash_sdpa",
    "pick_attention_kernel",
    "sdpa_priority",
    "tf32_supported",
]

SM50, SM80, SM86, SM89, SM90, SM120, SM121 = (5, 0), (8, 0), (8, 6), (8, 9), (9, 0), (12, 0), (12, 1)
FLASH_MAX_HEAD_DIM = 256  # check_head_dim_size_flash
# at::globalContext().sDPPriorityOrder() default; select_sdp_backend walks it in order
SDPA_DEFAULT_PRIORITY: tuple[str, ...] = ("flash", "efficient", "math", "cudnn")
_HALF = ("float16", "bfloat16")
_DTYPES = ("float32", "float16", "bfloat16")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}


@dataclass(frozen=True)
class KernelCheck:
    """Whether one kernel runs for these inputs, and the first filter that rejects it."""

    kernel: str
    ok: bool
    reason: str  # "" when ok; else the failing check, in PyTorch's words where it has them


@dataclass(frozen=True)
class AttentionChoice:
    """The attention kernel PyTorch runs, and why the ones before it in the order were skipped.

    `kernel` uses the activation replay's vocabulary (estimators/activations: "eager", "math",
    "flash", "efficient") plus "cudnn" (SDPA's cuDNN backend, which like flash saves the output and
    a float32 logsumexp per row); `implementation` is what was asked of transformers.
    """

    kernel: str  # "eager" | "math" | "flash" | "efficient" | "cudnn"
    implementation: str = "sdpa"  # "eager" | "sdpa" | "flash_attention_2" (the flash-attn package)
    skipped: tuple[KernelCheck, ...] = ()
    priority: tuple[str, ...] = ()


def _cc(gpu: Any) -> tuple[int, int]:
    return parse_compute_capability(gpu)


def _dtype(dtype: str) -> str:
    key = str(dtype).strip().lower().removeprefix("torch.")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in _DTYPES:
        raise MemprofUserError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return key


def _head_dims(head_dim: int, head_dim_v: int | None) -> tuple[int, int]:
    for name, value in (("head_dim", head_dim), ("head_dim_v", head_dim_v)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise MemprofUserError(f"{name} must be a positive integer, got {value!r}")
    return head_dim, head_dim if head_dim_v is None else head_dim_v


def _in_range(cc: tuple[int, int], low: tuple[int, int], high: tuple[int, int]) -> bool:
    return low <= cc <= high  # check_sm_version<lower, upper>: inclusive on (major, minor)


def _sm(cc: tuple[int, int]) -> str:
    return f"sm{cc[0]}{cc[1]}"


# ---------------------------------------------------------------------------- precision support


def bf16_support(gpu: Any) -> str:
    """ "native" (sm80+: bf16 tensor cores) or "emulated" (older: runs, slowly; same bytes)."""
    return "native" if _cc(gpu) >= SM80 else "emulated"


def tf32_supported(gpu: Any) -> bool:
    """TF32 matmuls exist (torch.cuda.is_tf32_supported(): native bf16, i.e. sm80+)."""
    return _cc(gpu) >= SM80


# ---------------------------------------------------------------------------- SDPA backends


def flash_sdpa(
    gpu: Any,
    dtype: str,
    head_dim: int,
    *,
    head_dim_v: int | None = None,
    has_mask: bool = False,
    requires_grad: bool = True,
    dropout: float = 0.0,
    is_causal: bool = False,
    seq_q: int | None = None,
    seq_k: int | None = None,
) -> KernelCheck:
    """SDPA's flash backend (can_use_flash_attention), dense inputs."""
    cc, dt = _cc(gpu), _dtype(dtype)
    d_qk, d_v = _head_dims(head_dim, head_dim_v)
    if has_mask:  # check_for_attn_mask
        return KernelCheck("flash", False, "Flash Attention does not support non-null attn_mask.")
    if d_qk != d_v or d_qk > FLASH_MAX_HEAD_DIM:  # check_head_dim_size_flash
        return KernelCheck(
            "flash",
            False,
            "Flash attention requires q,k,v to have the same last dimension and to be less than or equal to 256.",
        )
    if not _in_range(cc, SM80, SM121):  # check_flash_attention_hardware_support
        reason = f"Flash attention only supports gpu architectures in the range [sm80, sm121]; this is {_sm(cc)}"
        return KernelCheck("flash", False, reason)
    # check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120
    consumer = _in_range(cc, SM86, SM89) or _in_range(cc, SM120, SM121)
    if requires_grad and consumer and not (d_qk <= 192 or (dropout == 0.0 and d_qk > 224)):
        return KernelCheck(
            "flash",
            False,
            f"Flash attention currently doesn't support training with head_dim in (192, 224] or (head_dim in "
            f"(224, 256] and dropout > 0.0) on {_sm(cc)}",
        )
    if is_causal and seq_q is not None and seq_k is not None and seq_q != seq_k:  # check_flash_causal_non_square
        return KernelCheck(
            "flash", False, "Flash attention does not support the is_causal flag when seqlen_q != seqlen_k."
        )
    if dt not in _HALF:  # check_dtypes_flash_attention -> check_dtypes_low_precision
        return KernelCheck("flash", False, f"flash attention runs float16/bfloat16 inputs only, got {dt}")
    return KernelCheck("flash", True, "")


def efficient_sdpa(gpu: Any, dtype: str, head_dim: int, *, head_dim_v: int | None = None) -> KernelCheck:
    """SDPA's memory-efficient backend (can_use_mem_efficient_attention), dense inputs."""
    cc, dt = _cc(gpu), _dtype(dtype)
    d_qk, d_v = _head_dims(head_dim, head_dim_v)
    if not _in_range(cc, SM50, SM121):  # check_mem_efficient_hardware_support
        return KernelCheck(
            "efficient", False, f"Mem Efficient Attention only supports [sm50, sm121]; this is {_sm(cc)}"
        )
    # check_head_dim_size_mem_efficient: alignment = minimum_gemm_alignment(params)
    half = dt in _HALF
    tensor_cores = cc[0] >= 8 or (cc[0] >= 7 and half)  # use_tensor_cores
    alignment = 4 if cc[0] >= 8 else 1
    if tensor_cores:
        alignment = max(alignment, 128 // (16 if half else 32))
    if d_qk % alignment or d_v % alignment:
        return KernelCheck(
            "efficient",
            False,
            f"Mem efficient attention requires last dimension of inputs to be divisible by {alignment}.",
        )
    # dtypes: {half, float} below sm80, {half, float, bfloat16} from sm80
    if dt == "bfloat16" and cc < SM80:
        return KernelCheck(
            "efficient", False, "memory-efficient attention takes float16/float32 below sm80, not bfloat16"
        )
    return KernelCheck("efficient", True, "")


def cudnn_sdpa(
    gpu: Any,
    dtype: str,
    head_dim: int,
    *,
    head_dim_v: int | None = None,
    cudnn_version: int | None = None,
    requires_grad: bool = True,
    dropout: float = 0.0,
    seq_k: int | None = None,
) -> KernelCheck:
    """SDPA's cuDNN backend (can_use_cudnn_attention), dense inputs. cudnn_version as an int: 91500 = 9.15.0.

    None: a cuDNN of the torch 2.13 CUDA 12/13 wheels (>= 9.x); the head-dim 256 path is then taken
    as unavailable (it needs cuDNN > 9.22 and a frontend >= 1.24), the conservative reading.
    """
    cc, dt = _cc(gpu), _dtype(dtype)
    d_qk, d_v = _head_dims(head_dim, head_dim_v)
    if cudnn_version is not None and cudnn_version < 90000:
        return KernelCheck("cudnn", False, "cuDNN version too old to use cuDNN Attention (< v9.0.0)")
    if dropout > 0.0 and cudnn_version is not None and 91100 < cudnn_version < 91400:
        return KernelCheck("cudnn", False, "cuDNN version does not support dropout in SDPA (9.11 - 9.13).")
    if dt not in _HALF:  # check_dtypes_low_precision
        return KernelCheck("cudnn", False, f"cuDNN attention runs float16/bfloat16 inputs only, got {dt}")
    if not _in_range(cc, SM80, SM121):  # check_cudnn_hardware_support
        reason = f"cuDNN MHA only supports gpu architectures in the range [sm80, sm121]; this is {_sm(cc)}"
        return KernelCheck("cudnn", False, reason)
    if dropout * 16.0 != int(dropout * 16.0):  # check_cudnn_dropout
        return KernelCheck("cudnn", False, "cuDNN dropout probability resolution is limited to 1/16.")
    sm90_or_10x = cc == SM90 or cc[0] == 10
    limit = 128
    if sm90_or_10x and cudnn_version is not None and cudnn_version > 92200:
        limit = 256  # (with a cudnn-frontend >= 1.24, which torch's build pins)
    elif sm90_or_10x and cudnn_version is not None and cudnn_version >= 91100 and (d_qk, d_v) == (192, 128):
        limit = 192
    if d_qk > limit or d_v > limit:  # check_cudnn_tensor_shapes
        return KernelCheck("cudnn", False, f"head_dim should be no more than {limit}")
    if d_qk % 8 or d_v % 8:
        return KernelCheck("cudnn", False, "head_dim should be a multiple of 8")
    if seq_k == 1:
        return KernelCheck("cudnn", False, "cudnn SDPA does not support key/value sequence length 1.")
    if (
        requires_grad and limit == 256 and not ((d_qk <= 128 and d_v <= 128) or (d_qk, d_v) in ((192, 128), (256, 256)))
    ):  # check_cudnn_d256_bprop_head_dim
        return KernelCheck(
            "cudnn", False, "cuDNN SDPA on SM 9.0/10.x does not support backward with these head dimensions."
        )
    return KernelCheck("cudnn", True, "")


def sdpa_priority(
    gpu: Any, *, cudnn_version: int | None = None, cuda_version: str | None = None, cudnn_deprioritized: bool = False
) -> tuple[str, ...]:
    """The backend order select_sdp_backend walks on this GPU (priority_order / check_prefer_cudnn_attention).

    cuDNN goes first on sm90 and sm10x (with a CUDA < 13 build: minor 0 or 3 only) when the runtime
    cuDNN is newer than 9.15.0 and TORCH_CUDNN_SDPA_DEPRIORITIZED is not set; unknown versions keep
    the default order.
    """
    major, minor = _cc(gpu)
    if cudnn_deprioritized or cudnn_version is None or cudnn_version <= 91500 or major not in (9, 10):
        return SDPA_DEFAULT_PRIORITY
    cuda_major = None if cuda_version is None else parse_cuda_version(cuda_version)[0]
    if (cuda_major is None or cuda_major < 13) and minor not in (0, 3):
        return SDPA_DEFAULT_PRIORITY
    return ("cudnn", "flash", "efficient", "math")


def flash_attention_2(gpu: Any, dtype: str, head_dim: int | None = None) -> KernelCheck:
    """The flash-attn package (FlashAttention-2, transformers' "flash_attention_2"): sm8x or sm90, 16-bit."""
    cc, dt = _cc(gpu), _dtype(dtype)
    if not (cc[0] == 8 or cc == SM90):
        return KernelCheck(
            "flash_attention_2", False, f"FlashAttention only supports Ampere GPUs or newer. ({_sm(cc)})"
        )
    if dt not in _HALF:
        return KernelCheck("flash_attention_2", False, "FlashAttention only support fp16 and bf16 data type")
    if head_dim is not None and head_dim > FLASH_MAX_HEAD_DIM:
        return KernelCheck(
            "flash_attention_2", False, "FlashAttention forward only supports head dimension at most 256"
        )
    return KernelCheck("flash_attention_2", True, "")


def pick_attention_kernel(
    gpu: Any,
    dtype: str,
    head_dim: int,
    *,
    attention: str = "sdpa",
    head_dim_v: int | None = None,
    has_mask: bool = False,
    requires_grad: bool = True,
    dropout: float = 0.0,
    is_causal: bool = False,
    seq_q: int | None = None,
    seq_k: int | None = None,
    cudnn_version: int | None = None,
    cuda_version: str | None = None,
) -> AttentionChoice:
    """What PyTorch runs for `attention` ("auto" = "sdpa", transformers' default; "eager"; "flash") on `gpu`.

    dtype is the dtype the attention inputs have (the autocast dtype under mixed precision: SDPA is on
    autocast's lower-precision list, so q/k/v arrive in float16/bfloat16). "flash" raises a
    MemprofUserError where flash-attn would. SDPA never fails: math is the last resort.
    """
    if attention == "eager":
        return AttentionChoice("eager", "eager")
    if attention == "flash":
        check = flash_attention_2(gpu, dtype, head_dim)
        if not check.ok:
            raise MemprofUserError(f"attention 'flash' (flash_attention_2) cannot run: {check.reason}; use sdpa")
        return AttentionChoice("flash", "flash_attention_2")
    if attention not in ("auto", "sdpa"):
        raise MemprofUserError(f"attention must be auto, eager, sdpa or flash, got {attention!r}")
    order = sdpa_priority(gpu, cudnn_version=cudnn_version, cuda_version=cuda_version)
    checks = {
        "flash": lambda: flash_sdpa(
            gpu, dtype, head_dim, head_dim_v=head_dim_v, has_mask=has_mask, requires_grad=requires_grad,
            dropout=dropout, is_causal=is_causal, seq_q=seq_q, seq_k=seq_k,
        ),
        "efficient": lambda: efficient_sdpa(gpu, dtype, head_dim, head_dim_v=head_dim_v),
        "cudnn": lambda: cudnn_sdpa(
            gpu, dtype, head_dim, head_dim_v=head_dim_v, cudnn_version=cudnn_version, requires_grad=requires_grad,
            dropout=dropout, seq_k=seq_k,
        ),
    }  # fmt: skip
    skipped: list[KernelCheck] = []
    for backend in order:
        if backend == "math":
            return AttentionChoice("math", "sdpa", tuple(skipped), order)
        check = checks[backend]()
        if check.ok:
            return AttentionChoice(backend, "sdpa", tuple(skipped), order)
        skipped.append(check)
    return AttentionChoice("math", "sdpa", tuple(skipped), order)  # unreachable: math is in every order


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class RequestCheck:
    """memprof's verdict on a request for a GPU: "ok", "warning" (runs degraded) or "error" (PyTorch raises)."""

    level: str
    message: str


_PRECISION_DTYPE = {
    "bf16-mixed": "bfloat16",
    "bf16-true": "bfloat16",
    "bf16-master": "bfloat16",
    "16-mixed": "float16",
    "16-true": "float16",
    "16-master": "float16",
    "32-true": "float32",
}


def check_cuda(gpu: Any, cuda_version: str) -> RequestCheck:
    """Whether a PyTorch built with CUDA `cuda_version` can run kernels on `gpu`.

    "error" when the toolkit does not build for the GPU's compute capability (estimators/cuda.py,
    cuda_supports): torch.cuda warns at initialisation ("... is not compatible with the current
    PyTorch installation", _check_cubins) and the first kernel then raises "no kernel image is
    available for execution on the device", so no training step runs. An unknown CUDA version raises.
    """
    from .cuda import check_cuda_version, cuda_supports

    version = check_cuda_version(cuda_version)
    why = cuda_supports(_cc(gpu), version.text)
    if why:
        return RequestCheck("error", f"a PyTorch built with CUDA {version.text} cannot run on this GPU: {why}")
    return RequestCheck("warning", version.note) if version.note else RequestCheck("ok", "")


def check_request(gpu: Any, precision: str, attention: str = "auto", *, tf32: bool = False) -> RequestCheck:
    """Whether `precision` (a memprof precision name or alias) and `attention` can run on `gpu`.

    - bf16 precisions below sm80: "warning" (PyTorch emulates bfloat16 there; the memory is the same,
      the speed is not: is_bf16_supported(including_emulation=True) lets torch.autocast run).
    - attention "flash" (flash_attention_2) below sm80 or with fp32: "error" (flash-attn raises).
    - tf32=True below sm80: "warning" (allow_tf32 has no effect without TF32 tensor cores).
    """
    cc = _cc(gpu)
    precision = get_precision(precision).name  # an alias ("bf16", "fp16-mixed") or an unknown-name error
    dtype = _PRECISION_DTYPE[precision]
    if attention == "flash":
        check = flash_attention_2(cc, dtype)
        if not check.ok:
            return RequestCheck("error", f"attention 'flash' cannot run on {_sm(cc)} with {precision}: {check.reason}")
    if dtype == "bfloat16" and bf16_support(cc) == "emulated":
        return RequestCheck(
            "warning",
            f"{precision} on {_sm(cc)}: no bfloat16 tensor cores before sm80; PyTorch runs bfloat16 by emulation "
            "(same memory, much slower); 16-mixed is the native choice",
        )
    if tf32 and not tf32_supported(cc):
        return RequestCheck("warning", f"TF32 needs sm80+; on {_sm(cc)} allow_tf32 has no effect")
    return RequestCheck("ok", "")
