"""Simulation of PyTorch's CUDA caching allocator: rounding, pools, segments, splits, retries, OOM.

Pure Python (no torch). Feed it allocation events - from a memory snapshot, a saved profile's
timeline (profile_replay) or the estimator's own (training.simulate_training_step) - and read peak
allocated/reserved, fragmentation and retries, or ask which PYTORCH_CUDA_ALLOC_CONF would help
(what_if).

The names below are loaded from their modules on first use, so that `memprof estimate` (which needs
only the simulator and the training replay) does not pay for reading snapshots and profiles.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module of this package that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("AllocatorConfig", "parse_alloc_conf", "merge_alloc_conf"), "config"),
    **dict.fromkeys(("CachingAllocatorSimulator", "SimResult", "OutOfMemory", "simulate"), "simulator"),
    **dict.fromkeys(("load_snapshot", "snapshot_events", "replay_snapshot", "ReplayReport"), "snapshot"),
    **dict.fromkeys(("what_if", "WhatIf", "min_capacity"), "whatif"),
    **dict.fromkeys(("device_events", "devices_in"), "timeline"),
    **dict.fromkeys(("load_profile_timeline", "replay_profile", "ProfileReplay"), "profile_replay"),
    **dict.fromkeys(
        ("simulate_training_step", "TrainingSimulation", "training_events", "states_per_parameter"), "training"
    ),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
