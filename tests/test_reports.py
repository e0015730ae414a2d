"""Figures, the profiler's timeline and `memprof report`: the drawn data is the recorded data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
from matplotlib.container import BarContainer  # noqa: E402
from torch import nn  # noqa: E402

import memprof  # noqa: E402
from memprof.cli import main  # noqa: E402
from memprof.estimators.estimation import estimate  # noqa: E402
from memprof.estimators.units import format_bytes  # noqa: E402
from memprof.profiler import tracker as T  # noqa: E402
from memprof.reports import data, page  # noqa: E402
from memprof.reports import figures as F  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- fake records (plain dicts, as the reporters receive them) -------------------------------------
def _estimate_record(params: int = 1000, **peak: int) -> dict:
    by_cat = {
        "parameters": 4000,
        "gradients": 4000,
        "optimizer_states": 8000,
        "activations": 12000,
        "temporary": 2000,
        "cuda_context": 0,
        "fragmentation": 0,
        **peak,
    }
    return {
        "model": "fake",
        "parameters": params,
        "settings": {
            "optimizer": "adamw",
            "precision": "32-true",
            "batch_size": 2,
            "seq_len": 8,
            "checkpointing": "none",
            "attention": "eager",
            "device": "cpu",
        },
        "model_states": {"parameters": 4000, "gradients": 4000, "optimizer_states": 8000},
        "peak": {
            "phase": "backward",
            "allocated": sum(by_cat.values()),
            "reserved": None,
            "device_total": None,
            "by_category": by_cat,
        },
        "timeline": [
            {
                "phase": "forward",
                "label": "forward: layer 0",
                "by_category": {"parameters": 4000, "optimizer_states": 8000, "activations": 6000},
            },
            {"phase": "backward", "label": "backward: layer 0", "by_category": by_cat},
            {
                "phase": "optimizer_step",
                "label": "optimizer step",
                "by_category": {"parameters": 4000, "gradients": 4000, "optimizer_states": 8000},
            },
        ],
    }


# -- a real profile: one SGD-momentum step of a model of known sizes --------------------------------
class Known(nn.Module):
    """One 1000-float parameter; forward makes a 10,000-byte scratch tensor and frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(2500)
        del scratch
        return x * self.w


def _known_run(steps: int = 1, **track):
    model = Known()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.ones(1000)
    with memprof.track(model, opt, **track) as run:
        for _ in range(steps):
            y = model(x)
            y.sum().backward()
            opt.step()
    return run


@pytest.fixture(scope="module")
def known_profile(tmp_path_factory):
    run = _known_run()
    path = tmp_path_factory.mktemp("profiles") / "known.json"
    run.save(path)
    return run.to_dict(), path


# -- the profiler's timeline ------------------------------------------------------------------------
def test_timeline_holds_the_exact_peaks_and_sums_by_category(known_profile) -> None:
    d, _ = known_profile
    tl = d["timeline"]
    # every point's categories sum to its total; seq strictly increases
    assert all(sum(p["by_category"].values()) == p["allocated"] for p in tl)
    assert [p["seq"] for p in tl] == sorted({p["seq"] for p in tl})
    # the overall peak in the step (parameter, gradient, momentum, y, input: 4,000 B each) and each
    # phase's own peak are points of the timeline
    peak = {k: v for k, v in d["peak"]["by_category"].items() if v is not None}
    assert peak == dict.fromkeys(("parameters", "gradients", "optimizer_states", "activations", "temporary"), 4000)
    assert max(p["allocated"] for p in tl) == d["peak"]["allocated"] == 20000
    assert {"phase": "optimizer_step", "by_category": peak} in [
        {"phase": p["phase"], "by_category": p["by_category"]} for p in tl
    ]
    for phase in ("forward", "backward", "optimizer_step"):
        ph = d["phases"][phase]["peak"]
        assert max(p["allocated"] for p in tl if p["phase"] == phase) == ph["allocated"]
    # the forward's 10,000-B scratch is temporary at its moment, not an activation (corrected afterwards)
    fwd_peak = max((p for p in tl if p["phase"] == "forward"), key=lambda p: p["allocated"])
    assert fwd_peak["by_category"] == {
        "parameters": 4000,
        "gradients": 0,
        "optimizer_states": 0,
        "activations": 0,
        "temporary": 14000,
    }
    # phases appear in training order
    phases = [p["phase"] for p in tl if p["phase"] is not None]
    assert [ph for i, ph in enumerate(phases) if i == 0 or phases[i - 1] != ph] == [
        "forward",
        "backward",
        "optimizer_step",
    ]


def test_timeline_stays_bounded_over_a_long_run() -> None:
    run = _known_run(steps=400, events=False)
    d = run.to_dict()
    tl = d["timeline"]
    # thinned to at most MAX_TIMELINE_POINTS samples (+ the 4 exact peaks merged in)
    assert len(tl) <= T.MAX_TIMELINE_POINTS + 4
    assert len(tl) >= T.MAX_TIMELINE_POINTS // 2
    assert max(p["allocated"] for p in tl) == d["peak"]["allocated"]
    assert tl[-1]["seq"] > tl[0]["seq"]


def test_stats_mode_has_no_timeline() -> None:
    assert _known_run(mode="stats").to_dict()["timeline"] is None


def test_measured_timeline_starts_where_the_region_starts(known_profile) -> None:
    d, _ = known_profile
    points = data.measured_timeline(d)
    # registration of the storages that existed before the region collapses to its last point
    assert points[0]["phase"] is None and points[1]["phase"] == "forward"
    # only the parameter: the input is first seen when the forward uses it
    assert points[0]["allocated"] == 4000
    assert data.measured_timeline({"timeline": None}) is None


# -- figures ------------------------------------------------------------------------------------------
def _bars(ax) -> dict[str, list[float]]:
    return {c.get_label(): [r.get_height() for r in c] for c in ax.containers if isinstance(c, BarContainer)}


def test_category_bars_heights_are_the_recorded_bytes(known_profile) -> None:
    d, _ = known_profile
    est = _estimate_record()
    fig = F.category_bars_figure(d, est)
    ax = fig.axes[0]
    heights = _bars(ax)
    m = d["peak"]["by_category"]
    assert heights == {
        "parameters": [4000, m["parameters"]],
        "gradients": [4000, m["gradients"]],
        "optimizer states": [8000, m["optimizer_states"]],
        "activations": [12000, m["activations"]],
        "temporary": [2000, m["temporary"]],
    }
    # stacked: each segment starts where the one below ends
    bottoms = [r.get_y() for c in ax.containers for r in c][1::2]
    assert bottoms == [0, 4000, 8000, 12000, 16000]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["temporary", "activations", "optimizer states", "gradients", "parameters"]
    # the measured side has no CUDA context or fragmentation (a CPU run): said, not drawn as 0
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "predicted\npeak in backward"
    assert ticks[1] == "measured\npeak in step\n(no CUDA context, fragmentation)"
    assert F.figure_png(fig)[:8] == PNG_MAGIC


def test_measured_only_bars_have_one_bar() -> None:
    prof = {"settings": {}, "peak": {"phase": "forward", "by_category": {"parameters": 5, "activations": 7}}}
    heights = _bars(F.category_bars_figure(prof).axes[0])
    assert heights == {"parameters": [5], "activations": [7]}


def test_timeline_figure_draws_predicted_and_measured_totals(known_profile) -> None:
    d, _ = known_profile
    est = _estimate_record()
    fig = F.timeline_figure(d, est)
    predicted_ax, measured_ax = fig.axes
    assert predicted_ax.get_title(loc="left") == "predicted" and measured_ax.get_title(loc="left") == "measured"
    total = [line for line in measured_ax.get_lines() if line.get_label() == "total"][0]
    points = data.measured_timeline(d)
    assert list(total.get_ydata())[:-1] == [p["allocated"] for p in points]
    assert list(total.get_xdata())[:-1] == [p["seq"] for p in points]
    ptotal = [line for line in predicted_ax.get_lines() if line.get_label() == "total"][0]
    assert list(ptotal.get_ydata()) == [18000, 30000, 16000, 16000]  # 3 segments, the last extended
    legend = [t.get_text() for t in predicted_ax.get_legend().get_texts()]
    assert legend == ["total", "temporary", "activations", "optimizer states", "gradients", "parameters"]
    # panels share the byte axis
    assert predicted_ax.get_ylim() == measured_ax.get_ylim()
    with pytest.raises(ValueError, match="no timeline"):
        F.timeline_figure({"timeline": None}, None)


def test_optimizer_bars_are_grouped_by_family() -> None:
    rows = [
        {"family": "first-order stochastic", "optimizer": "sgd", "state_bytes_per_param": 0.0},
        {"family": "first-order stochastic", "optimizer": "sgd-momentum", "state_bytes_per_param": 4.0},
        {"family": "first-order adaptive", "optimizer": "adamw", "state_bytes_per_param": 8.0},
        {"family": "tuning-free", "optimizer": "prodigy", "state_bytes_per_param": 16.0},
    ]
    ax = F.optimizer_bytes_figure(rows).axes[0]
    widths = {c.get_label(): [r.get_width() for r in c] for c in ax.containers}
    assert widths == {"first-order stochastic": [0.0, 4.0], "first-order adaptive": [8.0], "tuning-free": [16.0]}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sgd", "sgd-momentum", "adamw", "prodigy"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "first-order stochastic",
        "first-order adaptive",
        "tuning-free",
    ]


def test_optimizer_rows_of_the_registry_feed_the_figure() -> None:
    from memprof.estimators.optimizers import OPTIMIZERS
    from memprof.predict import optimizer_rows

    rows = optimizer_rows(
        "gpt2-124m",
        precision="32-true",
        batch_size=1,
        seq_len=64,
        checkpointing="none",
        attention="auto",
        device="cpu",
        gpu=None,
        gpus=1,
        zero=0,
        offload="none",
    )
    ax = F.optimizer_bytes_figure(rows).axes[0]
    drawn = sorted(t.get_text() for t in ax.get_yticklabels())
    assert drawn == sorted(OPTIMIZERS)
    adamw = [r for r in rows if r["optimizer"] == "adamw"][0]
    widths = {t.get_text(): r.get_width() for t, r in zip(ax.get_yticklabels(), [r for c in ax.containers for r in c])}
    # AdamW on the CPU: exp_avg + exp_avg_sq (8 B) plus one 4-byte `step` per parameter tensor
    assert widths["adamw"] == adamw["state_bytes_per_param"]
    assert 8.0 < widths["adamw"] < 8.001


def test_peak_sweep_figure_draws_one_line_per_gpu() -> None:
    sweep = {
        "model": "m",
        "axis": "batch_size",
        "values": [1, 2, 4, 8],
        "peaks": [10, 20, 40, 80],
        "measure": "device_total",
        "settings": {"optimizer": "adamw", "precision": "bf16-mixed", "checkpointing": "none", "attention": "sdpa"},
        "gpus": [{"name": "a", "memory": 60, "usable": 50}, {"name": "b", "memory": 100, "usable": 90}],
    }
    ax = F.peak_sweep_figure(sweep).axes[0]
    lines = {line.get_gid(): line for line in ax.get_lines()}
    assert list(lines["peak"].get_xdata()) == [1, 2, 4, 8]
    assert list(lines["peak"].get_ydata()) == [10, 20, 40, 80]
    assert [list(lines[f"gpu:{n}"].get_ydata()) for n in "ab"] == [[50, 50], [90, 90]]
    assert len(ax.get_lines()) == 1 + len(sweep["gpus"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "predicted peak (device total)",
        "a: 50 B usable",
        "b: 90 B usable",
    ]
    assert data.largest_fitting(sweep) == {"a": 4, "b": 8}
    # several sweeps share the axes: one curve each, named by the setting that differs, GPUs once
    other = {**sweep, "peaks": [5, 6, 7, 8], "settings": {**sweep["settings"], "optimizer": "sgd"}}
    ax = F.peak_sweep_figure([sweep, other]).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [
        "predicted peak (device total): optimizer adamw",
        "predicted peak (device total): optimizer sgd",
        "a: 50 B usable",
        "b: 90 B usable",
    ]
    assert list(ax.get_lines()[1].get_ydata()) == [5, 6, 7, 8]


def test_peak_sweep_of_a_preset_uses_the_estimate_and_the_gpu_presets() -> None:
    sweep = data.peak_sweep("gpt2-124m", [1, 2, 4], gpu_presets=["a100-40gb", "h100-80gb"])
    for value, peak in zip(sweep["values"], sweep["peaks"]):
        assert peak == estimate("gpt2-124m", batch_size=value).to_dict()["peak"][sweep["measure"]]
    assert sweep["peaks"] == sorted(sweep["peaks"]) and sweep["peaks"][0] < sweep["peaks"][-1]
    for gpu in sweep["gpus"]:
        assert gpu["usable"] == estimate("gpt2-124m", gpu=gpu["name"]).to_dict()["gpu"]["usable"]
    with pytest.raises(memprof.MemprofUserError, match="sweep axis"):
        data.peak_sweep("gpt2-124m", [1], axis="layers")


# -- memprof report --------------------------------------------------------------------------------
def test_report_png_and_html(known_profile, tmp_path, capsys) -> None:
    _d, path = known_profile
    est_path = tmp_path / "est.json"
    est_path.write_text(json.dumps(_estimate_record()))
    png = tmp_path / "r.png"
    assert main(["report", str(path), "--estimate", str(est_path), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    html = tmp_path / "r.html"
    assert main(["report", str(path), "--estimate", str(est_path), "--out", str(html)]) == 0
    text = html.read_text()
    assert text.count("src='data:image/png;base64,") == 1 and "http" not in text.replace("http-equiv", "")
    # the breakdown table: predicted 12,000 B of activations against 4,000 measured
    assert (
        f"<td>peak</td><td>activations</td><td>{format_bytes(12000)}</td><td>{format_bytes(4000)}</td>"
        f"<td>+{format_bytes(8000)}</td><td>+200.0%</td>"
    ) in text
    assert "<td>momentum_buffer</td>" in text
    capsys.readouterr()
    # without --out: the table as text
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "allocated" in out and format_bytes(20000) in out


def test_report_of_a_real_estimate_and_profile(tmp_path, capsys) -> None:
    from memprof.tiny_models import batch, build, train_step

    model, spec = build("gpt2")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = batch("gpt2", 2, 32)
    train_step(model, opt, inputs, False)
    with memprof.track(model, opt) as run:
        train_step(model, opt, {k: v.clone() for k, v in inputs.items()}, False)
    prof = tmp_path / "p.json"
    run.save(prof)
    est = estimate(spec, "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", attention="eager").to_dict()
    est_path = tmp_path / "e.json"
    est_path.write_text(json.dumps(est))
    out = tmp_path / "r.png"
    assert main(["report", str(prof), "--estimate", str(est_path), "--out", str(out)]) == 0
    bars = data.comparison_bars(run.to_dict(), est)
    # model states are exact on both sides
    for cat in ("parameters", "optimizer_states"):
        assert bars["bars"]["predicted"][cat] == bars["bars"]["measured"][cat]
    fig = page.report_figure(run.to_dict(), est)
    assert [ax.get_title(loc="left") for ax in fig.axes[1:]] == ["predicted", "measured"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("corrupt", "not readable JSON"),
        ("not_a_profile", "is not a memprof profile"),
        ("bad_extension", "must end in .png or .html"),
        ("no_folder", "does not exist"),
        ("estimate_not_json", "not a memprof estimate (not readable JSON"),
        ("estimate_not_estimate", "is not a memprof estimate (it is a 'memprof.profile/1' record)"),
        ("estimate_not_a_dict", "is not a memprof estimate (expected a memprof Estimate"),
        ("other_model", "of the same model"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(known_profile, tmp_path, capsys, case, message) -> None:
    _, good = known_profile
    prof, est, out = str(good), None, tmp_path / "r.png"
    if case == "missing":
        prof = str(tmp_path / "nope.json")
    elif case == "corrupt":
        (tmp_path / "c.json").write_text('{"schema": "memprof.profile/1", "peak": {')
        prof = str(tmp_path / "c.json")
    elif case == "not_a_profile":
        (tmp_path / "e.json").write_text(json.dumps(_estimate_record()))
        prof = str(tmp_path / "e.json")
    elif case == "bad_extension":
        out = tmp_path / "r.pdf"
    elif case == "no_folder":
        out = tmp_path / "missing" / "r.png"
    elif case == "estimate_not_json":
        (tmp_path / "e.json").write_text("model: gpt2")
        est = str(tmp_path / "e.json")
    elif case == "estimate_not_estimate":
        est = str(good)
    elif case == "estimate_not_a_dict":
        (tmp_path / "e.json").write_text("[1, 2]")
        est = str(tmp_path / "e.json")
    elif case == "other_model":
        (tmp_path / "e.json").write_text(json.dumps(_estimate_record(params=999)))
        est = str(tmp_path / "e.json")
    before = set(tmp_path.rglob("*"))
    args = ["report", prof, "--out", str(out)] + (["--estimate", est] if est else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert set(tmp_path.rglob("*")) == before


def test_import_memprof_and_reports_load_no_matplotlib() -> None:
    code = (
        "import sys, memprof, memprof.reports, memprof.reports.data; "
        "print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- figures a person reads: every band named, axes that say what they are, lines told apart ----------
def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_the_report_legend_names_every_band_drawn_even_one_absent_at_the_peak(known_profile) -> None:
    # GIVEN a profile whose peak holds no gradients while its timeline does (a peak in the first forward)
    d, _ = known_profile
    prof = json.loads(json.dumps(d))
    prof["peak"]["by_category"]["gradients"] = 0
    assert any(p["by_category"].get("gradients") for p in prof["timeline"])
    # WHEN the report figure is drawn THEN its one legend names the gradient band and the total line
    fig = page.report_figure(prof, _estimate_record())
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    names = [t.get_text() for t in legends[0].get_texts()]
    assert names == ["total", "temporary", "activations", "optimizer states", "gradients", "parameters"]


def test_the_timeline_legend_names_a_band_only_one_panel_draws(known_profile) -> None:
    d, _ = known_profile
    est = _estimate_record()
    est["timeline"] = [
        {"phase": p["phase"], "label": p["label"], "by_category": {"parameters": 4000}} for p in est["timeline"]
    ]
    predicted_ax, measured_ax = F.timeline_figure(d, est).axes
    assert measured_ax.get_legend() is None
    assert _legend(predicted_ax) == ["total", "temporary", "activations", "optimizer states", "gradients", "parameters"]


def test_timeline_axes_say_what_x_is_and_mark_each_phase(known_profile) -> None:
    d, _ = known_profile
    predicted_ax, measured_ax = F.timeline_figure(d, _estimate_record()).axes
    assert "allocation events" in measured_ax.get_xlabel() and "not time" in measured_ax.get_xlabel()
    assert predicted_ax.get_xlabel().startswith("moments of the simulated step")
    for ax, points in ((measured_ax, data.measured_timeline(d)), (predicted_ax, _estimate_record()["timeline"])):
        starts = [phase for phase, first, _ in data.phase_spans(p["phase"] for p in points) if first > 0]
        marks = [line.get_gid() for line in ax.get_lines() if (line.get_gid() or "").startswith("phase:")]
        assert marks == [f"phase:{phase}" for phase in starts] and marks
        # and each phase is named on the panel
        texts = {t.get_text().strip() for t in ax.texts}
        assert {F.PHASE_LABELS[p] for p in starts} <= texts


def test_overlapping_sweep_curves_differ_in_marker_and_style() -> None:
    base = {
        "model": "m",
        "axis": "batch_size",
        "values": [1, 2, 4],
        "peaks": [10, 20, 40],  # identical curves: only their styles tell them apart
        "measure": "device_total",
        "settings": {"optimizer": "adamw", "precision": "bf16-mixed", "checkpointing": "none", "attention": "sdpa"},
        "gpus": [{"name": "a", "memory": 60, "usable": 50}, {"name": "b", "memory": 100, "usable": 90}],
    }
    sweeps = [{**base, "settings": {**base["settings"], "optimizer": name}} for name in ("adamw", "sgd", "lion")]
    ax = F.peak_sweep_figure(sweeps).axes[0]
    curves = [line for line in ax.get_lines() if line.get_gid().startswith("peak")]
    gpus = [line for line in ax.get_lines() if line.get_gid().startswith("gpu:")]
    assert len({(c.get_marker(), str(c.get_linestyle())) for c in curves}) == len(curves) == 3
    assert len({c.get_marker() for c in curves}) == 3
    # matplotlib reports any dash tuple as "--"; the pattern itself tells the GPU lines apart
    assert len({str(g._unscaled_dash_pattern) for g in gpus}) == 2
