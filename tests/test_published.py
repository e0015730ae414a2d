"""Published GPU measurements: the rows, their expression as memprof estimates, the score, the README block."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memprof.estimators.errors import RecordError
from memprof.published import METRICS, NotExpressible, express, load_published, published_files, score_published

ROOT = Path(__file__).resolve().parent.parent
RENDER = ROOT / "scripts" / "render_published.py"


@pytest.fixture(scope="module")
def rows():
    return load_published()


@pytest.fixture(scope="module")
def score():
    return score_published()


# ---------------------------------------------------------------- the rows


def test_benchmark_size_and_coverage(rows):
    # at least 60 rows across at least 6 sources, with allocated and reserved rows and OOM rows
    assert len(rows) >= 60
    assert len({r.source for r in rows}) >= 6
    metrics = {r.metric for r in rows}
    assert {"oom", "max_memory_reserved", "nvml_device_used"} <= metrics
    assert metrics & {"max_memory_allocated", "peak_active"}
    # sources that report the allocator's allocated (or active) and reserved figures for the same run
    by_source = {}
    for r in rows:
        by_source.setdefault(r.source, set()).add(r.metric)
    assert any({"peak_active", "max_memory_reserved"} <= m for m in by_source.values())
    assert any({"max_memory_allocated", "max_memory_reserved"} <= m for m in by_source.values())


def test_every_row_quotes_its_source(rows):
    for r in rows:
        assert r.get("quote") and r.source_url.startswith("https://"), r.id
        assert r.metric in METRICS
        if r.metric == "oom":
            assert r.measured_bytes is None
        else:
            assert r.measured_bytes > 0, r.id


def test_figures_as_typed_from_their_sources(rows):
    by_id = {r.id: r for r in rows}
    # "GPU memory occupied: 14949 MB." printed from info.used//1024**2 -> MiB
    assert by_id["hf-perf-vanilla"].measured_bytes == 14949 * 2**20
    # litgpt prints max_memory_allocated() / 1e9 with "GB"
    assert by_id["litgpt-lora-7b-llama-none-mb1-1gpu"].measured_bytes == 21_300_000_000
    # torchtitan: "24.81% peak active" of 95.0396 GiB
    assert by_id["torchtitan-165-fsdp1-ac-active"].measured_bytes == round(0.2481 * 95.0396 * 2**30)
    assert by_id["alpaca-189-a100-80gb"].get("at_oom")["reserved"] == "72.18 GiB"


def test_shipped_files_are_listed_in_the_schema_doc():
    doc = (ROOT / "profiles" / "published" / "README.md").read_text(encoding="utf-8")
    for path in published_files():
        assert f"`{path.name}`" in doc, path.name


# ---------------------------------------------------------------- malformed files


def _write(tmp_path, data):
    path = tmp_path / "src.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


GOOD_ROW = {"id": "r1", "quote": "x", "model": "gpt2", "metric": "max_memory_allocated", "value": 1.5, "unit": "GB"}
SOURCE = {"id": "s", "url": "https://example.org"}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"source": SOURCE, "rows": [GOOD_ROW]}, "exactly 'source', 'common' and 'rows'"),
        ({"source": {"id": "s"}, "common": {}, "rows": [GOOD_ROW]}, "source needs"),
        ({"source": SOURCE, "common": {}, "rows": [{**GOOD_ROW, "metric": "vram"}]}, "metric 'vram'"),
        ({"source": SOURCE, "common": {}, "rows": [{**GOOD_ROW, "unit": "gigs"}]}, "unit 'gigs'"),
        ({"source": SOURCE, "common": {}, "rows": [{**GOOD_ROW, "colour": "red"}]}, "unknown field"),
        (
            {"source": SOURCE, "common": {}, "rows": [{k: v for k, v in GOOD_ROW.items() if k != "quote"}]},
            "missing quote",
        ),
        ({"source": SOURCE, "common": {}, "rows": [{**GOOD_ROW, "batch_size": 0}]}, "batch_size"),
        ({"source": SOURCE, "common": {}, "rows": [{**GOOD_ROW, "value": -1}]}, "positive number"),
        ({"source": SOURCE, "common": {}, "rows": [{**GOOD_ROW, "metric": "oom"}]}, "value null"),
    ],
)
def test_malformed_rows_are_one_line_record_errors(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(RecordError, match=message) as info:
        load_published(path)
    assert "\n" not in str(info.value) and "src.json" in str(info.value)


def test_not_json_is_a_record_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad\.json: not a readable JSON file"):
        load_published(path)


def test_duplicate_ids_across_files(tmp_path):
    a = _write(tmp_path, {"source": SOURCE, "common": {}, "rows": [GOOD_ROW]})
    b = tmp_path / "b.json"
    b.write_text(a.read_text(), encoding="utf-8")
    with pytest.raises(RecordError, match="duplicate id 'r1'"):
        load_published(tmp_path)


# ---------------------------------------------------------------- expressing rows


def test_expression_of_a_documented_row(rows):
    by_id = {r.id: r for r in rows}
    how = express(by_id["hf-perf-fp16-ga-ckpt"])
    assert how.model == "bert-large-uncased"
    assert how.knobs["gpu"] == "v100-16gb"
    assert how.knobs["precision"] == "16-mixed" and how.knobs["optimizer"] == "adamw"
    assert (how.knobs["batch_size"], how.knobs["seq_len"], how.knobs["grad_accumulation"]) == (1, 512, 4)
    assert how.knobs["checkpointing"] == "full" and how.knobs["attention"] == "eager"
    assert how.knobs["cuda_version"] == "11.2"  # the driver's: eager kernel loading
    assert any(p.startswith("head:") for p in how.proxies)
    assert any(a.startswith("optimizer: adamw") for a in how.assumptions)


@pytest.mark.parametrize(
    "row_id, reason",
    [
        ("litgpt-lora-7b-llama-none-mb1-1gpu", "parameter-efficient finetuning"),
        ("peft-t0_3b-full", "metric not stated"),
        ("torchtitan-165-fsdp2-sac-reserved", "model not stated"),
        ("cookbook-413-a100-80gb", "precision not stated"),
    ],
)
def test_rows_memprof_cannot_express_say_why(rows, row_id, reason):
    row = next(r for r in rows if r.id == row_id)
    with pytest.raises(NotExpressible, match=reason):
        express(row)


# ---------------------------------------------------------------- the score


def test_score_compares_the_reported_metric(score):
    scored = {r.id: r for r in score.scored}
    vanilla = scored["hf-perf-vanilla"]
    assert vanilla.metric == "nvml_device_used" and vanilla.predicted > 0
    assert vanilla.error_pct == pytest.approx((vanilla.predicted - vanilla.measured) / vanilla.measured * 100)
    for oom in ("alpaca-189-a100-80gb", "alpaca-73-rtx3090-x4"):
        assert scored[oom].oom_measured and scored[oom].predicted_fits is False and scored[oom].oom_agrees is True


def test_score_record_is_json_and_summarises(score):
    data = json.loads(json.dumps(score.to_dict()))
    assert data["schema"] == "memprof.published/1"
    total = data["summary"]["total"]
    assert total["rows"] == len(data["rows"]) == len(score.rows)
    assert total["scored"] == len(score.scored) and total["scored"] + len(score.not_expressible) == total["rows"]
    assert set(data["summary"]["by_source"]) == {r.source for r in score.rows}
    assert sum(data["summary"]["not_expressible_reasons"].values()) == len(score.not_expressible)
    for row in data["rows"]:
        assert (row["reason"] is None) == (row["model"] is not None)


def test_score_uses_the_given_estimator_and_filters(tmp_path):
    calls = []

    class Fake:
        def __init__(self, fits):
            from types import SimpleNamespace

            self.record = SimpleNamespace(
                peak=SimpleNamespace(allocated=1, reserved=2, device_total=3), gpu=SimpleNamespace(fits=fits)
            )

    def fake(model, optimizer, precision, **knobs):
        calls.append((model, optimizer, precision, knobs))
        return Fake(fits=True)

    result = score_published(only="alpaca-73", estimator=fake)
    assert [r.id for r in result.rows] == ["alpaca-73-rtx3090-x4"]
    assert calls[0][:3] == ("llama-2-7b", "adamw", "bf16-mixed") and calls[0][3]["zero"] == 3
    # fits at seq_len 1 (the lower bound): inconclusive, not a disagreement
    assert result.rows[0].oom_agrees is None
    with pytest.raises(RecordError, match="no published row"):
        score_published(only="nothing-like-this", estimator=fake)


# ---------------------------------------------------------------- README block


def test_readme_block_is_up_to_date():
    proc = subprocess.run([sys.executable, str(RENDER), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_check_fails_on_a_stale_block(tmp_path):
    stale = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- published:start -->")
    stale.write_text(
        text[: start + len("<!-- published:start -->")] + "\nold\n" + text[text.index("<!-- published:end -->") :]
    )
    proc = subprocess.run(
        [sys.executable, str(RENDER), "--check", "--readme", str(stale)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "out of date" in proc.stderr


def test_render_writes_the_block_and_the_json(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- published:start -->\n<!-- published:end -->\n", encoding="utf-8")
    out = tmp_path / "score.json"
    proc = subprocess.run(
        [sys.executable, str(RENDER), "--readme", str(readme), "--json", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    body = readme.read_text(encoding="utf-8")
    assert "| source | rows | scored |" in body and "`hf-perf-vanilla`" in body
    assert json.loads(out.read_text())["schema"] == "memprof.published/1"
