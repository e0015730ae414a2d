"""CUDA caching-allocator counters, read per phase.

At each phase change the peak counters (`max_memory_allocated/reserved`, which cover the phase that
just ended) are read and reset, so every phase gets its own peak without synchronising the device:
the allocator updates these counters on the host when an allocation is issued. cuBLAS is warmed up
before measuring, so its workspace (allocated through the caching allocator on first use) is part
of the baseline rather than of the first forward.
"""

from __future__ import annotations

from typing import Any

import torch

# name in the profile -> (key in memory_stats_as_nested_dict, pool "all", which figure)
_STAT_KEYS = {
    "max_memory_allocated": ("allocated_bytes", "peak"),
    "max_memory_reserved": ("reserved_bytes", "peak"),
    "memory_reserved": ("reserved_bytes", "current"),
    "inactive_split_bytes": ("inactive_split_bytes", "peak"),
    "active_bytes": ("active_bytes", "peak"),
}
_COUNTERS = ("num_alloc_retries", "num_ooms")


def cuda_device_of(device: torch.device | str | None) -> tuple[int | None, str | None]:
    """The CUDA device index to read counters for, or None with the reason."""
    if device is not None and torch.device(device).type != "cuda":
        return None, f"the profiled device is {torch.device(device).type}, not cuda"
    if not torch.cuda.is_available():
        return None, (
            f"torch.cuda.is_available() is False (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
        )
    if device is None:
        return None, "no CUDA tensors are being profiled"
    index = torch.device(device).index
    return (torch.cuda.current_device() if index is None else index), None


class CudaStats:
    """Per-phase allocator statistics of one CUDA device."""

    def __init__(self, index: int, *, record_snapshot: bool = False) -> None:
        self.index = index
        self.record_snapshot = record_snapshot
        self.phases: dict[str, dict[str, int]] = {}
        self._base: dict[str, int] = {}
        self.first: dict[str, int] = {}

    def start(self) -> None:
        dev = torch.device("cuda", self.index)
        with torch.cuda.device(dev):
            # warm up cuBLAS (handle + workspace) so it is not charged to the first forward
            a = torch.ones(16, 16, device=dev)
            (a @ a).sum().item()
            del a
            torch.cuda.synchronize(dev)
            if self.record_snapshot:
                torch.cuda.memory._record_memory_history(max_entries=100_000)
            stats = torch.cuda.memory_stats(dev)
            self._base = {k: int(stats.get(k, 0)) for k in _COUNTERS}
            self.first = {"allocated": torch.cuda.memory_allocated(dev), "reserved": torch.cuda.memory_reserved(dev)}
            torch.cuda.reset_peak_memory_stats(dev)

    def mark(self, ended_phase: str | None) -> None:
        """Close the counters of the phase that just ended (None: time before the first phase).

        One nested stats call per phase change (max_memory_allocated() and friends would each
        rebuild and flatten the whole dict).
        """
        dev = torch.device("cuda", self.index)
        stats = torch.cuda.memory_stats_as_nested_dict(dev)
        row = {name: int(stats.get(key, {}).get("all", {}).get(fig, 0)) for name, (key, fig) in _STAT_KEYS.items()}
        row.update({k: int(stats.get(k, 0)) - self._base.get(k, 0) for k in _COUNTERS})
        key = ended_phase or "setup"
        prev = self.phases.get(key)
        if prev is None:
            self.phases[key] = row
        else:
            for k, v in row.items():
                prev[k] = v if k in _COUNTERS else max(prev[k], v)
        torch.cuda.reset_peak_memory_stats(dev)

    def snapshot(self) -> Any:
        if not self.record_snapshot:
            return None
        try:
            return torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)

    def stop(self) -> None:
        if self.record_snapshot:
            torch.cuda.memory._record_memory_history(enabled=None)

    def summary(self) -> dict[str, Any]:
        rows = self.phases.values()
        out: dict[str, Any] = {
            "available": True,
            "reason": None,
            "device_index": self.index,
            "baseline": dict(self.first),
        }
        for k in _STAT_KEYS:
            out[k] = max((r[k] for r in rows), default=None)
        for k in _COUNTERS:
            out[k] = max((r[k] for r in rows), default=None)
        out["phases"] = {k: dict(v) for k, v in self.phases.items()}
        return out
