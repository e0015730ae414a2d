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

Reads records (`EstimateRecord`, `ProfileRecord`), anything holding one as `.record` (an estimate,
a `Profile`), their JSON dicts, or a saved profile's path, so that saved files compare without the
objects that made them. Depends on the records and the estimators only (no torch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from memprof.estimators.errors import MemprofUserError, RecordError
from memprof.estimators.records import EstimateRecord, ModelStates, ProfilePeak, ProfileRecord, read_profile
from memprof.estimators.records.profile import model_states_from_dict
from memprof.estimators.vocabulary import CATEGORIES, MODEL_STATE_CATEGORIES, Category

__all__ = [
    "COLUMNS",
    "PEAK_TOTALS",
    "as_estimate_record",
    "as_profile_record",
    "check_same_model",
    "compare",
    "comparison_frame",
    "format_comparison",
    "frame_records",
]

COLUMNS = ("predicted", "measured", "error_bytes", "error_pct", "note")
PEAK_TOTALS = ("allocated", "reserved", "device_total")
# figures a CPU run cannot have: there is no caching allocator and no CUDA context
_CUDA_ONLY = {Category.CUDA_CONTEXT.value, Category.FRAGMENTATION.value, "reserved", "device_total"}


# -- the two sides as records ------------------------------------------------------------------------


def as_estimate_record(estimate: Any) -> EstimateRecord:
    """An `EstimateRecord`, anything with one as `.record`, or an estimate JSON dict, as the record.

    A dict is read (and checked) by `EstimateRecord.from_dict`; anything else raises RecordError.
    """
    if isinstance(estimate, EstimateRecord):
        return estimate
    record = getattr(estimate, "record", None)
    if isinstance(record, EstimateRecord):
        return record
    data = estimate.to_dict() if hasattr(estimate, "to_dict") and not isinstance(estimate, Mapping) else estimate
    if not isinstance(data, Mapping):
        raise RecordError(
            f"expected a memprof Estimate or its to_dict() (with model_states and peak), got {type(estimate).__name__}"
        )
    try:
        return EstimateRecord.from_dict(data)
    except RecordError as exc:
        raise RecordError(f"expected a memprof Estimate or its to_dict(): {exc}") from None


def as_profile_record(profile: Any) -> ProfileRecord:
    """A `ProfileRecord`, anything with one as `.record` (a Profile), a profile JSON dict or the path of
    a saved profile, as the record. A dict is read (and checked) by `ProfileRecord.from_dict`: another
    schema version, or a corrupt one, raises RecordError as `Profile.load` does for files.
    """
    if isinstance(profile, ProfileRecord):
        return profile
    if isinstance(profile, (str, os.PathLike)):
        return read_profile(profile)
    record = getattr(profile, "record", None)
    if isinstance(record, ProfileRecord):
        return record
    if not isinstance(profile, Mapping):
        raise RecordError(
            f"expected a memprof Profile, its to_dict() or a saved profile's path, got {type(profile).__name__}"
        )
    return ProfileRecord.from_dict(profile)


@dataclass(frozen=True)
class _Measured:
    """What the frame reads of a profile."""

    model: str | None
    parameters: int | None
    device: str | None
    mode: str | None
    model_states: ModelStates
    peak: ProfilePeak
    states_missing_note: str = ""  # the run measured a step whose forward had no optimizer states


def _states_missing(settings: Any, phases: Any, model_states: ModelStates) -> str:
    """The note for one measured step (after any warm-up) whose forward ran before the optimizer
    created its states: the estimate is of the steady state, the measurement is not."""
    steps, warmup = settings.get("optimizer_steps"), settings.get("warmup_steps") or 0
    forward = ((phases or {}).get("forward") or {}).get("peak") or {}
    in_forward = (forward.get("by_category") or {}).get("optimizer_states")
    if not isinstance(steps, int) or steps - warmup != 1 or not model_states.optimizer_states or in_forward != 0:
        return ""
    return (
        "one profiled step: its optimizer states did not exist yet in forward and backward (created by "
        "step()), unlike the steady state predicted; profile with warmup=1 (memprof.track(..., warmup=1))"
    )


def _measured(profile: Any) -> _Measured:
    """The measured side of a comparison. A record (or a Profile) is read whole; a plain dict only
    for the parts the frame compares (so a dict holding just those compares too)."""
    if not isinstance(profile, Mapping):
        record = as_profile_record(profile)
        note = _states_missing(record.settings, record.phases, record.model_states)
        return _Measured(
            record.model, record.parameters, record.device, record.mode, record.model_states, record.peak, note
        )
    settings = profile.get("settings") or {}
    model, parameters = settings.get("model"), settings.get("parameters")
    device, mode = profile.get("device"), profile.get("mode")
    states = model_states_from_dict(profile.get("model_states") or {})
    return _Measured(
        model if isinstance(model, str) else None,
        parameters if isinstance(parameters, int) and not isinstance(parameters, bool) else None,
        None if device is None else str(device),
        mode if isinstance(mode, str) else None,
        states,
        ProfilePeak.from_dict(profile.get("peak") or {}),
        _states_missing(settings, profile.get("phases"), states),
    )


def _device_kind(device: Any) -> str | None:
    return None if device is None else str(device).split(":")[0]


def check_same_model(estimate: Any, profile: Any) -> None:
    """An estimate and a profile of different models (parameter counts differ) cannot be compared."""
    est = as_estimate_record(estimate)
    prof = _measured(profile)
    predicted, measured = est.parameters, prof.parameters
    if predicted is None or measured is None or predicted == measured:
        return
    raise MemprofUserError(
        f"the estimate is of {est.model!r} ({predicted:,} parameters) but the profile is of "
        f"{prof.model!r} ({measured:,} parameters): compare an estimate and a profile of "
        f"the same model"
    )


def compare(estimate: Any, profile: Any) -> Any:
    """Predicted (an estimate, its record or dict) against measured (a Profile, its record or dict,
    or a saved profile's path).

    Returns a pandas DataFrame indexed by (scope, category) with COLUMNS; see the module docstring.
    """
    est = as_estimate_record(estimate)
    prof = as_profile_record(profile)
    check_same_model(est, prof)
    return comparison_frame(est, prof)


# -- the frame ---------------------------------------------------------------------------------------


def _measured_note(key: str, prof: _Measured) -> str:
    if _device_kind(prof.device) == "cpu" and key in _CUDA_ONLY:
        return "not measured on CPU"
    if prof.mode == "stats":
        return "not measured in stats mode (no tensor attribution; on CPU no peak)"
    return "not measured"


def comparison_frame(
    estimate: Any,
    profile: Any,
    missing_prediction: str | Callable[[str, str], str] = "not modelled",
) -> Any:
    """The comparison DataFrame of an estimate (None: no prediction) and a profile.

    estimate: an `EstimateRecord`, anything with `.record`, or an estimate dict; profile: a
    `ProfileRecord`, a Profile, or a profile dict (of which only the compared parts are read).
    missing_prediction: the note for rows without a predicted figure, or a function of
    (scope, category) giving it (e.g. "optimizer 'Foo' is not in memprof's registry: ...").
    """
    import pandas as pd

    def why(scope: str, cat: str) -> str:
        return missing_prediction(scope, cat) if callable(missing_prediction) else missing_prediction

    est = None if estimate is None else as_estimate_record(estimate)
    prof = _measured(profile)
    est_ms = est.model_states.to_dict() if est is not None else {}
    est_peak = est.peak if est is not None else None
    prof_ms = prof.model_states.to_dict()
    prof_peak = prof.peak
    est_device = _device_kind(est.settings.device) if est is not None else None
    prof_device = _device_kind(prof.device)

    rows: list[tuple[str, str, int | None, int | None, str]] = []

    def add(scope: str, cat: str, p: int | None, m: int | None, no_p: str, no_m: str, note: str = "") -> None:
        notes = [
            n
            for n in (
                note,
                None if p is not None else no_p,
                None if m is not None else no_m,
                "measured 0 B: no % error" if m == 0 and p not in (None, 0) else None,
            )
            if n
        ]
        rows.append((scope, cat, p, m, "; ".join(dict.fromkeys(notes))))

    for cat in MODEL_STATE_CATEGORIES:
        add("model_states", cat, est_ms.get(cat), prof_ms.get(cat), why("model_states", cat), _measured_note(cat, prof))
    p_total = _sum([est_ms.get(c) for c in MODEL_STATE_CATEGORIES])
    m_total = _sum([prof_ms.get(c) for c in MODEL_STATE_CATEGORIES])
    add("model_states", "total", p_total, m_total, why("model_states", "total"), "not measured")

    p_by = est_peak.by_category if est_peak is not None else {}
    m_by = prof_peak.by_category
    for cat in CATEGORIES:
        add("peak", cat, p_by.get(cat), m_by.get(cat), why("peak", cat), _measured_note(cat, prof))
    p_phase = est_peak.phase if est_peak is not None else None
    m_phase = prof_peak.phase
    phases = f"predicted in {p_phase}, measured in {m_phase}" if p_phase and m_phase else ""
    p_totals = {} if est_peak is None else _totals(est_peak.allocated, est_peak.reserved, est_peak.device_total)
    m_totals = _totals(prof_peak.allocated, prof_peak.reserved, prof_peak.device_total)
    for key in PEAK_TOTALS:
        add(
            "peak",
            key,
            p_totals.get(key),
            m_totals.get(key),
            why("peak", key),
            _measured_note(key, prof),
            "; ".join(filter(None, [phases, prof.states_missing_note])) if key == "allocated" else "",
        )
    if est is not None and est_device and prof_device and est_device != prof_device:
        mismatch = f"estimate is for {est_device}, profile measured {prof_device}"
        rows = [(s, c, p, m, "; ".join(filter(None, [n, mismatch]))) for s, c, p, m, n in rows]

    frame = pd.DataFrame(rows, columns=["scope", "category", "predicted", "measured", "note"])
    frame["predicted"] = frame["predicted"].astype("Int64")
    frame["measured"] = frame["measured"].astype("Int64")
    frame["error_bytes"] = (frame["predicted"] - frame["measured"]).astype("Int64")
    frame["error_pct"] = [_pct(p, m) for p, m in zip(frame["predicted"], frame["measured"])]
    frame = frame.set_index(["scope", "category"])[list(COLUMNS)]
    frame.attrs.update(
        model=(est.model if est is not None else None) or prof.model,
        predicted_phase=p_phase,
        measured_phase=m_phase,
        device=prof.device,
        estimate_settings=est.to_dict()["settings"] if est is not None else None,
    )
    return frame


def _totals(allocated: int | None, reserved: int | None, device_total: int | None) -> dict[str, int | None]:
    return dict(zip(PEAK_TOTALS, (allocated, reserved, device_total)))


def _sum(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


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


# -- output ------------------------------------------------------------------------------------------


def frame_records(frame: Any) -> list[dict[str, Any]]:
    """The comparison as JSON-able rows: {scope, category, predicted, measured, error_bytes,
    error_pct, note}, with None where a figure is missing."""
    rows = []
    for (scope, cat), r in frame.iterrows():
        pct = r["error_pct"]
        rows.append(
            {
                "scope": scope,
                "category": cat,
                **{k: None if _missing(r[k]) else int(r[k]) for k in ("predicted", "measured", "error_bytes")},
                "error_pct": None if math.isnan(pct) else round(float(pct), 4),
                "note": r["note"] or None,
            }
        )
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
    lines: list[tuple[str, ...]] = [head]
    for (scope, cat), r in frame.iterrows():
        pct = r["error_pct"]
        lines.append(
            (
                scope,
                cat,
                size(r["predicted"]),
                size(r["measured"]),
                signed(r["error_bytes"]),
                "-" if isinstance(pct, float) and math.isnan(pct) else f"{pct:+.2f}%",
                r["note"] or "",
            )
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = []
    for row in lines:
        cells = [str(c).ljust(w) if i in (0, 1, 6) else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
    model = frame.attrs.get("model")
    notes = [f"note: {n}" for n in frame.attrs.get("notes") or []]
    return (f"predicted vs measured: {model}\n" if model else "") + "\n".join(out + notes)
