"""The Profile: what one profiled region measured, around a `ProfileRecord` (docs/architecture.md).

A Profile holds one `memprof.estimators.records.ProfileRecord` (`record`, `to_dict()`), so that saving,
loading and comparing never need torch: this module imports none. The record's JSON is described
field by field in memprof/estimators/records/profile.py. The allocation timeline (`events`) is kept
beside the record as plain lists because it can be long, and is written only by
`save(path, events=True)`:

    events[i]       = ("alloc", storage_id, nbytes, device) | ("free", storage_id)
    event_phases[i] = the phase current at that event (None before the first forward)

While the region runs, the Session (memprof.profiler.api) has `attach`ed its live view: `to_dict()`
is what has been measured so far (`complete` is False). When the region ends the session calls
`finish(record)` and the profile is frozen.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from memprof._version import __version__
from memprof.estimators.errors import MemprofUserError, ParameterError, RecordError
from memprof.estimators.records import PROFILE_SCHEMA, ProfileRecord, read_profile
from memprof.estimators.vocabulary import CATEGORIES, MODEL_STATE_CATEGORIES, PHASES

__all__ = ["SCHEMA", "Profile", "atomic_write", "check_writable", "empty_record", "format_summary"]

SCHEMA = PROFILE_SCHEMA

Event = tuple[Any, ...]
_EMPTY = "this profile is empty: use it as `with memprof.track(...) as run:`"


class Profile:
    """Measured memory of one profiled region; `track()` yields one, `profile()` makes one per call.

    `Profile(record)` wraps a finished record (a `ProfileRecord` or its JSON dict); a Session creates
    an empty one, `attach`es its live view while the region runs and `finish`es it when it ends.
    """

    def __init__(
        self,
        record: ProfileRecord | Mapping[str, Any] | None = None,
        events: list[Event] | None = None,
        event_phases: list[str | None] | None = None,
    ) -> None:
        if record is not None and not isinstance(record, ProfileRecord):
            record = ProfileRecord.from_dict(record)
        if record is not None and events is None:  # a record read with its events keeps them here
            events = [tuple(e) for e in record.events or ()]
            event_phases = list(record.event_phases or ()) if event_phases is None else event_phases
        self._record: ProfileRecord | None = None if record is None else record.without_events()
        self._live: Callable[[], dict[str, Any]] | None = None
        self.events: list[Event] = events if events is not None else []
        self.event_phases: list[str | None] = event_phases if event_phases is not None else []
        self.memory_snapshot: Any = None  # torch.cuda.memory._snapshot() when recorded
        # the live step, for a comparison that traces it (memprof.profiler.capture.StepCapture; not saved)
        self.step_capture: Any = None

    # -- the session's side ---------------------------------------------------------------
    def attach(self, live: Callable[[], dict[str, Any]]) -> None:
        """Follow a running region: until `finish`, `to_dict()` is `live()` (a fresh dict)."""
        self._live = live

    def finish(self, record: ProfileRecord | None) -> None:
        """Freeze the profile on the region's final record (None: nothing could be recorded)."""
        if record is not None:
            self._record = record.without_events()
        self._live = None

    # -- reading --------------------------------------------------------------------------
    @property
    def record(self) -> ProfileRecord:
        """The measurements as a `ProfileRecord` (while the region runs: what is measured so far)."""
        if self._record is not None:
            return self._record
        if self._live is None:
            raise MemprofUserError(_EMPTY)
        return ProfileRecord.from_dict(self._live())

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-able data (a deep copy; editing it does not change the profile)."""
        if self._record is not None:
            return self._record.to_dict()
        if self._live is None:
            raise MemprofUserError(_EMPTY)
        return self._live()

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    @property
    def peak_allocated(self) -> int | None:
        return self.record.peak.allocated

    @property
    def error(self) -> dict[str, Any] | None:
        error: dict[str, Any] | None = self.to_dict().get("error")
        return error

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
        """Predicted vs measured as a pandas DataFrame (see memprof.comparison).

        Without `estimate`, the prediction is built from what the profiler observed: the model's
        Hugging Face config (else its parameter tensors: model states only), the optimizer's class
        and hyperparameters, precision from dtypes and autocast, batch and sequence from the
        inputs (memprof.comparison.observed). A part that cannot be predicted is reported as missing
        with the reason in the `note` column; the measured bytes are always there.
        """
        # the profiler's one import of the comparison package (.importlinter names this line)
        from memprof.comparison import compare, compare_observed

        if estimate is not None:
            return compare(estimate, self.record)
        return compare_observed(self.record, capture=self.step_capture)

    def summary(self) -> str:
        """A plain-text breakdown: bytes by category at the peak and at each phase's own peak."""
        return format_summary(self.to_dict())

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, events: bool = False) -> Path:
        """Write the profile as JSON atomically (a temporary file in the same folder, then rename).

        With events=True the allocation timeline is included. A recorded CUDA memory snapshot is
        written beside it as `<name>.snapshot.pickle` (open it at https://pytorch.org/memory_viz),
        FIRST, and the JSON then records its file name and sha256 (`memory_snapshot`): a crash
        between the two renames leaves the old JSON beside a new pickle, which `load_snapshot`
        refuses, never a JSON pointing at a snapshot of another run.
        """
        path = Path(path)
        data = self.to_dict()
        if events:
            data["events"] = [list(e) for e in self.events]
            data["event_phases"] = list(self.event_phases)
        if self.memory_snapshot is not None:
            payload = pickle.dumps(self.memory_snapshot)
            snapshot = path.with_suffix(".snapshot.pickle")
            atomic_write(snapshot, payload)
            data["memory_snapshot"] = {"file": snapshot.name, "sha256": hashlib.sha256(payload).hexdigest()}
        atomic_write(path, json.dumps(data, indent=1).encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Read a saved profile; anything that is not a memprof profile raises MemprofUserError."""
        return cls(read_profile(path))

    @staticmethod
    def load_snapshot(path: str | os.PathLike[str]) -> Any:
        """The CUDA memory snapshot saved with the profile at `path`, checked to be the one its JSON
        records (RecordError if it is missing or belongs to another save)."""
        path = Path(path)
        info = read_profile(path).extra.get("memory_snapshot")
        if not isinstance(info, dict) or not isinstance(info.get("file"), str):
            raise RecordError(f"{str(path)!r} records no memory snapshot")
        snapshot = path.parent / Path(info["file"]).name
        try:
            payload = snapshot.read_bytes()
        except OSError as exc:
            raise RecordError(f"the memory snapshot of {str(path)!r} cannot be read: {exc}") from None
        if hashlib.sha256(payload).hexdigest() != info.get("sha256"):
            raise RecordError(
                f"{str(snapshot)!r} does not belong to {str(path)!r} (its sha256 differs from the one the "
                "profile records: an interrupted save); save the profile again"
            )
        return pickle.loads(payload)

    def __repr__(self) -> str:
        try:
            d = self.to_dict()
        except MemprofUserError:
            return "Profile(<empty>)"
        return (
            f"Profile(model={d['settings'].get('model')!r}, peak={d['peak']['allocated']}, "
            f"phase={d['peak']['phase']!r}, complete={d.get('complete')})"
        )


def atomic_write(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through a temporary file in the same folder and a rename.

    The temporary is `.NAME.PID.RANDOM.tmp`; temporaries that an interrupted save to the same path
    left behind (their process is gone, or an older `.NAME.RANDOM.tmp`) are removed first.
    """
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise MemprofUserError(f"cannot save to {str(path)!r}: folder {str(directory)!r} does not exist")
    _remove_leftovers(directory, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
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


def _remove_leftovers(directory: Path, name: str) -> None:
    """Remove `.NAME.*.tmp` files of saves that cannot be running any more (not another live
    process's save in progress: those carry its pid)."""
    prefix = f".{name}."
    try:
        candidates = [e for e in os.scandir(directory) if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return
    for entry in candidates:
        middle = entry.name[len(prefix) : -len(".tmp")]
        pid_text, dot, _ = middle.partition(".")
        if dot and pid_text.isdigit():
            pid = int(pid_text)
            if pid == os.getpid() or _alive(pid):
                continue
        elif dot:
            continue  # not a name atomic_write makes
        try:
            os.unlink(entry.path)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(path: Any, parameter: str = "out") -> Path:
    """Check before a long run that a file (a profile, a record, a report) can be saved at `path` (ParameterError naming
    `parameter` if not): a file path in an existing, writable folder, outside /proc and /sys."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ParameterError(f"{{{parameter}}} must be a path to a .json file, got {path!r}", parameter)
    target = Path(path)
    resolved = Path(os.path.abspath(target))
    for pseudo in ("/proc", "/sys", "/dev"):
        if resolved == Path(pseudo) or Path(pseudo) in resolved.parents:
            raise ParameterError(
                f"{{{parameter}}} {str(path)!r} is under {pseudo}, which holds no files memprof can write",
                parameter,
            )
    if target.is_dir():
        raise ParameterError(
            f"{{{parameter}}} {str(path)!r} is a folder; give a file path such as profile.json", parameter
        )
    folder = resolved.parent
    if not folder.is_dir():
        raise ParameterError(f"{{{parameter}}} {str(path)!r}: folder {str(folder)!r} does not exist", parameter)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ParameterError(
            f"{{{parameter}}} {str(path)!r} cannot be written ({exc.strerror or exc})", parameter
        ) from None
    os.close(fd)
    os.unlink(probe)
    return target


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
        "model_states": dict.fromkeys(MODEL_STATE_CATEGORIES),
        "optimizer_state_breakdown": {},
        "peak": {
            "phase": None,
            "allocated": None,
            "reserved": None,
            "device_total": None,
            "by_category": dict.fromkeys(CATEGORIES),
            "detail": {},
        },
        "phases": dict.fromkeys(PHASES),
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


def format_summary(d: Mapping[str, Any]) -> str:
    """Render a profile record as a table (plain data in, text out)."""
    st = d["settings"]
    head = [
        f"memprof profile: {st.get('model') or 'no model seen'}"
        + (f" ({st['parameters']:,} parameters)" if st.get("parameters") is not None else "")
        + f", optimizer {st.get('optimizer') or '-'}, device {d.get('device')}, mode {d.get('mode')}",
        f"forward calls {st.get('forward_calls', 0)}, backward calls {st.get('backward_calls', 0)}, "
        f"optimizer steps {st.get('optimizer_steps', 0)}",
    ]
    cols = ["peak", *PHASES]
    rows = [("category", *[c if c != "peak" else f"at peak ({d['peak']['phase'] or '-'})" for c in cols])]
    for cat in CATEGORIES:
        vals = [d["peak"]["by_category"].get(cat)]
        for phase in PHASES:
            info = d["phases"].get(phase) or {}
            vals.append(((info.get("peak") or {}).get("by_category") or {}).get(cat))
        rows.append((cat, *[_fmt(v) for v in vals]))
    totals = [d["peak"]["allocated"]] + [
        ((d["phases"].get(p) or {}).get("peak") or {}).get("allocated") for p in PHASES
    ]
    rows.append(("allocated", *[_fmt(v) for v in totals]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = (
        head
        + [""]
        + ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    )
    ms = d["model_states"]
    lines += ["", "model states: " + ", ".join(f"{k} {_fmt(v)}" for k, v in ms.items())]
    for key in ("cuda", "nvml"):
        info = d.get(key) or {}
        if not info.get("available"):
            lines.append(f"{key}: unavailable ({info.get('reason')})")
    if d.get("error"):
        e = d["error"]
        lines.append(
            f"error: {e['type']} in {e.get('phase') or 'no phase'}"
            + (f" at {e['module']}" if e.get("module") else "")
            + f": {e['message'][:200]}"
        )
    return "\n".join(lines)
