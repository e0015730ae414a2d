"""The live profiler: measured memory of real training, in the vocabulary of an estimate.

`track` (context manager) and `profile` (decorator) open one `Session`; its record is a `Profile`.
This package imports torch; `import memprof` does not import it until one of these names is used.
"""
from __future__ import annotations

from memprof.profiler.api import MODES, ProfiledFunction, Session, profile, track
from memprof.profiler.profile import SCHEMA, Profile

__all__ = ["track", "profile", "Profile", "Session", "ProfiledFunction", "MODES", "SCHEMA"]
