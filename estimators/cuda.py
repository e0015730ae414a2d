"""CUDA versions and compute capabilities as users and tools spell them, parsed once.

Kept apart from `overheads` (which simulates allocations) so that the kernel rules
(`estimators/kernels.py`), read by the activation replay, need nothing of the allocator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import MemprofUserError

__all__ = [
    "CUDA_RELEASES",
    "CudaVersion",
    "check_cuda_version",
    "cuda_supports",
    "parse_compute_capability",
    "parse_cuda_major",
    "parse_cuda_version",
]


def parse_compute_capability(value: Any) -> tuple[int, int]:
    """(major, minor) from (8, 0), [8, 0], "8.0", "sm_80", "sm80" or an object with `.compute_capability`."""
    if hasattr(value, "compute_capability"):
        value = value.compute_capability
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    if isinstance(value, str):
        text = value.strip().lower()
        m = re.fullmatch(r"(\d+)\.(\d+)", text)
        if m:
            return int(m.group(1)), int(m.group(2))
        m = re.fullmatch(r"sm_?(\d+)(\d)a?", text)
        if m:
            return int(m.group(1)), int(m.group(2))
    raise MemprofUserError(f"bad compute capability {value!r}; give (major, minor) like (8, 0), '8.0' or 'sm_80'")


def parse_cuda_major(cuda_version: str) -> int:
    """CUDA major version from "12.4", "12", "13.0.3" or a wheel tag like "cu124" / "cu118" / "cu92"."""
    if not isinstance(cuda_version, str):
        raise MemprofUserError(f"CUDA version must be a string like '12.4' or 'cu124', got {cuda_version!r}")
    text = cuda_version.strip().lower()
    m = re.fullmatch(r"(\d+)(?:\.\d+){0,2}", text)
    if m:
        return int(m.group(1))
    m = re.fullmatch(r"cu(\d{2,4})", text)
    if m:
        return int(m.group(1)[:-1])  # cu92 -> 9, cu118 -> 11, cu130 -> 13
    raise MemprofUserError(f"bad CUDA version {cuda_version!r}; give e.g. '12.4', '13.0' or 'cu124'")


def parse_cuda_version(cuda_version: str) -> tuple[int, int]:
    """(major, minor) from "11.7", "12", "12.4.1" or a wheel tag "cu117" / "cu92" (minor 0 if absent)."""
    major = parse_cuda_major(cuda_version)
    text = cuda_version.strip().lower()
    m = re.fullmatch(r"\d+\.(\d+)(?:\.\d+)?", text)
    if m:
        return major, int(m.group(1))
    m = re.fullmatch(r"cu\d*?(\d)", text)  # the wheel tag's last digit is the minor version
    return major, int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------- CUDA releases

# Every CUDA toolkit release (major, minor) from 8.0 on, as NVIDIA's CUDA Toolkit Archive lists them
# (https://developer.nvidia.com/cuda-toolkit-archive); there is no 12.7. The figures of
# profiles/cuda_context.json span 8.0 (K80, torch 0.4) to 13.0.
CUDA_RELEASES: tuple[tuple[int, int], ...] = (
    (8, 0),
    (9, 0), (9, 1), (9, 2),
    (10, 0), (10, 1), (10, 2),
    (11, 0), (11, 1), (11, 2), (11, 3), (11, 4), (11, 5), (11, 6), (11, 7), (11, 8),
    (12, 0), (12, 1), (12, 2), (12, 3), (12, 4), (12, 5), (12, 6), (12, 8), (12, 9),
    (13, 0), (13, 1),
)  # fmt: skip
_CURRENT_MAJOR = CUDA_RELEASES[-1][0]


@dataclass(frozen=True)
class CudaVersion:
    """A CUDA version checked against the releases: `text` "12.4"; `note` a warning line or ""."""

    major: int
    minor: int
    note: str = ""

    @property
    def text(self) -> str:
        return f"{self.major}.{self.minor}"


def check_cuda_version(cuda_version: str) -> CudaVersion:
    """A released CUDA version ("12.4", "12.4.1", "cu124"), or a MemprofUserError naming the releases.

    A minor release of the current major newer than this table (13.2 while the table ends at 13.1) is
    accepted with a note: it may have shipped since; anything else not in CUDA_RELEASES is an error.
    """
    major, minor = parse_cuda_version(cuda_version)
    if (major, minor) in CUDA_RELEASES:
        return CudaVersion(major, minor)
    if major == _CURRENT_MAJOR and (major, minor) > CUDA_RELEASES[-1]:
        return CudaVersion(
            major,
            minor,
            f"CUDA {major}.{minor} is newer than the releases memprof knows (up to {CUDA_RELEASES[-1][0]}."
            f"{CUDA_RELEASES[-1][1]}); its context is estimated from CUDA {major}.x figures",
        )
    known = ", ".join(f"{a}.{b}" for a, b in CUDA_RELEASES)
    raise MemprofUserError(f"unknown CUDA version {cuda_version!r}; CUDA releases: {known}")


# ---------------------------------------------------------------------------- architectures by release

# The first CUDA toolkit that compiles for a compute capability, and the first that no longer does
# (CUDA Toolkit release notes: sm_89 / sm_90 arrive in 11.8, sm_100 / sm_101 / sm_120 in 12.8, sm_103
# / sm_121 in 12.9, sm_110 in 13.0 (sm_101 renamed); Kepler sm_35 / sm_37 are removed in 12.0 and
# Maxwell, Pascal and Volta (sm_50 .. sm_72) in 13.0; "offline compilation and library support for
# these architectures have been removed"). A PyTorch built with such a CUDA has no kernel for the GPU:
# torch.cuda's _check_capability / _check_cubins warn ("... with CUDA capability sm_90 is not
# compatible with the current PyTorch installation") and the first kernel fails with "no kernel
# image is available for execution on the device".
_ARCH_SUPPORT: dict[tuple[int, int], tuple[tuple[int, int], tuple[int, int] | None]] = {
    (3, 5): ((5, 0), (12, 0)),
    (3, 7): ((6, 5), (12, 0)),
    (5, 0): ((6, 0), (13, 0)),
    (5, 2): ((6, 5), (13, 0)),
    (5, 3): ((7, 0), (13, 0)),
    (6, 0): ((8, 0), (13, 0)),
    (6, 1): ((8, 0), (13, 0)),
    (6, 2): ((8, 0), (13, 0)),
    (7, 0): ((9, 0), (13, 0)),
    (7, 2): ((10, 0), (13, 0)),
    (7, 5): ((10, 0), None),
    (8, 0): ((11, 0), None),
    (8, 6): ((11, 1), None),
    (8, 7): ((11, 4), None),
    (8, 9): ((11, 8), None),
    (9, 0): ((11, 8), None),
    (10, 0): ((12, 8), None),
    (10, 1): ((12, 8), (13, 0)),
    (10, 3): ((12, 9), None),
    (11, 0): ((13, 0), None),
    (12, 0): ((12, 8), None),
    (12, 1): ((12, 9), None),
}


def cuda_supports(compute_capability: Any, cuda_version: str) -> str:
    """ "" when CUDA `cuda_version` builds kernels for the GPU, else why not (one clause)."""
    cc = parse_compute_capability(compute_capability)
    cuda = parse_cuda_version(cuda_version)
    support = _ARCH_SUPPORT.get(cc)
    if support is None:
        return ""  # an architecture this table does not list: no claim either way
    first, removed = support
    sm = f"sm_{cc[0]}{cc[1]}"
    if cuda < first:
        return f"{sm} needs CUDA {first[0]}.{first[1]} or newer (CUDA {cuda[0]}.{cuda[1]} has no kernels for it)"
    if removed is not None and cuda >= removed:
        return f"CUDA {removed[0]}.{removed[1]} removed {sm} (CUDA {cuda[0]}.{cuda[1]} has no kernels for it)"
    return ""
