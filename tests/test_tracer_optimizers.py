"""`memprof optimizers MODULE:FACTORY` on a workload memprof traces: every registry optimizer side by
side, each row the workload's step traced with the optimizer's real implementation; optimizers the tracer
cannot run keep their row with the reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

import memprof
from memprof.cli import main

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import tracer_models  # noqa: E402

MODEL = f"{TESTS / 'tracer_models.py'}:tiny_workload"


@pytest.fixture(scope="module")
def rows():
    from memprof.tracer import traced_optimizer_rows

    rows, assumptions = traced_optimizer_rows(MODEL, precision="32-true", device="cpu")
    assert assumptions is not None and assumptions.settings.precision == "32-true"
    return {r["optimizer"]: r for r in rows}


def test_every_registry_optimizer_has_a_row_grouped_by_family(rows):
    from memprof.estimators.optimizers import OPTIMIZERS

    assert set(rows) == set(OPTIMIZERS)
    for name, row in rows.items():
        assert row["family"] == OPTIMIZERS[name].family.value


def test_rows_are_the_traces_of_each_optimizer_to_the_byte(rows):
    model = tracer_models.tiny_workload()["model"]
    params, tensors = sum(p.numel() for p in model.parameters()), len(list(model.parameters()))
    for name in ("sgd", "adamw", "lion"):
        alone = memprof.trace(MODEL, name, "32-true", device="cpu").record
        assert rows[name]["optimizer_states"] == alone.model_states.optimizer_states
        assert rows[name]["peak"] == alone.peak.device_total
        assert rows[name]["note"] == "traced"
    assert rows["sgd"]["optimizer_states"] == 0
    # AdamW on the CPU: exp_avg and exp_avg_sq in float32, and a float32 step counter per tensor
    assert rows["adamw"]["optimizer_states"] == 8 * params + 4 * tensors


def test_untraceable_optimizers_say_why(rows):
    assert rows["lbfgs"]["peak"] is None and "closure" in rows["lbfgs"]["note"]
    assert rows["ga"]["peak"] is None and "analytic only" in rows["ga"]["note"]


def test_the_cli_prints_the_table_and_the_reasons(capsys):
    assert main(["optimizers", MODEL, "--precision", "32-true", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "first-order adaptive" in out and "adamw" in out
    assert "lbfgs: not traced:" in out and "closure" in out
    assert main(["optimizers", MODEL, "--precision", "32-true", "--device", "cpu", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["optimizer"] for r in data} >= {"adamw", "lbfgs"}
