"""The tracer: the user's own training step run on fake tensors, measured by the profiler's tracker.

`trace(factory, optimizer=..., precision=..., device=...)` calls the factory (a function returning a
`memprof.Workload` or a Hugging Face model) inside `FakeTensorMode`, runs one real training step —
the user's model, inputs and loss, the real optimizer implementation — where every operator computes
shapes, dtypes and storage sizes but allocates nothing, and attributes every storage with the same
`StorageTracker` the live profiler uses (memprof/profiler/tracker.py). The result is the
`EstimateRecord` the analytic estimator builds, so rendering, fit verdicts and comparisons read it
unchanged. See docs/architecture.md ("The tracer").

The names below are loaded on first use: `memprof.validate` reads the optimizer table without
importing torch's fake-tensor machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Trace", "estimate_or_trace", "trace", "trace_preset", "traced_optimizer_rows"]

_API = frozenset(__all__)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("memprof.tracer.api"), name)
    raise AttributeError(f"module 'memprof.tracer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
