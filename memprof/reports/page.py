"""What `memprof report` writes: one PNG of a profile's figures, or a self-contained HTML page.

The PNG holds the stacked bars at the peak (measured, and predicted beside it when an estimate is
given) and the timeline(s). The HTML page embeds the same figures as base64 PNGs and adds the
breakdown tables (bytes by category at the peak, each phase's own peak, model states), so it can be
mailed or attached to a CI run as one file.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from matplotlib.figure import Figure

from memprof.estimators.units import format_bytes
from memprof.estimators.vocabulary import CATEGORIES, PHASES
from memprof.reports import data
from memprof.reports import figures as F


def report_figure(profile: dict[str, Any], estimate: dict[str, Any] | None = None) -> Figure:
    """Bars at the peak on the left, the timeline panels (predicted, measured) on the right."""
    bars = data.comparison_bars(profile, estimate)
    panels = F.timeline_panels(profile, estimate)
    rows = max(len(panels), 1)
    fig = F.new_figure(13 if panels else 5, 3.2 * rows + 0.6)
    grid = fig.add_gridspec(rows, 2, width_ratios=(1.15 if len(bars["bars"]) > 1 else 0.8, 3))
    bars_ax = fig.add_subplot(grid[:, 0])
    F.draw_category_bars(bars_ax, bars, legend=False)
    first = None
    for row, (draw, points) in enumerate(panels):
        ax = fig.add_subplot(grid[row, 1], sharey=first)
        draw(ax, points)
        first = first or ax
    # one legend naming every band drawn, in the bars or in any timeline, and the timelines' total line
    handles = F.category_handles(F.drawn_categories(bars, [p for _, p in panels]), total=bool(panels))
    bars_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.suptitle(F.default_title(profile, estimate), fontsize=11)
    return fig


def report_png(profile: dict[str, Any], estimate: dict[str, Any] | None = None) -> bytes:
    return F.figure_png(report_figure(profile, estimate))


def _b(n: int | None) -> str:
    return "—" if n is None else format_bytes(n)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def breakdown_rows(profile: dict[str, Any], estimate: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    """`memprof.compare`'s table (model states, the peak by category and its totals) as text cells;
    measured only when there is no estimate."""
    import pandas as pd

    from memprof.comparison import comparison_frame

    def num(v: Any) -> int | None:
        return None if pd.isna(v) else int(v)

    frame = comparison_frame(estimate, profile)
    rows = []
    for (scope, cat), r in frame.iterrows():
        pct = "—" if pd.isna(r["error_pct"]) else f"{r['error_pct']:+.1f}%"
        cells = [
            scope.replace("_", " "),
            cat,
            _b(num(r["predicted"])),
            _b(num(r["measured"])),
            _signed(num(r["error_bytes"])),
            pct,
            r["note"] or "",
        ]
        rows.append(cells if estimate is not None else [cells[0], cells[1], cells[3]])
    header = ["scope", "category", "predicted", "measured", "error", "error %", "note"]
    return (header if estimate is not None else ["scope", "category", "measured"]), rows


def _signed(n: int | None) -> str:
    return "—" if n is None else ("+" if n >= 0 else "-") + format_bytes(abs(n))


def phase_rows(profile: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Each phase's own measured peak, by category."""
    peaks = {ph: ((profile["phases"].get(ph) or {}).get("peak") or {}) for ph in PHASES}
    cats = [c for c in CATEGORIES if any((pk.get("by_category") or {}).get(c) is not None for pk in peaks.values())]
    rows = []
    for ph, peak in peaks.items():
        by_cat = peak.get("by_category") or {}
        calls = (profile["phases"].get(ph) or {}).get("calls", 0)
        rows.append([ph, str(calls), _b(peak.get("allocated")), *[_b(by_cat.get(c)) for c in cats]])
    return ["phase", "calls", "peak allocated", *cats], rows


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 9px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}img{max-width:100%}
.meta{color:#555;font-size:0.9em}"""


def allocator_section(estimate: dict[str, Any] | None) -> list[str]:
    """The estimate's simulated allocator at the peak (allocator.explain, allocator.range), as HTML."""
    allocator = (estimate or {}).get("allocator") or {}
    explain, span = allocator.get("explain"), allocator.get("range")
    if not isinstance(explain, dict):
        return []
    seg = explain["segments"]
    lines = [
        f"{explain['moment']} ({explain.get('where') or 'measured step'}): {seg['count']:,} segments, "
        f"{_b(seg['bytes'])}; free inside them {_b(explain['free_in_split_segments'])} in split segments, "
        f"{_b(explain['free_whole_segments'])} in whole cached segments"
    ]
    if isinstance(span, dict) and span.get("low") is not None:
        lines.append(
            f"replay's reserved peak over the allocation orders memprof cannot know: {_b(span['low'])} to "
            f"{_b(span['high'])} ({', '.join(span.get('replays', {}))})"
        )
    rows = [
        [_b(b["bytes"]), _b(b["segment_bytes"]), b["pool"], "; ".join(b["split_by"])]
        for b in explain.get("largest_free_blocks", [])
    ]
    return [
        "<h2>The caching allocator at the peak (estimated)</h2>",
        f"<p class='meta'>{'<br>'.join(html.escape(line) for line in lines)}</p>",
        _table(["free block", "its segment", "pool", "split by (live in the segment)"], rows),
    ]


def rank_rows(per_rank: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Predicted vs measured per rank (memprof.comparison.ranks.compare_ranks), the worst marked."""
    header = ["rank", "predicted", "measured", "error", "phase (pred/meas)", "model states", ""]
    rows = []
    for r in per_rank["ranks"]:
        err = "-" if r["error_pct"] is None else f"{r['error_pct']:+.2f}%"
        rows.append(
            [
                str(r["rank"]),
                _b(r["predicted_peak"]),
                _b(r["measured_peak"]),
                err,
                f"{r['predicted_phase']}/{r['measured_phase']}",
                "exact" if r["states_exact"] else "differ",
                "worst" if r["rank"] == per_rank["worst_rank"] else "",
            ]
        )
    return header, rows


def report_html(
    profile: dict[str, Any], estimate: dict[str, Any] | None = None, per_rank: dict[str, Any] | None = None
) -> str:
    """A self-contained page: figures as base64 PNGs, then the breakdown tables. per_rank (several
    ranks' profiles, `compare_ranks`): a table of every rank first; `profile` is the worst rank's."""
    s = profile.get("settings") or {}
    env = profile.get("environment") or {}
    title = F.default_title(profile, estimate)
    meta = [
        f"model {s.get('model')} ({s.get('parameters') or 0:,} parameters), optimizer {s.get('optimizer')}, "
        f"device {profile.get('device')}, mode {profile.get('mode')}; torch {env.get('torch')}, "
        f"memprof {profile.get('memprof_version')}"
    ]
    if estimate is not None:
        es = estimate["settings"]
        meta.append(
            f"estimate: {estimate['model']}, {es.get('optimizer')}, {es.get('precision')}, "
            f"batch {es.get('batch_size')} × seq {es.get('seq_len')}, device {es.get('device')}"
        )
    png = base64.b64encode(report_png(profile, estimate)).decode("ascii")
    header, rows = breakdown_rows(profile, estimate)
    pheader, prows = phase_rows(profile)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{'<br>'.join(html.escape(m) for m in meta)}</p>",
    ]
    if per_rank is not None:
        rheader, rrows = rank_rows(per_rank)
        parts += [
            f"<h2>Rank by rank ({len(rrows)} of world size {per_rank['world_size']}; the worst: rank "
            f"{per_rank['worst_rank']}, drawn below)</h2>",
            _table(rheader, rrows),
        ]
    parts += [
        f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>",
        "<h2>At the peak</h2>",
        _table(header, rows),
        "<h2>Each phase's own peak (measured)</h2>",
        _table(pheader, prows),
    ]
    parts += allocator_section(estimate)
    breakdown = profile.get("optimizer_state_breakdown") or {}
    if breakdown:
        parts += [
            "<h2>Optimizer states by key (measured)</h2>",
            _table(["state", "bytes"], [[k, _b(v)] for k, v in breakdown.items()]),
        ]
    if profile.get("error"):
        e = profile["error"]
        parts.append(
            f"<h2>Error</h2><p>{html.escape(str(e.get('type')))} in {html.escape(str(e.get('phase')))}: "
            f"{html.escape(str(e.get('message'))[:500])}</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
