"""Predicted vs measured: one estimate and one profile side by side, in the shared vocabulary.

    >>> table = memprof.compare(estimate("gpt2-124m", device="cpu", ...), run)   # run: a Profile
    >>> table.loc[("peak", "allocated"), "error_pct"]

The frame is indexed by (scope, category):
- scope "model_states": parameters, gradients, optimizer_states and their total, the steady-state
  sizes (exact on both sides: they must agree to the byte);
- scope "peak": the 7 categories live at the peak moment, then the totals `allocated` (live tensor
  bytes, the figure both sides can measure on a CPU), `reserved` and `device_total`.
Columns: predicted, measured (integer bytes or missing), error_bytes (predicted - measured),
error_pct (of measured), note (why a side is missing, or what to know about the row). A missing
figure is never replaced by 0: an unmodelled category shows as missing with a note.

Works on plain dicts (an `Estimate.to_dict()`, a `Profile.to_dict()` or a saved profile's path) so
that saved files compare without the objects that made them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.vocabulary import CATEGORIES, MODEL_STATE_CATEGORIES, Category

__all__ = ["compare", "comparison_frame", "format_comparison", "frame_records", "check_same_model", "as_estimate_dict",
           "as_profile_dict", "COLUMNS"]

COLUMNS = ("predicted", "measured", "error_bytes", "error_pct", "note")
PEAK_TOTALS = ("allocated", "reserved", "device_total")
# figures a CPU run cannot have: there is no caching allocator and no CUDA context
_CUDA_ONLY = {Category.CUDA_CONTEXT.value, Category.FRAGMENTATION.value, "reserved", "device_total"}


def as_estimate_dict(estimate: Any) -> dict[str, Any]:
    """An Estimate, or its `to_dict()`, as the dict of DESIGN.md's estimate contract."""
    data = estimate.to_dict() if hasattr(estimate, "to_dict") and not isinstance(estimate, Mapping) else estimate
    if not isinstance(data, Mapping) or not isinstance(data.get("model_states"), Mapping) \
            or not isinstance(data.get("peak"), Mapping):
        raise MemprofUserError(
            f"expected a memprof Estimate or its to_dict() (with model_states and peak), "
            f"got {type(estimate).__name__}")
    return dict(data)


def as_profile_dict(profile: Any) -> dict[str, Any]:
    """A Profile, its `to_dict()`, or the path of a saved profile, as the profile dict.

    A dict from another schema version, or a corrupt one, raises MemprofUserError as
    `Profile.load` does for files.
    """
    from memprof.profiler.profile import SCHEMA, Profile

    if isinstance(profile, (str, os.PathLike)):
        return Profile.load(Path(profile)).to_dict()
    if isinstance(profile, Profile):
        return profile.to_dict()
    if not isinstance(profile, Mapping):
        raise MemprofUserError(f"expected a memprof Profile, its to_dict() or a saved profile's path, "
                               f"got {type(profile).__name__}")
    if profile.get("schema") != SCHEMA:
        raise MemprofUserError(f"not a memprof profile: schema is {profile.get('schema')!r}, "
                               f"expected {SCHEMA!r}")
    missing = [k for k in ("settings", "model_states", "peak") if not isinstance(profile.get(k), Mapping)]
    if missing:
        raise MemprofUserError(f"corrupt memprof profile: missing {', '.join(missing)}")
    return dict(profile)


def _device_kind(device: Any) -> str | None:
    return None if device is None else str(device).split(":")[0]


def check_same_model(est: Mapping[str, Any], prof: Mapping[str, Any]) -> None:
    """An estimate and a profile of different models (parameter counts differ) cannot be compared."""
    predicted = est.get("parameters")
    settings = prof.get("settings") or {}
    measured = settings.get("parameters")
    if predicted is None or measured is None or predicted == measured:
        return
    raise MemprofUserError(
        f"the estimate is of {est.get('model')!r} ({predicted:,} parameters) but the profile is of "
        f"{settings.get('model')!r} ({measured:,} parameters): compare an estimate and a profile of "
        f"the same model")


def compare(estimate: Any, profile: Any) -> Any:
    """Predicted (an Estimate or its dict) against measured (a Profile, its dict or a saved path).

    Returns a pandas DataFrame indexed by (scope, category) with COLUMNS; see the module docstring.
    """
    est = as_estimate_dict(estimate)
    prof = as_profile_dict(profile)
    check_same_model(est, prof)
    return comparison_frame(est, prof)


def _measured_note(key: str, prof: Mapping[str, Any]) -> str:
    if _device_kind(prof.get("device")) == "cpu" and key in _CUDA_ONLY:
        return "not measured on CPU"
    if prof.get("mode") == "stats":
        return "not measured in stats mode (no tensor attribution; on CPU no peak)"
    return "not measured"


def comparison_frame(est: Mapping[str, Any] | None, prof: Mapping[str, Any],
                     missing_prediction: str | Callable[[str, str], str] = "not modelled") -> Any:
    """The comparison DataFrame of an estimate dict (None: no prediction) and a profile dict.

    missing_prediction: the note for rows without a predicted figure, or a function of
    (scope, category) giving it (e.g. "optimizer 'Foo' is not in memprof's registry: ...").
    """
    why = missing_prediction if callable(missing_prediction) else (lambda scope, cat: missing_prediction)
    import pandas as pd

    est_ms = (est or {}).get("model_states") or {}
    est_peak = (est or {}).get("peak") or {}
    prof_ms = prof.get("model_states") or {}
    prof_peak = prof.get("peak") or {}
    est_device = _device_kind(((est or {}).get("settings") or {}).get("device"))
    prof_device = _device_kind(prof.get("device"))

    rows: list[tuple[str, str, int | None, int | None, str]] = []

    def add(scope: str, cat: str, p: int | None, m: int | None, no_p: str, no_m: str, note: str = "") -> None:
        notes = [n for n in (note, None if p is not None else no_p, None if m is not None else no_m,
                             "measured 0 B: no % error" if m == 0 and p not in (None, 0) else None) if n]
        rows.append((scope, cat, p, m, "; ".join(dict.fromkeys(notes))))

    for cat in MODEL_STATE_CATEGORIES:
        add("model_states", cat, est_ms.get(cat), prof_ms.get(cat), why("model_states", cat),
            _measured_note(cat, prof))
    p_total = _sum([est_ms.get(c) for c in MODEL_STATE_CATEGORIES])
    m_total = _sum([prof_ms.get(c) for c in MODEL_STATE_CATEGORIES])
    add("model_states", "total", p_total, m_total, why("model_states", "total"), "not measured")

    p_by = est_peak.get("by_category") or {}
    m_by = prof_peak.get("by_category") or {}
    for cat in CATEGORIES:
        add("peak", cat, p_by.get(cat), m_by.get(cat), why("peak", cat), _measured_note(cat, prof))
    phases = f"predicted in {est_peak.get('phase')}, measured in {prof_peak.get('phase')}" \
        if est_peak.get("phase") and prof_peak.get("phase") else ""
    for key in PEAK_TOTALS:
        add("peak", key, est_peak.get(key), prof_peak.get(key), why("peak", key), _measured_note(key, prof),
            phases if key == "allocated" else "")
    if est is not None and est_device and prof_device and est_device != prof_device:
        rows = [(s, c, p, m, "; ".join(filter(None, [n, f"estimate is for {est_device}, "
                                                      f"profile measured {prof_device}"])))
                for s, c, p, m, n in rows]

    frame = pd.DataFrame(rows, columns=["scope", "category", "predicted", "measured", "note"])
    frame["predicted"] = frame["predicted"].astype("Int64")
    frame["measured"] = frame["measured"].astype("Int64")
    frame["error_bytes"] = (frame["predicted"] - frame["measured"]).astype("Int64")
    frame["error_pct"] = [_pct(p, m) for p, m in zip(frame["predicted"], frame["measured"])]
    frame = frame.set_index(["scope", "category"])[list(COLUMNS)]
    frame.attrs.update(model=(est or {}).get("model") or (prof.get("settings") or {}).get("model"),
                       predicted_phase=est_peak.get("phase"), measured_phase=prof_peak.get("phase"),
                       device=prof.get("device"), estimate_settings=(est or {}).get("settings"))
    return frame


def _sum(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(values)


def _missing(v: Any) -> bool:
    import pandas as pd

    return v is None or (not isinstance(v, str) and bool(pd.isna(v)))


def _pct(p: Any, m: Any) -> float:
    """(predicted - measured) / measured in %; NaN when a side is missing or measured is 0 alone."""
    if _missing(p) or _missing(m):
        return math.nan
    if m == 0:
        return 0.0 if p == 0 else math.nan
    return 100.0 * (int(p) - int(m)) / int(m)


def frame_records(frame: Any) -> list[dict[str, Any]]:
    """The comparison as JSON-able rows: {scope, category, predicted, measured, error_bytes,
    error_pct, note}, with None where a figure is missing."""
    rows = []
    for (scope, cat), r in frame.iterrows():
        pct = r["error_pct"]
        rows.append({"scope": scope, "category": cat,
                     **{k: None if _missing(r[k]) else int(r[k]) for k in ("predicted", "measured", "error_bytes")},
                     "error_pct": None if math.isnan(pct) else round(float(pct), 4), "note": r["note"] or None})
    return rows


def format_comparison(frame: Any) -> str:
    """The comparison as a plain-text table (bytes in binary units, errors in % and bytes)."""
    from memprof.estimators.units import format_bytes

    def size(v: Any) -> str:
        return "-" if _missing(v) else format_bytes(int(v))

    def signed(v: Any) -> str:
        if _missing(v):
            return "-"
        return ("+" if int(v) >= 0 else "-") + format_bytes(abs(int(v)))

    head = ("scope", "category", "predicted", "measured", "error", "error %", "note")
    lines = [head]
    for (scope, cat), r in frame.iterrows():
        pct = r["error_pct"]
        lines.append((scope, cat, size(r["predicted"]), size(r["measured"]), signed(r["error_bytes"]),
                      "-" if isinstance(pct, float) and math.isnan(pct) else f"{pct:+.2f}%", r["note"] or ""))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = []
    for row in lines:
        cells = [str(c).ljust(w) if i in (0, 1, 6) else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
    model = frame.attrs.get("model")
    return (f"predicted vs measured: {model}\n" if model else "") + "\n".join(out)
