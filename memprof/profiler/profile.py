"""The Profile: what one profiled region measured, as plain data (DESIGN.md, "Profile" contract).

A Profile wraps one JSON-able dict (`to_dict()`), so that saving, loading and comparing never need
torch. The allocation timeline (`events`) is kept beside it as a plain list because it can be long:

    events[i]       = ("alloc", storage_id, nbytes, device) | ("free", storage_id)
    event_phases[i] = the phase current at that event (None before the first forward)

Keys of the dict (sizes are integer bytes; None means "not measured here", never a guess):
    schema, memprof_version, mode ("attribution" | "stats"), device, complete
    settings      model, model_class, parameters, param_dtypes, optimizer, optimizer_class,
                  optimizer_defaults, input_shapes, autocast_dtype, forward_calls,
                  backward_calls, optimizer_steps; hf_config (the model's config.to_dict() or
                  None), attn_implementation, gradient_checkpointing, parameter_tensors
                  ([name, shape] of the trainable parameters)
    model_states  parameters, gradients, optimizer_states (largest seen in the region)
    optimizer_state_breakdown   bytes per state key ("exp_avg", "step", ...)
    peak          phase, allocated, reserved, device_total, by_category (the 7 categories),
                  detail (sub-buckets of `temporary`: inputs, buffers)
    phases        {phase: {calls, time_s, peak: {allocated, by_category}, created_bytes, cuda}}
                  created_bytes: bytes allocated in the phase by category at creation (all
                  devices; e.g. activations recomputed by checkpointing under backward)
    timeline      (attribution mode; None otherwise) live bytes of `device` through the region, as
                  [{seq, phase, allocated, by_category (the 5 tensor categories)}] in order: a
                  sample at each phase change and every N allocations/frees (N doubling so that
                  at most ~1024 points are kept), with the exact overall and per-phase peaks
                  merged in; seq orders points among the allocation events
    devices       (attribution mode) {device: {peak_allocated, peak_phase, by_category}} for every
                  device tensors lived on; `peak` describes `device` only
    cuda, nvml    {"available": bool, "reason": str | None, ...figures}
    environment   torch, python, platform, device_name, driver, cuda_version
    error         None, or {type, message, phase, module, live_by_category}
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

from memprof._version import __version__
from memprof.estimators.errors import MemprofUserError
from memprof.estimators.vocabulary import CATEGORIES, MODEL_STATE_CATEGORIES, PHASES

SCHEMA = "memprof.profile/1"


class Profile:
    """Measured memory of one profiled region; `track()` yields one, `profile()` makes one per call.

    While the region is still running, `to_dict()` reflects what has been measured so far
    (`complete` is False); after it ends the record is frozen.
    """

    def __init__(self, data: dict[str, Any] | None = None, events: list[tuple] | None = None,
                 event_phases: list[str | None] | None = None) -> None:
        self._data: dict[str, Any] | None = data
        self.events: list[tuple] = events if events is not None else []
        self.event_phases: list[str | None] = event_phases if event_phases is not None else []
        self.memory_snapshot: Any = None   # torch.cuda.memory._snapshot() when recorded
        self._live: Callable[[], dict[str, Any]] | None = None  # set by the running session

    # -- reading --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-able data (a deep copy; editing it does not change the profile)."""
        if self._data is None:
            if self._live is None:
                raise MemprofUserError("this profile is empty: use it as `with memprof.track(...) as run:`")
            return self._live()
        return json.loads(json.dumps(self._data))

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    @property
    def peak_allocated(self) -> int | None:
        return self.to_dict()["peak"]["allocated"]

    @property
    def error(self) -> dict[str, Any] | None:
        return self.to_dict().get("error")

    def to_frame(self) -> Any:
        """A long pandas DataFrame: one row per (scope, category) with its bytes.

        scope is "peak", one of the phases (that phase's own peak), or "model_states".
        """
        import pandas as pd

        d = self.to_dict()
        rows = []
        for cat in CATEGORIES:
            rows.append(("peak", d["peak"]["phase"], cat, d["peak"]["by_category"].get(cat)))
        for phase in PHASES:
            info = d["phases"].get(phase) or {}
            by_cat = (info.get("peak") or {}).get("by_category") or {}
            for cat in CATEGORIES:
                rows.append((phase, phase, cat, by_cat.get(cat)))
        for cat in MODEL_STATE_CATEGORIES:
            rows.append(("model_states", None, cat, d["model_states"].get(cat)))
        frame = pd.DataFrame(rows, columns=["scope", "phase", "category", "bytes"])
        frame["bytes"] = frame["bytes"].astype("Int64")
        return frame

    def compare(self, estimate: Any = None) -> Any:
        """Predicted vs measured as a pandas DataFrame (see memprof.compare).

        Without `estimate`, the prediction is built from what the profiler observed: the model's
        Hugging Face config (else its parameter tensors: model states only), the optimizer's class
        and hyperparameters, precision from dtypes and autocast, batch and sequence from the
        inputs (memprof.profiler.observed). A part that cannot be predicted is reported as missing
        with the reason in the `note` column; the measured bytes are always there.
        """
        if estimate is not None:
            from memprof.comparison import compare

            return compare(estimate, self)
        from memprof.profiler.observed import compare_observed

        return compare_observed(self.to_dict())

    def summary(self) -> str:
        """A plain-text breakdown: bytes by category at the peak and at each phase's own peak."""
        return format_summary(self.to_dict())

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, events: bool = False) -> Path:
        """Write the profile as JSON atomically (a temporary file in the same folder, then rename).

        With events=True the allocation timeline is included. A recorded CUDA memory snapshot is
        written beside it as `<name>.snapshot.pickle` (open it at https://pytorch.org/memory_viz).
        """
        path = Path(path)
        data = self.to_dict()
        if events:
            data["events"] = [list(e) for e in self.events]
            data["event_phases"] = list(self.event_phases)
        _atomic_write(path, json.dumps(data, indent=1).encode())
        if self.memory_snapshot is not None:
            _atomic_write(path.with_suffix(".snapshot.pickle"), pickle.dumps(self.memory_snapshot))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        """Read a saved profile; anything that is not a memprof profile raises MemprofUserError."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MemprofUserError(f"profile file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MemprofUserError(f"{str(path)!r} is not a memprof profile (not readable JSON: {exc})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise MemprofUserError(
                f"{str(path)!r} is not a memprof profile: schema is {found!r}, expected {SCHEMA!r}")
        missing = [k for k in ("settings", "model_states", "peak", "phases") if not isinstance(data.get(k), dict)]
        if missing:
            raise MemprofUserError(f"{str(path)!r} is a corrupt memprof profile: missing {', '.join(missing)}")
        events = [tuple(e) for e in data.pop("events", [])]
        phases = list(data.pop("event_phases", []))
        return cls(data, events, phases)

    def __repr__(self) -> str:
        try:
            d = self.to_dict()
        except MemprofUserError:
            return "Profile(<empty>)"
        return (f"Profile(model={d['settings'].get('model')!r}, peak={d['peak']['allocated']}, "
                f"phase={d['peak']['phase']!r}, complete={d.get('complete')})")


def _atomic_write(path: Path, payload: bytes) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise MemprofUserError(f"cannot save to {str(path)!r}: folder {str(directory)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())   # mkstemp makes it 0600; give it a normal file's mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def empty_record() -> dict[str, Any]:
    """The skeleton every profile starts from: all keys present, nothing measured."""
    return {
        "schema": SCHEMA,
        "memprof_version": __version__,
        "mode": None,
        "device": None,
        "complete": False,
        "settings": {},
        "model_states": {c: None for c in MODEL_STATE_CATEGORIES},
        "optimizer_state_breakdown": {},
        "peak": {"phase": None, "allocated": None, "reserved": None, "device_total": None,
                 "by_category": {c: None for c in CATEGORIES}, "detail": {}},
        "phases": {p: None for p in PHASES},
        "cuda": {"available": False, "reason": None},
        "nvml": {"available": False, "reason": None},
        "environment": {},
        "timeline": None,
        "duration_s": None,
        "error": None,
    }


def _fmt(n: int | None) -> str:
    from memprof.estimators.units import format_bytes

    return "-" if n is None else format_bytes(n)


def format_summary(d: dict[str, Any]) -> str:
    """Render a profile record as a table (plain data in, text out)."""
    st = d["settings"]
    head = [f"memprof profile: {st.get('model') or 'no model seen'}"
            + (f" ({st['parameters']:,} parameters)" if st.get("parameters") is not None else "")
            + f", optimizer {st.get('optimizer') or '-'}, device {d.get('device')}, mode {d.get('mode')}",
            f"forward calls {st.get('forward_calls', 0)}, backward calls {st.get('backward_calls', 0)}, "
            f"optimizer steps {st.get('optimizer_steps', 0)}"]
    cols = ["peak", *PHASES]
    rows = [("category", *[c if c != "peak" else f"at peak ({d['peak']['phase'] or '-'})" for c in cols])]
    for cat in CATEGORIES:
        vals = [d["peak"]["by_category"].get(cat)]
        for phase in PHASES:
            info = d["phases"].get(phase) or {}
            vals.append(((info.get("peak") or {}).get("by_category") or {}).get(cat))
        rows.append((cat, *[_fmt(v) for v in vals]))
    totals = [d["peak"]["allocated"]] + [((d["phases"].get(p) or {}).get("peak") or {}).get("allocated")
                                         for p in PHASES]
    rows.append(("allocated", *[_fmt(v) for v in totals]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = head + [""] + ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                           for r in rows]
    ms = d["model_states"]
    lines += ["", "model states: " + ", ".join(f"{k} {_fmt(v)}" for k, v in ms.items())]
    for key in ("cuda", "nvml"):
        info = d.get(key) or {}
        if not info.get("available"):
            lines.append(f"{key}: unavailable ({info.get('reason')})")
    if d.get("error"):
        e = d["error"]
        lines.append(f"error: {e['type']} in {e.get('phase') or 'no phase'}"
                     + (f" at {e['module']}" if e.get("module") else "") + f": {e['message'][:200]}")
    return "\n".join(lines)
