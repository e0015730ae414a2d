"""`memprof validate --trace`: the analytic estimate against the traced step at full size, and the README
table rendered from its record (profiles/measurements/validation-trace-full.json).

The end-to-end test runs the quick matrix (gpt2-124m on cpu and cuda, seconds) through the CLI; a
disagreement is injected by handing the runner a patched estimator, never by touching a measurement.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import pytest

from memprof.cli import main
from memprof.estimators.errors import MemprofUserError
from memprof.profiles import data_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import render_trace_accuracy  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")

import memprof.validate_trace as vt  # noqa: E402


def test_quick_matrix_end_to_end_through_the_cli(tmp_path, capsys):
    out = tmp_path / "trace.json"
    code = main(["validate", "--trace", "--quick", "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    cases = vt.quick_matrix()
    assert code == 0, "\n".join(printed)
    lines = [ln for ln in printed if ln.startswith(("pass", "fail", "not run", "error"))]
    assert len(lines) == len(cases) and all(ln.startswith("pass") for ln in lines)
    record = vt.load_record(out)
    assert record["schema"] == vt.SCHEMA and record["subset"] == "quick"
    assert record["tolerance"]["peak_allocated_pct"] == vt.PEAK_TOLERANCE_PCT == 0.5
    assert {c["device"] for c in record["cases"]} == {"cpu", "cuda"}
    for c in record["cases"]:
        assert c["status"] == "pass" and vt.states_exact(c)
        assert set(c["rows"]) >= {f"model_states.{k}" for k in vt.STATES} | {"peak.allocated"}
        peak = c["rows"]["peak.allocated"]
        assert peak["diff_bytes"] == peak["analytic"] - peak["traced"] and abs(peak["diff_pct"]) <= 0.5
        assert set(c["phase"]) == {"analytic", "traced"}
        assert set(c["peak_by_category"]["analytic"]) == set(c["peak_by_category"]["traced"])
    s = record["summary"]
    assert s["cases"] == s["pass"] == s["compared"] == s["model_states_exact"] == len(cases)
    # the renderer reads it
    assert f"**{len(cases)} of {len(cases)} cases pass" in render_trace_accuracy.render(record)


def _inflated(factor: float):
    from memprof.predict import estimate

    def patched(*args, **kwargs):
        est = estimate(*args, **kwargs)
        peak = dataclasses.replace(est.record.peak, allocated=int(est.record.peak.allocated * factor))
        return dataclasses.replace(est, record=dataclasses.replace(est.record, peak=peak))

    return patched


def test_a_disagreement_beyond_tolerance_fails_and_exits_1(monkeypatch, capsys):
    case = vt.Case("gpt2-124m", "cpu")
    result = vt.run_case(case, estimate_fn=_inflated(1.01))
    assert result["status"] == "fail" and vt.states_exact(result)
    assert result["rows"]["peak.allocated"]["diff_pct"] == pytest.approx(1.0, abs=0.01)
    # through the CLI: the runner is handed the patched estimator
    monkeypatch.setattr(vt, "run_matrix", functools.partial(vt.run_matrix, estimate_fn=_inflated(1.01)))
    code = main(["validate", "--trace", "--quick", "--only", "gpt2-124m-cpu"])
    out = capsys.readouterr()
    assert code == 1
    assert out.out.splitlines()[1].startswith("fail") and "beyond tolerance" in out.err


def test_the_tracer_refusing_a_case_is_not_run():
    result = vt.run_case(vt.Case("gpt2-124m", "cuda", optimizer="lbfgs"))
    assert result["status"] == "not run" and "closure" in result["error"]
    assert vt.summarize([result])["not_run"] == 1


def test_full_matrix_covers_every_preset_on_both_devices_and_the_axes():
    from memprof.estimators.models import preset_names

    cases = vt.full_matrix()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    base = {(c.preset, c.device) for c in cases if (c.optimizer, c.precision) == ("adamw", "bf16-mixed")}
    assert base >= {(p, d) for p in preset_names() for d in ("cpu", "cuda")}
    assert {c.precision for c in cases} >= {"32-true", "bf16-mixed", "bf16-true"}
    assert {c.optimizer for c in cases} >= {"adamw", "sgd", "adafactor", "lion"}
    assert {c.attention for c in cases} >= {"eager", "auto"} and "full" in {c.checkpointing for c in cases}
    assert any((c.seq_len or 0) >= 8192 for c in cases)
    with pytest.raises(MemprofUserError, match="matches no case"):
        vt.select_cases(cases, ["no-such-case"])


def test_recorded_full_run_and_readme_block_match():
    record = vt.load_record(data_path("measurements", vt.DEFAULT_FILE))
    assert record["subset"] == "full" and record["summary"] == vt.summarize(record["cases"])
    assert {c["id"] for c in record["cases"]} == {c.id for c in vt.full_matrix()}
    assert render_trace_accuracy.main(["--check"]) == 0


def test_check_fails_on_a_stale_block(tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(render_trace_accuracy.START) + len(render_trace_accuracy.START)
    readme.write_text(text[:start] + "\nstale\n" + text[text.index(render_trace_accuracy.END) :], encoding="utf-8")
    argv = ["--readme", str(readme)]
    assert render_trace_accuracy.main([*argv, "--check"]) == 1
    assert render_trace_accuracy.main(argv) == 0
    assert render_trace_accuracy.main([*argv, "--check"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}), encoding="utf-8")
    assert render_trace_accuracy.main([*argv, "--record", str(bad)]) == 2
