"""The records every layer exchanges: plain, frozen, typed data with their JSON forms.

`EstimateRecord` is what an estimator predicts (analytic or traced); `ProfileRecord` is what the
profiler measured. Rendering, fit verdicts, comparison and reports read these and nothing richer.
See docs/architecture.md ("Records").
"""

from typing import TYPE_CHECKING, Any

from .estimate import (
    ContextFigure,
    EstimateLabels,
    EstimateRecord,
    EstimateSettings,
    GpuVerdict,
    ModelStates,
    Peak,
    TimelinePoint,
)

if TYPE_CHECKING:
    from .profile import (
        PROFILE_SCHEMA,
        AllocEvent,
        DevicePeak,
        FreeEvent,
        ProfileEvent,
        ProfilePeak,
        ProfilePoint,
        ProfileRecord,
        ProfileSettings,
        check_profile_schema,
        read_events,
        read_profile,
    )

# The profile record loads on first use: `memprof estimate` never reads a profile, and its start-up
# time is a product goal (benchmarks/cold_start.py).
_PROFILE_NAMES = frozenset(
    (
        "PROFILE_SCHEMA",
        "AllocEvent",
        "DevicePeak",
        "FreeEvent",
        "ProfileEvent",
        "ProfilePeak",
        "ProfilePoint",
        "ProfileRecord",
        "ProfileSettings",
        "check_profile_schema",
        "read_events",
        "read_profile",
    )
)


def __getattr__(name: str) -> Any:
    if name in _PROFILE_NAMES:
        from . import profile

        return getattr(profile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ContextFigure",
    "EstimateLabels",
    "EstimateRecord",
    "EstimateSettings",
    "GpuVerdict",
    "ModelStates",
    "Peak",
    "TimelinePoint",
    "PROFILE_SCHEMA",
    "AllocEvent",
    "DevicePeak",
    "FreeEvent",
    "ProfileEvent",
    "ProfilePeak",
    "ProfilePoint",
    "ProfileRecord",
    "ProfileSettings",
    "check_profile_schema",
    "read_events",
    "read_profile",
]
