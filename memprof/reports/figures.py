"""One function per figure: plain records in, `matplotlib.figure.Figure` out, headless.

Each figure is a `Figure` bound to an Agg canvas (`FigureCanvasAgg`), the renderer
`matplotlib.use("Agg")` would select, without touching the process-wide backend: a notebook keeps its
inline backend and a server needs no display. pyplot is never imported, so no figure is kept alive
by a global registry. `draw_*` functions draw onto a given Axes (for composite pages); `*_figure`
functions make a stand-alone Figure. Sizes are drawn in bytes, with axes labelled in binary units.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MultipleLocator

from memprof.estimators.units import format_bytes
from memprof.reports import data

CATEGORY_COLORS = {
    "parameters": "#4C72B0",
    "gradients": "#DD8452",
    "optimizer_states": "#55A868",
    "activations": "#C44E52",
    "temporary": "#8172B3",
    "cuda_context": "#937860",
    "fragmentation": "#A0A0A0",
}
CATEGORY_LABELS = {
    "parameters": "parameters",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "activations": "activations",
    "temporary": "temporary",
    "cuda_context": "CUDA context",
    "fragmentation": "fragmentation",
}
PHASE_COLORS = {None: "#FFFFFF", "forward": "#D0E4F5", "backward": "#F8DCCB", "optimizer_step": "#D8EDD5"}
PHASE_LABELS = {None: "setup", "forward": "forward", "backward": "backward", "optimizer_step": "step"}
FAMILY_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
GPU_COLORS = ("#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974")
_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "B"))
_STEPS = (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)


def category_handles(categories: Sequence[str], total: bool = False) -> list[Any]:
    """Legend entries for the category bands `categories` (top of the stack first, as drawn) and,
    with `total`, the line of total live bytes: one legend can then name every band of every panel."""
    handles: list[Any] = [Line2D([], [], color="black", linewidth=0.8, label="total")] if total else []
    ordered = [c for c in CATEGORY_COLORS if c in set(categories)]
    handles += [Patch(color=CATEGORY_COLORS[c], label=CATEGORY_LABELS[c]) for c in reversed(ordered)]
    return handles


def drawn_categories(bars: dict[str, Any] | None, timelines: Sequence[Sequence[dict[str, Any]]] = ()) -> list[str]:
    """The categories any bar or timeline band shows (non-zero somewhere), in the vocabulary's order."""
    seen: set[str] = set()
    if bars is not None:
        seen |= {c for c in bars["categories"] if any((b.get(c) or 0) > 0 for b in bars["bars"].values())}
    for points in timelines:
        seen |= set(data.stacked_series(points))
    return [c for c in CATEGORY_COLORS if c in seen]


def new_figure(width: float, height: float) -> Figure:
    """A Figure on its own Agg canvas (no pyplot, no global backend)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def bytes_axis(axis: Any, top: float) -> None:
    """Ticks at round multiples of the binary unit that fits `top` (e.g. 0, 5, 10 GiB)."""
    unit, name = next(((u, n) for u, n in _UNITS if top >= u), (1, "B"))
    span = max(top / unit, 1e-9)
    step = next((s for s in _STEPS if span / s <= 8), _STEPS[-1])
    axis.set_major_locator(MultipleLocator(step * unit))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v / unit:g} {name}" if v else "0"))


# -- stacked bars: predicted vs measured by category ----------------------------------------------
def draw_category_bars(ax: Axes, bars: dict[str, Any], legend: bool = True) -> None:
    """Stacked bars, one per side of `data.comparison_bars(...)`; segment heights are the bytes.

    `legend=False` leaves the legend to the caller (a page whose one legend also names the bands of
    its timelines)."""
    names = list(bars["bars"])
    drawn = [c for c in bars["categories"] if any((bars["bars"][n].get(c) or 0) > 0 for n in names)]
    bottoms = [0] * len(names)
    totals = [sum(v or 0 for v in bars["bars"][n].values()) for n in names]
    top = max(totals, default=0) or 1
    for cat in drawn:
        heights = [bars["bars"][n].get(cat) or 0 for n in names]
        ax.bar(
            range(len(names)),
            heights,
            bottom=bottoms,
            width=0.6,
            color=CATEGORY_COLORS[cat],
            label=CATEGORY_LABELS[cat],
            gid=cat,
        )
        for i, h in enumerate(heights):
            if h >= 0.06 * top:
                ax.text(i, bottoms[i] + h / 2, format_bytes(h), ha="center", va="center", fontsize=8, color="white")
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, total in enumerate(totals):
        ax.text(i, total, format_bytes(total), ha="center", va="bottom", fontsize=9, fontweight="bold")
    ticks = []
    for n in names:
        missing = [CATEGORY_LABELS[c] for c in bars["categories"] if bars["bars"][n].get(c) is None]
        label = n
        if n in bars.get("phases", {}):
            phase = bars["phases"][n]
            label += f"\npeak in {PHASE_LABELS.get(phase, phase)}"
        ticks.append(label + (f"\n(no {', '.join(missing)})" if missing else ""))
    ax.set_xticks(range(len(names)), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, top * 1.1)
    bytes_axis(ax.yaxis, top)
    ax.set_ylabel("bytes at the peak")
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False, reverse=True)


def category_bars_figure(
    profile: dict[str, Any], estimate: dict[str, Any] | None = None, title: str | None = None
) -> Figure:
    """Stacked bars of bytes by category at the peak: predicted (when an estimate is given) and measured."""
    bars = data.comparison_bars(profile, estimate)
    fig = new_figure(2.2 + 1.6 * len(bars["bars"]), 4.2)
    ax = fig.add_subplot()
    draw_category_bars(ax, bars)
    ax.set_title(title or default_title(profile, estimate), fontsize=10)
    return fig


def stacked_bars_figure(
    bars: dict[str, dict[str, int | None]], title: str = "", ylabel: str = "bytes per GPU"
) -> Figure:
    """Stacked bars by category for any named configurations ({name: {category: bytes}})."""
    categories = [c for c in CATEGORY_LABELS if any(b.get(c) is not None for b in bars.values())]
    fig = new_figure(2.4 + 1.25 * len(bars), 4.2)
    ax = fig.add_subplot()
    draw_category_bars(ax, {"categories": categories, "bars": bars})
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def default_title(profile: dict[str, Any], estimate: dict[str, Any] | None) -> str:
    s = profile.get("settings") or {}
    name = s.get("model") or (estimate or {}).get("model") or "model"
    return f"{name}: " + ("predicted vs measured" if estimate is not None else "measured") + " at the peak"


# -- timeline of live bytes by category ------------------------------------------------------------
def draw_timeline(
    ax: Axes, points: Sequence[dict[str, Any]], *, x: Sequence[float] | None = None, xlabel: str = ""
) -> None:
    """Stacked areas of live bytes by category along `points`, phases shaded, the peak marked."""
    xs = list(x) if x is not None else list(range(len(points)))
    series = data.stacked_series(points)
    totals = [sum(v) for v in zip(*series.values())] if series else [0] * len(points)
    # each point holds until the next one: extend by one step so the last point has a width
    end = xs[-1] + (xs[-1] - xs[-2] if len(xs) > 1 else 1)
    xe = xs + [end]
    ax.stackplot(
        xe,
        *[v + v[-1:] for v in series.values()],
        labels=[CATEGORY_LABELS[c] for c in series],
        colors=[CATEGORY_COLORS[c] for c in series],
        step="post",
        linewidth=0,
    )
    ax.plot(xe, totals + totals[-1:], color="black", linewidth=0.8, drawstyle="steps-post", label="total")
    top = max(totals, default=0) or 1
    ax.set_ylim(0, top * 1.18)
    for phase, first, last in data.phase_spans(p.get("phase") for p in points):
        ax.axvspan(xe[first], xe[last + 1], color=PHASE_COLORS.get(phase, "#EEEEEE"), zorder=-2, linewidth=0)
        if first > 0:  # where the phase begins: a boundary that stays visible where the shading is faint
            ax.axvline(xe[first], color="#777777", linewidth=0.6, linestyle=":", zorder=-1, gid=f"phase:{phase}")
        label = PHASE_LABELS.get(phase, str(phase))
        if (xe[last + 1] - xe[first]) > 0.04 * (end - xe[0]):
            ax.text(
                (xe[first] + xe[last + 1]) / 2, top * 1.1, label, ha="center", va="center", fontsize=7, color="#444444"
            )
        elif phase is not None:  # a narrow phase (one segment): label it flush with its right edge
            ax.text(xe[last + 1], top * 1.1, label + " ", ha="right", va="center", fontsize=7, color="#444444")
    i = max(range(len(totals)), key=totals.__getitem__) if totals else 0
    if totals:
        right = xs[i] > (xe[0] + end) / 2  # keep the label inside the axes
        ax.annotate(
            f"peak {format_bytes(totals[i])}",
            (xs[i], totals[i]),
            xytext=(-4 if right else 4, 4),
            textcoords="offset points",
            fontsize=8,
            ha="right" if right else "left",
        )
    ax.set_xlim(xe[0], end)
    bytes_axis(ax.yaxis, top)
    ax.set_ylabel("live bytes")
    ax.set_xlabel(xlabel, fontsize=8)


Panel = Callable[[Axes, list[dict[str, Any]]], None]  # draws one timeline panel


def draw_measured_panel(ax: Axes, points: list[dict[str, Any]]) -> None:
    draw_timeline(
        ax,
        points,
        x=[p["seq"] for p in points],
        xlabel="allocation events since the region began (a count, not time; sampled, the exact peaks included)",
    )
    ax.set_title("measured", fontsize=9, loc="left")


def draw_predicted_panel(ax: Axes, points: list[dict[str, Any]]) -> None:
    draw_timeline(
        ax,
        points,
        xlabel="moments of the simulated step, in order (each layer's forward, its backward, the optimizer step)",
    )
    ax.set_title("predicted", fontsize=9, loc="left")


def timeline_panels(profile: dict[str, Any] | None, estimate: dict[str, Any] | None) -> list[tuple[Panel, list]]:
    """(draw function, points) for each timeline available: predicted first, then measured."""
    measured = data.measured_timeline(profile) if profile is not None else None
    predicted = data.predicted_timeline(estimate)
    candidates: list[tuple[Panel, list[dict[str, Any]] | None]] = [
        (draw_predicted_panel, predicted),
        (draw_measured_panel, measured),
    ]
    return [(draw, points) for draw, points in candidates if points]


def timeline_figure(
    profile: dict[str, Any] | None = None, estimate: dict[str, Any] | None = None, title: str | None = None
) -> Figure:
    """Live bytes by category through forward, backward and the optimizer step.

    One panel for the profile's measured timeline and one for the estimate's simulated step, when
    each is given and has a timeline; the panels share the byte axis so heights compare directly.
    """
    panels = timeline_panels(profile, estimate)
    if not panels:
        raise ValueError("no timeline to draw: the profile has none (stats mode?) and no estimate timeline was given")
    fig = new_figure(9, 2.8 * len(panels) + 0.4)
    axes = fig.subplots(len(panels), 1, sharey=True, squeeze=False)[:, 0]
    for ax, (draw, points) in zip(axes, panels):
        draw(ax, points)
    # one legend for every band of every panel (a category may appear in one panel only)
    handles = category_handles(drawn_categories(None, [points for _, points in panels]), total=True)
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title or "live bytes by category through one training region", fontsize=10)
    return fig


# -- optimizer-state bytes per parameter by family -------------------------------------------------
def draw_optimizer_bytes(ax: Axes, rows: Sequence[dict[str, Any]]) -> None:
    """Horizontal bars of optimizer-state bytes per parameter, grouped and coloured by family."""
    y, labels, ypos = 0.0, [], []
    for k, (family, members) in enumerate(data.family_groups(rows)):
        color = FAMILY_COLORS[k % len(FAMILY_COLORS)]
        ys = [y + i for i in range(len(members))]
        widths = [r["state_bytes_per_param"] for r in members]
        ax.barh(ys, widths, height=0.7, color=color, label=family, gid=family)
        for yy, w in zip(ys, widths):
            ax.text(w, yy, f" {w:.3g}", va="center", fontsize=7)
        labels += [r["optimizer"] for r in members]
        ypos += ys
        y += len(members) + 0.8
    ax.set_yticks(ypos, labels, fontsize=7)
    ax.invert_yaxis()
    widest = max((r["state_bytes_per_param"] for r in rows), default=1) or 1
    if widest > 50:  # LBFGS' history or a population dwarfs first-order states: log beyond 1 B
        ax.set_xscale("symlog", linthresh=1, linscale=0.6)
        ax.set_xlim(0, widest * 2.5)
    else:
        ax.set_xlim(0, widest * 1.15)
    ax.set_xlabel("optimizer-state bytes per parameter" + (" (log scale above 1)" if widest > 50 else ""))

    ax.legend(loc="lower right", fontsize=8, title="family", title_fontsize=8)


def optimizer_bytes_figure(rows: Sequence[dict[str, Any]], title: str | None = None) -> Figure:
    """Bytes per parameter by optimizer, grouped by the taxonomy's families (rows of `optimizer_rows`)."""
    fig = new_figure(7.5, 1.2 + 0.2 * len(rows) + 0.15 * len(data.family_groups(rows)))
    ax = fig.add_subplot()
    draw_optimizer_bytes(ax, rows)
    ax.set_title(title or "optimizer states per parameter, by family", fontsize=10)
    return fig


# -- peak against batch size / sequence length, with GPU capacities --------------------------------
# the settings a user chooses (not derived ones such as the optimizer implementation torch picks)
SWEEP_KNOBS = (
    "optimizer",
    "precision",
    "batch_size",
    "seq_len",
    "checkpointing",
    "attention",
    "gpus",
    "zero",
    "offload",
    "grad_accumulation",
)
SWEEP_COLORS = ("black", "#4C72B0", "#55A868", "#DD8452", "#8172B3", "#937860")
# curves that overlap (two optimizers with the same peak) stay apart by marker and line style
SWEEP_MARKERS = ("o", "s", "^", "D", "v", "P")
SWEEP_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1)))
GPU_STYLES = ((0, (6, 3)), (0, (2, 2)), (0, (6, 2, 2, 2)), (0, (1, 1)), (0, (8, 2, 1, 2, 1, 2)), (0, (4, 4)))


def draw_peak_sweep(ax: Axes, sweeps: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
    """The predicted peak along each sweep, and one dashed line per GPU at its usable memory.

    Several sweeps (e.g. one per optimizer) share the axes; each curve is named by what differs.
    """
    sweeps = [sweeps] if isinstance(sweeps, dict) else list(sweeps)
    varying = [
        k for k in SWEEP_KNOBS if len({str(sw["settings"].get(k)) for sw in sweeps}) > 1 and k != sweeps[0]["axis"]
    ]
    for k, sw in enumerate(sweeps):
        name = ", ".join(f"{key.replace('_', ' ')} {sw['settings'][key]}" for key in varying)
        label = f"predicted peak ({sw['measure'].replace('_', ' ')})" + (f": {name}" if name else "")
        ax.plot(
            sw["values"],
            sw["peaks"],
            marker=SWEEP_MARKERS[k % len(SWEEP_MARKERS)],
            linestyle=SWEEP_STYLES[k % len(SWEEP_STYLES)],
            markersize=6 - min(k, 3),  # later markers smaller, so one drawn over another still shows
            color=SWEEP_COLORS[k % len(SWEEP_COLORS)],
            label=label,
            gid=f"peak:{name}" if name else "peak",
        )
    gpus = {g["name"]: g for sw in sweeps for g in sw["gpus"]}
    for k, gpu in enumerate(gpus.values()):
        ax.axhline(
            gpu["usable"],
            linestyle=GPU_STYLES[k % len(GPU_STYLES)],
            linewidth=1.2,
            color=GPU_COLORS[k % len(GPU_COLORS)],
            label=f"{gpu['name']}: {format_bytes(gpu['usable'])} usable",
            gid=f"gpu:{gpu['name']}",
        )
    values = sorted({v for sw in sweeps for v in sw["values"]})
    if all(v > 0 and v & (v - 1) == 0 for v in values) and len(values) > 2:
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
    top = max([*(p for sw in sweeps for p in sw["peaks"]), *(g["usable"] for g in gpus.values())])
    ax.set_ylim(0, top * 1.08)
    bytes_axis(ax.yaxis, top)
    ax.set_xlabel(sweeps[0]["axis"].replace("_", " "))
    ax.set_ylabel("memory per GPU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def peak_sweep_figure(sweeps: dict[str, Any] | Sequence[dict[str, Any]], title: str | None = None) -> Figure:
    """Batch size (or sequence length) against predicted peak memory, GPU capacities as lines.

    `sweeps`: one `data.peak_sweep(...)` result, or several drawn together."""
    first = sweeps if isinstance(sweeps, dict) else sweeps[0]
    fig = new_figure(7, 4.2)
    ax = fig.add_subplot()
    draw_peak_sweep(ax, sweeps)
    s = first["settings"]
    ax.set_title(
        title
        or f"{first['model']}: {s['optimizer']}, {s['precision']}, checkpointing "
        f"{s['checkpointing']}, attention {s['attention']}",
        fontsize=10,
    )
    return fig
