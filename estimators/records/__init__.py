"""The records every layer exchanges: plain, frozen, typed data with their JSON forms.

`EstimateRecord` is what an estimator predicts (analytic or traced); `ProfileRecord` is what the
profiler measured. Rendering, fit verdicts, comparison and reports read these and nothing richer.
See docs/architecture.md ("Records").
"""

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
