"""Predicted vs measured: memprof.comparison, Profile.compare() (the observed estimate), the CLI doors.

Real tiny models trained on the CPU under memprof.track; model states must agree to the byte.
"""

from __future__ import annotations

import json
import math
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pandas")

import memprof  # noqa: E402
from memprof.cli import main  # noqa: E402
from memprof.comparison import (  # noqa: E402
    comparison_frame,
    format_comparison,
    frame_records,
    precision_of,
    registry_optimizer,
)
from memprof.estimators.errors import MemprofUserError  # noqa: E402
from memprof.estimators.estimation import estimate  # noqa: E402
from memprof.estimators.vocabulary import CATEGORIES, MODEL_STATE_CATEGORIES  # noqa: E402
from memprof.tiny_models import batch, build, train_step  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def _profiled(family="gpt2", attention="eager", autocast=False, make_opt=None, checkpointing=False):
    """A tiny model after one warm step, then one step under memprof.track: (profile, spec, model)."""
    model, spec = build(family, attention)
    if checkpointing:
        model.gradient_checkpointing_enable()
    opt = (make_opt or (lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)))(model)
    train_step(model, opt, batch(family, 2, 32), autocast)
    with memprof.track(model, opt) as run:
        inputs = batch(family, 2, 32)
        train_step(model, opt, inputs, autocast)
        del inputs
    return run, spec, model


@pytest.fixture(scope="module")
def gpt2_run():
    return _profiled()


def test_compare_lines_up_every_category_and_model_states_are_exact(gpt2_run) -> None:
    run, spec, _ = gpt2_run
    est = estimate(spec, "adamw", "32-true", batch_size=2, seq_len=32, attention="eager", device="cpu")
    table = memprof.compare(est, run)
    assert list(table.columns) == ["predicted", "measured", "error_bytes", "error_pct", "note"]
    assert [c for s, c in table.index if s == "peak"] == [*CATEGORIES, "allocated", "reserved", "device_total"]
    n = spec.num_parameters
    n_tensors = len(spec.parameter_tensors())
    # model states: 4 B per parameter each, AdamW: 2 x 4 B + a 4-byte step per tensor
    expected = {"parameters": 4 * n, "gradients": 4 * n, "optimizer_states": 8 * n + 4 * n_tensors}
    for cat in MODEL_STATE_CATEGORIES:
        row = table.loc[("model_states", cat)]
        assert row["measured"] == row["predicted"] == expected[cat]
        assert row["error_bytes"] == 0 and row["error_pct"] == 0.0
    assert table.loc[("model_states", "total"), "measured"] == sum(expected.values())
    # a CPU run has no allocator cache and no CUDA context: missing, never 0, and said so
    for key in ("cuda_context", "fragmentation", "reserved", "device_total"):
        row = table.loc[("peak", key)]
        assert row["measured"] is torch_na() and math.isnan(row["error_pct"])
        assert "not measured on CPU" in row["note"]
    peak = table.loc[("peak", "allocated")]
    assert peak["measured"] == run.to_dict()["peak"]["allocated"]
    if peak["predicted"] is not torch_na():  # the peak estimate is complete
        assert abs(peak["error_pct"]) <= 3.0
        assert peak["error_bytes"] == peak["predicted"] - peak["measured"]


def torch_na():
    import pandas as pd

    return pd.NA


def test_dicts_and_objects_compare_the_same(gpt2_run, tmp_path) -> None:
    run, spec, _ = gpt2_run
    est = estimate(spec, "adamw", "32-true", batch_size=2, seq_len=32, attention="eager", device="cpu")
    path = run.save(tmp_path / "p.json")
    a = memprof.compare(est, run)
    for other in (memprof.compare(est.to_dict(), run.to_dict()), memprof.compare(est, str(path))):
        assert frame_records(other) == frame_records(a)


def test_profile_compare_builds_the_estimate_from_what_it_observed() -> None:
    # GIVEN bf16 autocast, AdamW with amsgrad and HF gradient checkpointing
    run, spec, _ = _profiled(
        "llama",
        "sdpa",
        autocast=True,
        checkpointing=True,
        make_opt=lambda m: torch.optim.AdamW(m.parameters(), amsgrad=True),
    )
    table = run.compare()
    # THEN the inferred settings are the run's
    assert table.attrs["observed"] == {
        "optimizer": "adamw",
        "precision": "bf16-mixed",
        "batch_size": 2,
        "seq_len": 32,
        "checkpointing": "full",
        "attention": "sdpa",
        "device": "cpu",
        "amsgrad": True,
    }
    assert table.attrs["missing"] == []
    n, k = spec.num_parameters, len(spec.parameter_tensors())
    assert table.loc[("model_states", "optimizer_states"), "measured"] == 12 * n + 4 * k  # + max_exp_avg_sq
    for cat in MODEL_STATE_CATEGORIES:
        assert table.loc[("model_states", cat), "error_bytes"] == 0


def test_bf16_true_and_vit_shapes_are_inferred() -> None:
    model, _spec = build("vit", "eager")
    model.to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with memprof.track(model, opt) as run:
        train_step(model, opt, batch("vit", 4, 0, dtype=torch.bfloat16), False)
    obs = run.compare().attrs["observed"]
    assert obs["precision"] == "bf16-true" and obs["optimizer"] == "sgd-momentum"
    assert obs["batch_size"] == 4 and obs["seq_len"] is None  # a ViT's sequence comes from its config


class Doubler(torch.optim.Optimizer):
    """An optimizer memprof has never heard of: one buffer per parameter."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.01})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    buf = self.state[p].setdefault("buf", torch.zeros_like(p))
                    buf.add_(p.grad)
                    p.sub_(group["lr"] * buf)


def test_unknown_optimizer_still_reports_measured_bytes_and_says_the_prediction_is_missing() -> None:
    run, spec, _ = _profiled(make_opt=lambda m: Doubler(m.parameters()))
    table = run.compare()
    row = table.loc[("model_states", "optimizer_states")]
    assert row["measured"] == 4 * spec.num_parameters
    assert row["predicted"] is torch_na() and math.isnan(row["error_pct"])
    assert "is not in memprof's registry" in row["note"] and "Doubler" in row["note"]
    assert table.loc[("peak", "allocated"), "predicted"] is torch_na()
    # parameters and gradients do not depend on the optimizer: still predicted, exactly
    for cat in ("parameters", "gradients"):
        assert table.loc[("model_states", cat), "error_bytes"] == 0


def test_a_model_without_a_config_gets_model_states_from_its_parameter_tensors() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    model[2].weight.requires_grad_(False)  # frozen: no gradient, no optimizer state
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    with memprof.track(model, opt, capture=False) as run:  # no step kept: no trace
        for _ in range(2):
            model(torch.ones(8, 16)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    table = run.compare()
    trainable = 16 * 32 + 32 + 4
    assert table.loc[("model_states", "parameters"), "predicted"] == 4 * (trainable + 32 * 4)
    assert table.loc[("model_states", "gradients"), "predicted"] == 4 * trainable
    assert table.loc[("model_states", "optimizer_states"), "predicted"] == 8 * trainable + 4 * 3
    for cat in MODEL_STATE_CATEGORIES:
        assert table.loc[("model_states", cat), "error_bytes"] == 0
    note = table.loc[("peak", "allocated"), "note"]
    assert "has no Hugging Face config" in note and "peak not predicted" in note


def test_estimate_and_profile_of_different_models_name_both(gpt2_run) -> None:
    run, _, _ = gpt2_run
    with pytest.raises(
        MemprofUserError,
        match=r"'gpt2-124m' \(124,439,808 parameters\).*'GPT2LMHeadModel' "
        r"\(116,480 parameters\)",
    ):
        memprof.compare(estimate("gpt2-124m", device="cpu", batch_size=2, seq_len=32), run)


def test_other_schema_and_corrupt_profiles_are_refused(gpt2_run, tmp_path) -> None:
    run, spec, _ = gpt2_run
    est = estimate(spec, "adamw", "32-true", batch_size=2, seq_len=32, device="cpu")
    other = {**run.to_dict(), "schema": "memprof.profile/0"}
    with pytest.raises(MemprofUserError, match=r"schema is 'memprof.profile/0', expected 'memprof.profile/1'"):
        memprof.compare(est, other)
    with pytest.raises(MemprofUserError, match="corrupt memprof profile: missing peak"):
        memprof.compare(est, {k: v for k, v in run.to_dict().items() if k != "peak"})
    with pytest.raises(MemprofUserError, match="expected a memprof Estimate"):
        memprof.compare({"model": "x"}, run)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_compare_bad_files_are_one_line_exit_2(gpt2_run, tmp_path, capsys) -> None:
    run, _, _ = gpt2_run
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema": "memprof.profile/1", "settings": ')
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**run.to_dict(), "schema": "memprof.profile/0"}))
    good = run.save(tmp_path / "good.json")
    other_model = tmp_path / "est.json"
    assert main(["estimate", "gpt2-124m", "--device", "cpu", "--format", "json"]) == 0
    other_model.write_text(capsys.readouterr().out)
    for argv, message in (
        ([str(corrupt)], "is not a memprof profile (not readable JSON"),
        ([str(old)], "schema is 'memprof.profile/0'"),
        ([str(good), "--estimate", str(other_model)], "124,439,808 parameters"),
    ):
        code, out, err = _cli(capsys, "compare", *argv)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("memprof: error: ") and message in err


def test_cli_compare_prints_the_table_of_a_saved_profile(gpt2_run, tmp_path, capsys) -> None:
    run, _, _ = gpt2_run
    path = run.save(tmp_path / "p.json")
    code, out, _err = _cli(capsys, "compare", str(path), "--format", "json")
    assert code == 0
    rows = {(r["scope"], r["category"]): r for r in json.loads(out)["rows"]}
    assert rows[("model_states", "optimizer_states")]["error_bytes"] == 0
    assert rows[("model_states", "optimizer_states")]["measured"] == run.to_dict()["model_states"]["optimizer_states"]


SCRIPT = textwrap.dedent("""
    import torch
    from torch import nn

    class Doubler(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(lr=0.01))

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    self.state[p].setdefault("buf", torch.zeros_like(p)).add_(p.grad)

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))   # 676 parameters
    opt = OPTIMIZER
    for _ in range(2):
        model(torch.ones(8, 16)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
""")


@pytest.mark.parametrize(
    "optimizer, states",
    # Doubler is in no registry: its states and the peak are predicted by tracing the run's step (memprof.tracer.live)
    [("torch.optim.Adam(model.parameters())", 8 * 676 + 4 * 4), ("Doubler(model.parameters())", 4 * 676)],
)
def test_run_compare_prints_predicted_vs_measured(tmp_path, capsys, optimizer, states) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.replace("OPTIMIZER", optimizer))
    code, out, _err = _cli(capsys, "run", "--compare", str(script))
    assert code == 0
    table = out[out.index("predicted vs measured: Sequential") :]
    line = next(ln for ln in table.splitlines() if ln.startswith("model_states  optimizer_states"))
    assert "+0 B   +0.00%" in line
    code, out, _err = _cli(capsys, "run", "--compare", "--format", "json", str(script))
    rows = {(r["scope"], r["category"]): r for r in json.loads(out)["comparison"]}
    assert rows[("model_states", "optimizer_states")]["predicted"] == states
    assert rows[("model_states", "optimizer_states")]["measured"] == states


def test_format_comparison_renders_plain_records() -> None:
    # GIVEN plain dicts (no torch objects)
    est = {
        "model": "m",
        "parameters": 10,
        "settings": {"device": "cpu"},
        "model_states": {"parameters": 40, "gradients": 40, "optimizer_states": 80},
        "peak": {
            "phase": "backward",
            "allocated": 2048,
            "reserved": 2048,
            "device_total": 2048,
            "by_category": {"activations": 1000},
        },
    }
    prof = {
        "schema": "memprof.profile/1",
        "device": "cpu",
        "mode": "attribution",
        "settings": {"model": "m", "parameters": 10},
        "model_states": {"parameters": 40, "gradients": 40, "optimizer_states": 84},
        "peak": {"phase": "optimizer_step", "allocated": 1024, "by_category": {"activations": 1000}},
    }
    lines = format_comparison(comparison_frame(est, prof)).splitlines()
    assert lines[0] == "predicted vs measured: m"
    assert lines[4].split() == ["model_states", "optimizer_states", "80", "B", "84", "B", "-4", "B", "-4.76%"]
    assert lines[-3].split() == [
        "peak",
        "allocated",
        "2.00",
        "KiB",
        "1.00",
        "KiB",
        "+1.00",
        "KiB",
        "+100.00%",
        "predicted",
        "in",
        "backward,",
        "measured",
        "in",
        "optimizer_step",
    ]
    assert lines[-2].endswith("not measured on CPU")


def test_registry_and_precision_mapping() -> None:
    assert registry_optimizer("torch.optim.adamw.AdamW") == "adamw"
    assert registry_optimizer("torch.optim.sgd.SGD", {"momentum": 0}) == "sgd"
    assert registry_optimizer("torch.optim.sgd.SGD", {"momentum": 0.9}) == "sgd-momentum"
    assert registry_optimizer("pytorch_optimizer.optimizer.lion.Lion") == "lion"
    assert registry_optimizer("galore_torch.adamw.AdamW") == "galore"  # exported as GaLoreAdamW
    assert registry_optimizer("bitsandbytes.optim.adamw.AdamW8bit") == "adamw8bit"
    assert registry_optimizer("mypkg.optim.AdamW") is None
    assert precision_of({"float32": 10}, None) == "32-true"
    assert precision_of({"float32": 10}, "bfloat16") == "bf16-mixed"
    assert precision_of({"float32": 10}, "float16") == "16-mixed"
    assert precision_of({"bfloat16": 10, "float32": 2}, None) == "bf16-true"
    assert precision_of({"float16": 10}, None) == "16-true"
    assert precision_of({"float64": 10}, None) is None


def test_hyperparameters_that_change_the_step_temporaries_are_passed_on() -> None:
    # Adam's coupled weight decay allocates grad.add(param) per parameter inside step()
    run, _, _ = _profiled(make_opt=lambda m: torch.optim.Adam(m.parameters(), weight_decay=0.1))
    table = run.compare()
    assert table.attrs["observed"]["optimizer"] == "adam"
    peak = table.loc[("peak", "allocated")]
    if table.attrs["missing"]:  # the estimator does not take weight_decay yet: said, not hidden
        assert table.attrs["missing"] == [
            "the estimator does not take {'weight_decay': 0.1}: the step's "
            "temporaries are predicted for the registry defaults"
        ]
    else:
        assert peak["predicted"] is not torch_na() and abs(peak["error_pct"]) <= 3.0
    for cat in MODEL_STATE_CATEGORIES:
        assert table.loc[("model_states", cat), "error_bytes"] == 0


def test_a_region_without_a_model_compares_to_nothing_and_says_so() -> None:
    with memprof.track() as run:
        torch.ones(10)
    table = run.compare()
    assert table["predicted"].isna().all()
    assert table.loc[("peak", "allocated"), "measured"] == 40
    assert table.attrs["missing"] == ["no model was seen (pass it to memprof.track): nothing to predict"]
    assert table.loc[("model_states", "parameters"), "note"] == table.attrs["missing"][0]
