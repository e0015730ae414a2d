"""`memprof validate --workloads`: the example workloads trained for real on the CPU against the tracer,
its record and the README block scripts/render_workload_accuracy.py renders from it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from memprof import validate_workloads as vw
from memprof.profiles import data_path

ROOT = Path(__file__).resolve().parent.parent


def _renderer():
    spec = importlib.util.spec_from_file_location(
        "render_workload_accuracy", ROOT / "scripts" / "render_workload_accuracy.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_case_is_measured_and_traced_twice_to_the_byte():
    # the CNN: a loss outside the model, torch's AdamW from the registry
    r = vw.run_case(vw.Case("algoperf/imagenet_resnet.py", optimizer="adamw"))
    assert r["status"] == "pass", r
    for predictor in ("traced", "live"):
        rows = r[predictor]["rows"]
        assert (
            rows["peak.allocated"]["predicted"] == rows["peak.allocated"]["measured"] == r["measured"]["peak_allocated"]
        )
        assert rows["optimizer_state_keys"] == {"exact": True, "diff": {}}


def test_the_recorded_matrix_is_the_full_one_and_passes():
    record = vw.load_record(data_path("measurements", vw.DEFAULT_FILE))
    assert record["schema"] == vw.SCHEMA and record["subset"] == "full"
    assert [c["id"] for c in record["cases"]] == [c.id for c in vw.full_matrix()]
    assert record["summary"] == vw.summarize(record["cases"])
    for predictor in ("traced", "live"):
        s = record["summary"][predictor]
        assert s["compared"] == s["states_exact"] == s["peak_within_tolerance"] == len(record["cases"])


def test_the_readme_block_renders_and_checks(tmp_path, capsys):
    render = _renderer()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{render.START}\nstale\n{render.END}\n", encoding="utf-8")
    assert render.main(["--readme", str(readme), "--check"]) == 1
    assert render.main(["--readme", str(readme)]) == 0
    assert render.main(["--readme", str(readme), "--check"]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "| nanogpt, seq_len 32, batch 2 | its own | 32-true |" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}), encoding="utf-8")
    assert render.main(["--readme", str(readme), "--record", str(bad)]) == 2
    assert "not a workload validation record" in capsys.readouterr().err


def test_only_selects_and_refuses_what_matches_nothing():
    assert [c.id for c in vw.select_cases(vw.full_matrix(), ["ogbg"])] == ["ogbg-adamw-32-true-b2"]
    with pytest.raises(vw_errors().MemprofUserError, match="matches no case"):
        vw.select_cases(vw.full_matrix(), ["nothing-like-this"])


def vw_errors():
    from memprof.estimators import errors

    return errors
