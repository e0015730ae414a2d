"""memprof: estimate and measure the GPU memory of PyTorch training.

    >>> import memprof
    >>> memprof.estimate("gpt2-1.5b", "adamw").record.peak.device_total    # predicted, no torch
    >>> with memprof.track(model, optimizer) as run: ...                   # measured
    >>> memprof.compare(estimate, run)                                      # side by side
    >>> memprof.trace(workload_factory, "adamw").record                     # any model, on fake tensors

The analytic side (`memprof.estimators`) never imports torch; the profiler does. Names that need
torch (or pandas) are loaded on first use, so `import memprof` stays as fast as the CLI's estimate
path. See docs/architecture.md for how the pieces fit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memprof._version import __version__
from memprof.estimators.errors import (
    MemprofError,
    MemprofUserError,
    ParameterError,
    RecordError,
    UnknownNameError,
    UserCodeError,
)
from memprof.estimators.records import EstimateRecord

if TYPE_CHECKING:
    from memprof.comparison import compare
    from memprof.estimators.records import ProfileRecord
    from memprof.predict import estimate, fit
    from memprof.profiler import Profile, profile, track
    from memprof.tracer import trace
    from memprof.workload import Workload

# public name -> module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    "estimate": "memprof.predict",
    "fit": "memprof.predict",
    "track": "memprof.profiler",
    "profile": "memprof.profiler",
    "Profile": "memprof.profiler",
    "compare": "memprof.comparison",
    "ProfileRecord": "memprof.estimators.records",
    "trace": "memprof.tracer",
    "Workload": "memprof.workload",
}

__all__ = [
    "EstimateRecord",
    "MemprofError",
    "MemprofUserError",
    "ParameterError",
    "Profile",
    "ProfileRecord",
    "RecordError",
    "UnknownNameError",
    "UserCodeError",
    "Workload",
    "__version__",
    "compare",
    "estimate",
    "fit",
    "profile",
    "trace",
    "track",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memprof' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
