"""The live profiler: measured memory of real training, in the vocabulary of an estimate.

`track` (context manager) and `profile` (decorator) open one `Session`; its record is a `Profile`.
`Profile` (reading, saving, loading, rendering a record) needs no torch; the session does, so torch is
imported on first use of `track`, `profile` or `Session`: `memprof report PROFILE.json` starts without it.
"""
from __future__ import annotations

import importlib
from typing import Any

from memprof.profiler.profile import SCHEMA, Profile

__all__ = ["track", "profile", "Profile", "Session", "ProfiledFunction", "MODES", "SCHEMA"]


def track(*args: Any, **kwargs: Any) -> Any:
    """Profile the code inside `with memprof.track(model, optimizer) as run:` (see `api.track`)."""
    from memprof.profiler.api import track as _track
    return _track(*args, **kwargs)


def profile(*args: Any, **kwargs: Any) -> Any:
    """Decorate a training-step function; each call is profiled (see `api.profile`).

    Defined here, after the `memprof.profiler.profile` submodule is imported, so that this name is
    the decorator and not the module."""
    from memprof.profiler.api import profile as _profile
    return _profile(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("MODES", "ProfiledFunction", "Session"):
        return getattr(importlib.import_module("memprof.profiler.api"), name)
    raise AttributeError(f"module 'memprof.profiler' has no attribute {name!r}")
