"""CUDA versions and compute capabilities as users and tools spell them, parsed once.

Kept apart from `overheads` (which simulates allocations) so that the kernel rules
(`estimators/kernels.py`), read by the activation replay, need nothing of the allocator.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import MemprofUserError

__all__ = ["parse_compute_capability", "parse_cuda_major", "parse_cuda_version"]


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
