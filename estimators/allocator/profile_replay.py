"""Replay the allocation timeline of a saved memprof profile through the caching-allocator simulator.

`memprof.track(..., events=True)` records every storage the run allocates and frees, and
`Profile.save(path, events=True)` writes them into the profile JSON as ["alloc", storage_id, nbytes,
device] / ["free", storage_id]. One device's part of that timeline replayed here shows what the
caching allocator would reserve for it. A CPU run is replayed *as if on CUDA*: the same tensors,
allocated and freed in the same order, rounded and packed into segments as on a GPU - that is how a
CPU run predicts its CUDA reserved memory and fragmentation. (What the CPU kernels do differently -
dropout keeping its noise instead of a bool mask, another attention backend - is not translated.)

Reading stays torch-free: the file is checked by the profile record's own reader
(memprof.estimators.records.profile): memprof's schema tag, then an `events` list of well-formed
entries, then the rest of the record. Tensors that existed when the tracking began (parameters,
states) appear first, in the order the profiler registered them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import MemprofUserError, RecordError
from ..files import loads_json
from ..records.profile import EVENT_KEYS, PROFILE_SCHEMA, ProfileRecord, check_profile_schema, read_events
from ._files import read_bytes
from .config import AllocatorConfig, parse_alloc_conf
from .simulator import Event, SimResult, simulate
from .timeline import device_events, devices_in

_HOW_TO_SAVE = (
    "record it with memprof.track(model, optimizer, events=True) and save it with profile.save(path, events=True)"
)


def looks_like_json(head: bytes) -> bool:
    """Whether a file starting with `head` is JSON rather than a pickle (no pickle opens with { or [)."""
    text = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    return text[:1] in (b"{", b"[")


@dataclass
class ProfileTimeline:
    """A saved profile's allocation timeline and the record around it."""

    record: ProfileRecord  # the profile record without its events
    events: list[Event]
    phases: list[str | None]  # the phase current at each event (None before the first forward)

    @property
    def data(self) -> dict[str, Any]:
        """The profile JSON without its events."""
        return self.record.to_dict()


def load_profile_timeline(path: str | os.PathLike[str]) -> ProfileTimeline:
    """The events of the profile JSON at `path`; MemprofUserError (one line) for anything else."""
    name, raw_bytes = read_bytes(path, "profile", "a profile")
    try:
        data = loads_json(raw_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MemprofUserError(
            f"{name} is not readable JSON ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}); expected a memprof profile"
        ) from None
    # the record's reader, in its order (schema, events, the rest), with replay's words between
    try:
        check_profile_schema(data, where=name)
    except RecordError:
        found = repr(data.get("schema")) if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise MemprofUserError(
            f"{name} is not a memprof profile (schema {found}, expected "
            f"{PROFILE_SCHEMA!r}); memprof replay reads snapshot pickles and "
            f"memprof profiles saved with events"
        ) from None
    if data.get("events") is None:
        raise MemprofUserError(f"{name} was saved without its allocation timeline; {_HOW_TO_SAVE}")
    read, read_phases = read_events(data["events"], data.get("event_phases"), where=name)
    events: list[Event] = list(read or ())
    if not any(e[0] == "alloc" for e in events):
        raise MemprofUserError(f"{name} holds no allocation event; {_HOW_TO_SAVE}")
    phases: list[str | None] = [None] * len(events) if read_phases is None else list(read_phases)
    record = ProfileRecord.from_dict({k: v for k, v in data.items() if k not in EVENT_KEYS}, where=name)
    return ProfileTimeline(record, events, phases)


def pick_profile_device(timeline: ProfileTimeline, device: str | None = None) -> str:
    """`device` if the timeline uses it, else the device the profile reports (or the first one)."""
    devices = [str(d) for d in devices_in(timeline.events)]
    if device is not None:
        wanted = f"cuda:{device}" if str(device).isdigit() else str(device)
        if wanted not in devices:
            raise MemprofUserError(f"device {wanted!r} has no allocation in the profile; it holds {', '.join(devices)}")
        return wanted
    reported = timeline.record.device
    return reported if reported in devices else devices[0]


@dataclass
class ProfileReplay:
    """A profile's timeline for one device, replayed through the simulator."""

    result: SimResult
    device: str
    config_source: str  # "--alloc-conf" or "default"
    events_in_profile: int
    profile: dict[str, Any]
    events: list[Event] = field(repr=False, default_factory=list)  # what was replayed

    @property
    def as_if_cuda(self) -> bool:
        return not self.device.startswith("cuda")

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["source"] = "profile"
        out["device"] = self.device
        out["as_if_cuda"] = self.as_if_cuda
        out["config_source"] = self.config_source
        out["events_in_profile"] = self.events_in_profile
        if self.as_if_cuda:
            out["note"] = (
                f"a {self.device} run replayed as if on CUDA: what the caching allocator would "
                f"reserve for the same tensors, allocated in the same order, on a GPU"
            )
        peak = self.profile.get("peak") or {}
        devices = self.profile.get("devices") or {}
        measured = (devices.get(self.device) or {}).get("peak_allocated")
        if measured is None and self.profile.get("device") == self.device:
            measured = peak.get("allocated")
        settings = self.profile.get("settings") or {}
        out["profile"] = {
            "model": settings.get("model"),
            "device": self.profile.get("device"),
            "peak_allocated": measured,
            "measured_reserved": peak.get("reserved") if not self.as_if_cuda else None,
        }
        return out


def replay_profile(
    timeline: ProfileTimeline,
    config: AllocatorConfig | str | None = None,
    capacity: int | None = None,
    device: str | None = None,
) -> ProfileReplay:
    """Replay one device of a profile's timeline (a CPU device is replayed as if it were CUDA)."""
    source = "--alloc-conf" if config is not None else "default"
    if config is None or isinstance(config, str):
        config = parse_alloc_conf(config)
    dev = pick_profile_device(timeline, device)
    events = list(device_events(timeline.events, dev))
    result = simulate(events, config, capacity)
    return ProfileReplay(result, dev, source, len(timeline.events), timeline.data, events)
