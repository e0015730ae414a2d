"""The live profiler: measured memory of real training, in the vocabulary of an estimate.

`track` (context manager) and `profile` (decorator) open one `Session` (memprof.profiler.api); its
record is a `Profile` (memprof.profiler.record). `Profile` (reading, saving, loading, rendering a
record) needs no torch; the session does, so the names of `api` are loaded on first use
(`__getattr__` below): `memprof report PROFILE.json` starts without torch. No submodule is named
like a public function, so `memprof.profiler.profile` is always the decorator.
"""

from __future__ import annotations

import importlib
from typing import Any

from memprof.profiler.record import SCHEMA, Profile

__all__ = ["MODES", "SCHEMA", "Profile", "ProfiledFunction", "Session", "profile", "track"]

# names defined by memprof.profiler.api, which imports torch: loaded on first use
_API = frozenset(("MODES", "ProfiledFunction", "Session", "profile", "track"))


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("memprof.profiler.api"), name)
    raise AttributeError(f"module 'memprof.profiler' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
