"""What if the allocator were configured differently? Replay the same events under several
PYTORCH_CUDA_ALLOC_CONF settings and say which one would help.

"Help" means, in this order: no OOM at the given capacity, fewer bytes reserved at the peak, fewer
allocation retries (each retry is a synchronising cudaFree of the whole cache). A setting is
recommended only when it beats the current one by at least one 2 MiB page and 1 % of its peak
reserved, or avoids an OOM / retries the current setting runs into.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..units import format_bytes
from .config import merge_alloc_conf, parse_alloc_conf
from .simulator import Event, SimResult, simulate

# the settings PyTorch's docs suggest against fragmentation, one change at a time
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "expandable_segments:True",
    "max_split_size_mb:128",
    "max_split_size_mb:512",
    "roundup_power2_divisions:4",
    "roundup_power2_divisions:[256:1,512:2,1024:4,>:8]",
)
_MIN_SAVING = 2 << 20


@dataclass
class WhatIfRow:
    change: str  # the option changed ("" for the current settings)
    conf: str  # the full PYTORCH_CUDA_ALLOC_CONF replayed
    result: SimResult


@dataclass
class WhatIf:
    baseline: WhatIfRow
    rows: list[WhatIfRow]
    best: WhatIfRow | None  # the recommended setting, or None when nothing helps

    @property
    def recommendation(self) -> str:
        base = self.baseline.result
        if self.best is None:
            if base.oom is not None:
                return (
                    "no allocator setting avoids the out-of-memory error at this capacity; "
                    "the live tensors themselves do not fit"
                )
            return "the current allocator settings are already as good as the alternatives tried"
        conf = self.best.conf
        best = self.best.result
        if base.oom is not None:
            why = "avoids the out-of-memory error"
        elif best.peak_reserved < base.peak_reserved:
            saved = base.peak_reserved - best.peak_reserved
            why = f"reserves {format_bytes(saved)} less at the peak ({saved / base.peak_reserved:.1%})"
        else:
            why = f"needs {base.num_alloc_retries - best.num_alloc_retries} fewer cache-flushing retries"
        return f"PYTORCH_CUDA_ALLOC_CONF={conf} {why}"

    def to_dict(self) -> dict[str, Any]:
        def row(r: WhatIfRow) -> dict[str, Any]:
            res = r.result
            return {
                "change": r.change,
                "conf": r.conf,
                "peak_reserved": res.peak_reserved,
                "peak_allocated": res.peak_allocated,
                "fragmentation": round(res.fragmentation, 6),
                "num_alloc_retries": res.num_alloc_retries,
                "oom": res.oom is not None,
            }

        return {
            "baseline": row(self.baseline),
            "candidates": [row(r) for r in self.rows],
            "best": self.best.conf if self.best else None,
            "recommendation": self.recommendation,
        }


def _score(result: SimResult) -> tuple[bool, int, int]:
    return (result.oom is not None, result.peak_reserved, result.num_alloc_retries)


def _helps(candidate: SimResult, base: SimResult) -> bool:
    if base.oom is not None:
        return candidate.oom is None
    if candidate.oom is not None:
        return False
    saving = base.peak_reserved - candidate.peak_reserved
    if saving >= _MIN_SAVING and saving >= 0.01 * base.peak_reserved:
        return True
    return saving >= 0 and candidate.num_alloc_retries < base.num_alloc_retries


def what_if(
    events: Iterable[Event],
    conf: str | None = None,
    capacity: int | None = None,
    candidates: Iterable[str] = DEFAULT_CANDIDATES,
    reset_peaks_at: int | None = None,
) -> WhatIf:
    """Replay `events` under `conf` and under `conf` changed by each candidate option.

    reset_peaks_at: compare the peaks of the events from that index on (see `simulate`).
    """
    events = events if isinstance(events, list) else list(events)
    parse_alloc_conf(conf)  # a bad base conf is reported before any replay
    baseline = WhatIfRow(
        "", parse_alloc_conf(conf).to_conf(), simulate(events, conf, capacity, reset_peaks_at=reset_peaks_at)
    )
    rows = []
    for change in candidates:
        merged = merge_alloc_conf(conf, change)
        config = parse_alloc_conf(merged)
        if config.to_conf() == baseline.conf:
            continue  # already in effect
        rows.append(
            WhatIfRow(change, config.to_conf(), simulate(events, config, capacity, reset_peaks_at=reset_peaks_at))
        )
    helpful = [r for r in rows if _helps(r.result, baseline.result)]
    best = min(helpful, key=lambda r: _score(r.result)) if helpful else None
    return WhatIf(baseline, rows, best)


def min_capacity(events: Iterable[Event], conf: str | None = None, granularity: int = 2 << 20) -> int:
    """The smallest capacity (a multiple of `granularity`) at which the events replay without OOM.

    Found by bisection between the peak of live bytes (no allocator can do with less) and the
    peak reserved without a limit (always enough: that replay never asks for more). The allocator
    is not strictly monotonic in capacity - a smaller cap flushes the cache earlier, which can
    change later placements - so the answer is the bisection's, checked by a replay at that value.
    """
    events = events if isinstance(events, list) else list(events)
    config = parse_alloc_conf(conf)
    unlimited = simulate(events, config)
    lo = unlimited.peak_allocated // granularity  # lo * granularity < peak allocated fails
    if lo * granularity == unlimited.peak_allocated:
        lo -= 1
    hi = -(-unlimited.peak_reserved // granularity)  # fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if simulate(events, config, mid * granularity).oom is None:
            hi = mid
        else:
            lo = mid
    return hi * granularity
