"""Allocation timelines from other parts of memprof, made ready for the simulator.

The simulator reads ("alloc", id, nbytes, stream) / ("free", id). The profiler's attribution mode
records ("alloc", storage_id, nbytes, device) / ("free", storage_id) with a device string such as
"cuda:0" or "cpu" in the fourth slot (memprof/profiler/profile.py), because it sees storages, not
streams. One caching allocator serves one device, so such a timeline is replayed per device:
`device_events` keeps one device's allocations and their frees, all on the default stream.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import MemprofUserError

if TYPE_CHECKING:
    from .simulator import Event


def devices_in(events: Iterable[Event]) -> list[Any]:
    """The devices named by the alloc events of a profiler timeline, in order of first use."""
    seen: dict[Any, None] = {}
    for event in events:
        if event[0] == "alloc" and len(event) > 3:
            seen.setdefault(event[3], None)
    return list(seen)


def device_events(events: Iterable[Event], device: Any = None) -> Iterator[Event]:
    """One device's part of a profiler timeline as simulator events on stream 0.

    device: e.g. "cuda:0"; None picks the first CUDA device named in the timeline (the timeline
    must then be a list, as it is read twice).
    """
    if device is None:
        if not isinstance(events, (list, tuple)):
            events = list(events)
        cuda = [d for d in devices_in(events) if str(d).startswith("cuda")]
        if not cuda:
            raise MemprofUserError(
                "the timeline holds no CUDA allocation; the allocator simulation needs "
                "a run on a CUDA device (or name the device to replay)"
            )
        device = cuda[0]
    mine: set[Hashable] = set()
    for event in events:
        kind = event[0]
        if kind == "alloc":
            if len(event) > 3 and event[3] != device:
                continue
            mine.add(event[1])
            yield ("alloc", event[1], event[2], 0)
        elif kind in ("free", "free_requested"):
            if event[1] in mine:
                if kind == "free":
                    mine.discard(event[1])
                yield (kind, event[1])
        else:
            yield event
