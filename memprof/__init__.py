"""memprof: estimate and measure the GPU memory of PyTorch training.

The analytic side (`memprof.estimators`) never imports torch; the profiler does. Names that need
torch are loaded on first use, so `import memprof` stays as fast as the CLI's estimate path.
"""
from __future__ import annotations

import importlib
from typing import Any

from memprof._version import __version__
from memprof.estimators.errors import MemprofUserError

# public name -> module that defines it (imported lazily)
_LAZY: dict[str, str] = {
    "track": "memprof.profiler",
    "profile": "memprof.profiler",
    "Profile": "memprof.profiler",
    "compare": "memprof.comparison",
}

__all__ = ["__version__", "MemprofUserError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memprof' has no attribute {name!r}")
