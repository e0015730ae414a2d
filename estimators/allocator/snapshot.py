"""Read CUDA memory snapshots safely and replay their allocation trace through the simulator.

A snapshot is what `torch.cuda.memory._dump_snapshot(path)` pickles: a plain dict
    {"segments": [...], "device_traces": [[entry, ...] per device], "allocator_settings": {...},
     "external_annotations": [...]}
(torch/csrc/cuda/memory_snapshot.cpp). Trace entries are dicts with "action" in alloc,
free_requested, free_completed, segment_alloc, segment_free, segment_map, segment_unmap, oom,
snapshot, user_defined; "addr" (or "device_free" for oom), "size", "stream", "time_us" and
optionally "frames". An alloc entry holds the size the caller asked for (before rounding); a
segment entry holds the bytes cudaMalloc'd / freed / mapped / unmapped - the ground truth the
simulator's own segment events are compared with.

The file is unpickled with a loader that refuses every class or function reference, so a foreign
or malicious pickle cannot run code: a real snapshot holds only dicts, lists, strings and numbers.
"""

from __future__ import annotations

import difflib
import io
import os
import pickle
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..errors import MemprofUserError
from ._files import read_bytes
from .config import AllocatorConfig, parse_alloc_conf
from .simulator import Event, SimResult, simulate

# a snapshot as torch pickles it (see above): plain dicts, lists, strings and numbers
Snapshot: TypeAlias = dict[str, Any]

_SEGMENT_ACTIONS = ("segment_alloc", "segment_free", "segment_map", "segment_unmap")
_RELEASE_ACTIONS = ("segment_free", "segment_unmap")
# what follows the releases of a retry inside malloc: the retried cudaMalloc (or map) or the OOM;
# releases followed by anything else come from torch.cuda.empty_cache()
_MALLOC_ACTIONS = ("segment_alloc", "segment_map", "oom")
_SAFE_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
}
_HOW_TO_RECORD = (
    "record one with torch.cuda.memory._record_memory_history() before running, "
    "then torch.cuda.memory._dump_snapshot(path)"
)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise _ForeignObject(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _ForeignObject("a persistent id (torch.save file?)")


class _ForeignObject(Exception):
    pass


def load_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """The snapshot dict in `path`; MemprofUserError (one line) if it is missing, corrupt or foreign."""
    name, data = read_bytes(path, "snapshot", "a snapshot pickle")
    try:
        snapshot: Snapshot = _PlainUnpickler(io.BytesIO(data)).load()  # checked below
    except _ForeignObject as exc:
        raise MemprofUserError(
            f"{name} is not a CUDA memory snapshot: it references {exc}; memprof reads only the plain "
            f"pickles written by torch.cuda.memory._dump_snapshot"
        ) from None
    except Exception as exc:  # any unpickling failure: truncated, not a pickle, wrong protocol...
        raise MemprofUserError(
            f"{name} is not a readable pickle ({type(exc).__name__}: {_short(exc)}); expected a snapshot "
            f"written by torch.cuda.memory._dump_snapshot"
        ) from None
    check_snapshot(snapshot, name)
    return snapshot


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else "no detail"
    return text[:120]


def check_snapshot(snapshot: Any, name: str = "snapshot") -> None:
    """Raise MemprofUserError unless `snapshot` has the structure torch's snapshots have."""
    if not isinstance(snapshot, dict) or "segments" not in snapshot:
        kind = type(snapshot).__name__
        keys = f" with keys {sorted(map(str, snapshot))[:6]}" if isinstance(snapshot, dict) else ""
        raise MemprofUserError(
            f"{name} is not a CUDA memory snapshot: found a {kind}{keys}, expected a dict with 'segments' "
            f"and 'device_traces' as written by torch.cuda.memory._dump_snapshot"
        )
    traces = snapshot.get("device_traces")
    if not isinstance(traces, list) or not all(isinstance(t, list) for t in traces):
        raise MemprofUserError(f"{name} has no 'device_traces' list; {_HOW_TO_RECORD}")
    for trace in traces:
        for entry in trace:
            if not isinstance(entry, dict) or "action" not in entry:
                raise MemprofUserError(
                    f"{name} is not a CUDA memory snapshot: trace entries must be dicts with an 'action'"
                )


def snapshot_conf(snapshot: Snapshot) -> str | None:
    """The PYTORCH_CUDA_ALLOC_CONF recorded in the snapshot, if any."""
    settings = snapshot.get("allocator_settings")
    if isinstance(settings, dict):
        for key in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
            value = settings.get(key)
            if isinstance(value, str):
                return value
    return None


def pick_device(snapshot: Snapshot, device: int | None = None) -> int:
    """`device` if given (checked), else the device whose trace holds the most alloc entries."""
    traces = snapshot["device_traces"]
    if device is not None:
        if not 0 <= device < len(traces):
            raise MemprofUserError(
                f"device {device} is not in the snapshot; it holds traces for devices 0..{len(traces) - 1}"
            )
        return device
    counts = [sum(1 for e in t if e.get("action") == "alloc") for t in traces]
    if not counts or max(counts) == 0:
        raise MemprofUserError(f"the snapshot holds no allocation trace; {_HOW_TO_RECORD}")
    return counts.index(max(counts))


@dataclass
class TraceEvents:
    """A device trace turned into simulator events, with what the trace itself says."""

    events: list[Event]
    segment_events: list[tuple[str, int]]  # (action, bytes) in trace order
    unmatched_frees: int  # frees of blocks allocated before the trace window
    ooms: int
    empty_cache_calls: int


def snapshot_events(snapshot: Snapshot, device: int | None = None) -> TraceEvents:
    """Simulator events for one device's trace (alloc, free_requested/free, empty_cache)."""
    trace = snapshot["device_traces"][pick_device(snapshot, device)]
    events: list[Event] = []
    segments: list[tuple[str, int]] = []
    live: dict[int, int] = {}  # address -> event id
    requested_only: set[int] = set()  # addresses whose free_requested had no alloc in the window
    unmatched = ooms = empty_cache = 0
    next_id = 0
    n = len(trace)
    for i, entry in enumerate(trace):
        action = entry.get("action")
        try:
            if action == "alloc":
                addr = entry["addr"]
                events.append(("alloc", next_id, int(entry["size"]), entry.get("stream", 0)))
                live[addr] = next_id
                next_id += 1
            elif action == "free_requested":
                ident = live.get(entry["addr"])
                if ident is None:
                    requested_only.add(entry["addr"])
                    unmatched += 1
                else:
                    events.append(("free_requested", ident))
            elif action == "free_completed":
                ident = live.pop(entry["addr"], None)
                if ident is not None:
                    events.append(("free", ident))
                elif entry["addr"] in requested_only:
                    requested_only.discard(entry["addr"])
                else:
                    unmatched += 1
            elif action in _SEGMENT_ACTIONS:
                segments.append((action, int(entry["size"])))
                if action in _RELEASE_ACTIONS and (i + 1 == n or trace[i + 1].get("action") not in _RELEASE_ACTIONS):
                    # end of a run of releases: inside malloc (a retry) or an explicit empty_cache()?
                    following = trace[i + 1].get("action") if i + 1 < n else None
                    if following not in _MALLOC_ACTIONS:
                        events.append(("empty_cache",))
                        empty_cache += 1
            elif action == "oom":
                ooms += 1
        except (KeyError, TypeError, ValueError) as exc:
            raise MemprofUserError(
                f"trace entry {i} ({action!r}) is malformed: {type(exc).__name__} {exc}; "
                f"expected 'addr', 'size' and 'stream' as torch writes them"
            ) from None
    return TraceEvents(events, segments, unmatched, ooms, empty_cache)


@dataclass
class ReplayReport:
    """A snapshot replay: the simulation and how its segment events compare with the trace's."""

    result: SimResult
    device: int
    config_source: str  # "--alloc-conf", "snapshot" or "default"
    trace: TraceEvents
    segments_matching: int
    snapshot_reserved: int  # reserved when the snapshot was taken (sum of segments)
    snapshot_allocated: int

    @property
    def segments_exact(self) -> bool:
        sim = self.result.segment_events or []
        return sim == self.trace.segment_events

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["device"] = self.device
        out["config_source"] = self.config_source
        out["trace"] = {
            "allocs": sum(1 for e in self.trace.events if e[0] == "alloc"),
            "unmatched_frees": self.trace.unmatched_frees,
            "complete": self.trace.unmatched_frees == 0,
            "ooms": self.trace.ooms,
            "empty_cache_calls": self.trace.empty_cache_calls,
        }
        out["segment_agreement"] = {
            "trace_events": len(self.trace.segment_events),
            "simulated_events": len(self.result.segment_events or []),
            "matching": self.segments_matching,
            "exact": self.segments_exact,
        }
        out["snapshot"] = {"reserved": self.snapshot_reserved, "allocated": self.snapshot_allocated}
        return out


def count_matching(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """How many events of two sequences line up (longest matching blocks, in order)."""
    if a == b:
        return len(a)
    if len(a) * len(b) > 50_000_000:  # keep it linear on huge traces: compare position by position
        return sum(1 for x, y in zip(a, b) if x == y)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())


def replay_snapshot(
    snapshot: Snapshot,
    config: AllocatorConfig | str | None = None,
    capacity: int | None = None,
    device: int | None = None,
) -> ReplayReport:
    """Replay a snapshot's trace. Without `config`, the settings recorded in the snapshot are used."""
    source = "--alloc-conf"
    if config is None:
        recorded = snapshot_conf(snapshot)
        source = "snapshot" if recorded is not None else "default"
        try:
            config = parse_alloc_conf(recorded)
        except MemprofUserError:
            source = "default (snapshot settings not simulable)"
            config = parse_alloc_conf(None)
    elif isinstance(config, str):
        config = parse_alloc_conf(config)
    dev = pick_device(snapshot, device)
    trace = snapshot_events(snapshot, dev)
    result = simulate(trace.events, config, capacity, record_segments=True)
    segs = [s for s in snapshot.get("segments", []) if isinstance(s, dict) and s.get("device", dev) == dev]
    return ReplayReport(
        result=result,
        device=dev,
        config_source=source,
        trace=trace,
        segments_matching=count_matching(trace.segment_events, result.segment_events or []),
        snapshot_reserved=sum(int(s.get("total_size", 0)) for s in segs),
        snapshot_allocated=sum(int(s.get("allocated_size", 0)) for s in segs),
    )
