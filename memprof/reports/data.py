"""The numbers behind each figure, shaped from plain records; no matplotlib here.

Inputs are the records memprof already writes: an estimate dict (`Estimate.to_dict()`, what
`memprof estimate --format json` prints), a profile dict (`Profile.to_dict()`), optimizer rows
(`memprof.commands.optimizers.optimizer_rows`). A figure draws exactly what these functions return,
so tests check the drawing against them and notebooks can print them beside the picture.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.vocabulary import CATEGORIES

SWEEP_AXES = ("batch_size", "seq_len")
# which peak figure a sweep draws, best first: what NVML would show, then reserved, then allocated
PEAK_MEASURES = ("device_total", "reserved", "allocated")


def comparison_bars(profile: dict[str, Any], estimate: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bytes by category at the peak, measured (and predicted): the stacked bars' segments.

    Returns {"categories": [...], "bars": {"predicted": {cat: bytes|None}, "measured": {...}},
    "phases": {"predicted": phase, "measured": phase}}. A category is listed when either side has a
    figure for it; None means that side did not model/measure it (drawn as no segment, never as 0).
    """
    bars: dict[str, dict[str, int | None]] = {}
    phases: dict[str, str | None] = {}
    if estimate is not None:
        bars["predicted"] = dict(estimate["peak"].get("by_category") or {})
        phases["predicted"] = estimate["peak"].get("phase")
    bars["measured"] = dict(profile["peak"].get("by_category") or {})
    phases["measured"] = profile["peak"].get("phase")
    categories = [c for c in CATEGORIES if any(b.get(c) is not None for b in bars.values())]
    return {
        "categories": categories,
        "bars": {name: {c: b.get(c) for c in categories} for name, b in bars.items()},
        "phases": phases,
    }


def measured_timeline(profile: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The profile's timeline points ({seq, phase, allocated, by_category}); None when not recorded
    (stats mode, or a profile saved before timelines existed).

    The leading run of points outside any phase is the profiler registering the storages that
    existed before the region (parameters, states, the batch): it is kept as its last point, the
    memory the region started from.
    """
    points = list(profile.get("timeline") or [])
    first = next((i for i, p in enumerate(points) if p.get("phase") is not None), len(points))
    points = points[max(first - 1, 0) :]
    return points or None


def predicted_timeline(estimate: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The estimate's simulated step ({phase, label, by_category} per segment), or None."""
    if estimate is None:
        return None
    points = estimate.get("timeline")
    return list(points) if points else None


def stacked_series(points: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Bytes per category along a timeline, for the categories that are ever non-zero, in order."""
    series = {c: [int(p["by_category"].get(c) or 0) for p in points] for c in CATEGORIES}
    return {c: v for c, v in series.items() if any(v)}


def phase_spans(phases: Iterable[str | None]) -> list[tuple[str | None, int, int]]:
    """Runs of one phase along a timeline: (phase, first index, last index)."""
    spans: list[tuple[str | None, int, int]] = []
    for i, phase in enumerate(phases):
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], i)
        else:
            spans.append((phase, i, i))
    return spans


def peak_sweep(
    model: Any,
    values: Sequence[int],
    *,
    axis: str = "batch_size",
    gpu_presets: Sequence[str] = (),
    optimizer: str = "adamw",
    precision: str = "bf16-mixed",
    **knobs: Any,
) -> dict[str, Any]:
    """Predicted peak memory of `model` as `axis` (batch_size or seq_len) takes `values`.

    gpu_presets: GPU preset names whose usable memory the figure draws as lines; `knobs` are the
    other arguments of `estimate` (`gpus` there is the data-parallel device count).

    Returns {"model", "axis", "values", "peaks", "measure", "gpus": [{name, memory, usable}]}.
    `measure` is the peak figure drawn, the first of PEAK_MEASURES every point has (device_total
    is what nvidia-smi would show; on a CPU estimate there is no context, so it equals reserved).
    """
    from memprof.estimators.estimation import estimate
    from memprof.estimators.models import ModelSpec, load_model

    if axis not in SWEEP_AXES:
        raise MemprofUserError(f"sweep axis {axis!r} is not one of {', '.join(SWEEP_AXES)}")
    if not values:
        raise MemprofUserError("a sweep needs at least one value")
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    records = [estimate(spec, optimizer, precision, **_point(axis, v), **knobs).to_dict() for v in values]
    measure = next((m for m in PEAK_MEASURES if all(r["peak"][m] is not None for r in records)), None)
    if measure is None:
        raise MemprofUserError(f"the estimate of {spec.name} has no peak figure yet; nothing to sweep")
    capacity = []
    for name in gpu_presets:  # the estimate resolves the preset and its usable memory (one rule, in one place)
        capacity.append(
            estimate(spec, optimizer, precision, **_point(axis, values[0]), gpu=name, **knobs).to_dict()["gpu"]
        )
    return {
        "model": spec.name,
        "axis": axis,
        "values": list(values),
        "peaks": [r["peak"][measure] for r in records],
        "measure": measure,
        "settings": records[0]["settings"],
        "gpus": [{"name": g["name"], "memory": g["memory"], "usable": g["usable"]} for g in capacity],
    }


def _point(axis: str, value: int) -> dict[str, Any]:
    """The keyword argument of one point of a sweep (its swept knob)."""
    return {axis: value}


def largest_fitting(sweep: dict[str, Any]) -> dict[str, int | None]:
    """For each GPU of a sweep, the largest swept value whose peak fits its usable memory (or None)."""
    out: dict[str, int | None] = {}
    for gpu in sweep["gpus"]:
        fitting = [v for v, peak in zip(sweep["values"], sweep["peaks"]) if peak <= gpu["usable"]]
        out[gpu["name"]] = max(fitting) if fitting else None
    return out


def family_groups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Optimizer rows grouped by taxonomy family, keeping the rows' order (family order first)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["family"], []).append(row)
    return list(groups.items())
