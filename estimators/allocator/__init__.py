"""Simulation of PyTorch's CUDA caching allocator: rounding, pools, segments, splits, retries, OOM.

Pure Python (no torch). Feed it allocation events - from a memory snapshot, a saved profile's
timeline (profile_replay) or the estimator's own (training.simulate_training_step) - and read peak
allocated/reserved, fragmentation and retries, or ask which PYTORCH_CUDA_ALLOC_CONF would help
(what_if).
"""
from .config import AllocatorConfig, merge_alloc_conf, parse_alloc_conf
from .profile_replay import ProfileReplay, load_profile_timeline, replay_profile
from .simulator import CachingAllocatorSimulator, OutOfMemory, SimResult, simulate
from .snapshot import ReplayReport, load_snapshot, replay_snapshot, snapshot_events
from .timeline import device_events, devices_in
from .training import TrainingSimulation, simulate_training_step, states_per_parameter, training_events
from .whatif import WhatIf, min_capacity, what_if

__all__ = [
    "AllocatorConfig", "parse_alloc_conf", "merge_alloc_conf",
    "CachingAllocatorSimulator", "SimResult", "OutOfMemory", "simulate",
    "load_snapshot", "snapshot_events", "replay_snapshot", "ReplayReport",
    "what_if", "WhatIf", "min_capacity", "device_events", "devices_in",
    "load_profile_timeline", "replay_profile", "ProfileReplay",
    "simulate_training_step", "TrainingSimulation", "training_events", "states_per_parameter",
]
