"""Predicted vs measured: an `EstimateRecord` and a `ProfileRecord` side by side (docs/architecture.md).

- `memprof.comparison.frame`: the comparison frame of an estimate and a profile, its text table and JSON
  rows (`compare`, `comparison_frame`, `format_comparison`, `frame_records`, `check_same_model`);
- `memprof.comparison.observed`: the estimate of what a profile observed (`observe`, `predict`,
  `Observed`, `compare_observed`), which `Profile.compare()` without an estimate uses.

Reads records and the estimators only: no torch, and nothing of the profiler (the profiler reaches this
package through one method, `Profile.compare()`). pandas is imported when a frame is built.
"""

from __future__ import annotations

from memprof.comparison.frame import (
    COLUMNS,
    PEAK_TOTALS,
    as_estimate_record,
    as_profile_record,
    check_same_model,
    compare,
    comparison_frame,
    format_comparison,
    frame_records,
)
from memprof.comparison.observed import (
    Observed,
    compare_observed,
    observe,
    observed_estimate,
    precision_of,
    predict,
    registry_optimizer,
)

__all__ = [
    "COLUMNS",
    "PEAK_TOTALS",
    "Observed",
    "as_estimate_record",
    "as_profile_record",
    "check_same_model",
    "compare",
    "compare_observed",
    "comparison_frame",
    "format_comparison",
    "frame_records",
    "observe",
    "observed_estimate",
    "precision_of",
    "predict",
    "registry_optimizer",
]
