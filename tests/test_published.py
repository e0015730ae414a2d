"""Published GPU measurements: the rows, their expression as memprof estimates, the score, the README block."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from memprof.estimators.errors import RecordError
from memprof.published import METRICS, NotExpressible, express, load_published, published_files, score_published

ROOT = Path(__file__).resolve().parent.parent
RENDER = ROOT / "scripts" / "render_published.py"
# one source's rows for the renderer's own tests (scoring every row, litgpt's 128-micro-batch LoRA steps
# included, is what test_readme_block_is_up_to_date and the `score` fixture do)
HF_PERF = ROOT / "profiles" / "published" / "hf-perf-train-gpu-one.json"


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
    # the page trains BertForSequenceClassification: memprof's seq-cls head, no longer a proxy
    assert how.knobs["head"] == "seq-cls" and not any(p.startswith("head:") for p in how.proxies)
    assert any(a.startswith("optimizer: adamw") for a in how.assumptions)


@pytest.mark.parametrize(
    "row_id, reason",
    [
        ("peft-t0_3b-full", "metric not stated"),
        ("torchtitan-165-fsdp2-sac-reserved", "model not stated"),
        ("cookbook-413-a100-80gb", "precision not stated"),
        # litgpt's LLaMA-Adapter / Adapter v2: memprof's adapter knob is LoRA
        ("litgpt-adapter-7b-llama-none-mb1-1gpu", r"parameter-efficient finetuning: no memprof knob: 'Adapter \("),
        ("litgpt-adapter_v2-7b-llama-none-mb1-1gpu", r"no memprof knob: 'Adapter v2 \("),
        ("litgpt-adapter-3b-stablelm-none-mb1-1gpu", "parameter-efficient finetuning: no memprof knob"),
        # LoRA on models without a memprof preset or family
        ("litgpt-lora-13b-phi-1.5-none-mb1-1gpu", "model not a memprof preset or family: 'phi-1.5 1.3 B'"),
        ("litgpt-lora-3b-stablelm-bnbnf4-mb1-1gpu", "model not a memprof preset or family: 'StableLM Alpha 3 B'"),
        ("litgpt-lora-40b-falcon-none-mb1-4gpu", "model not a memprof preset or family: 'Falcon 40 B'"),
        ("peft-t0_3b-lora-pytorch", "metric not stated"),
        # litgpt's quantized path: Fabric's BitsandbytesPrecision, not transformers' BitsAndBytesConfig + peft
        ("litgpt-lora-7b-llama-bnbnf4-mb1-1gpu", "quantization setup not modelled: 'bnb.nf4': .*lm_head included"),
        ("litgpt-lora-13b-llama-bnbnf4-dq-mb1-1gpu", "quantization setup not modelled: 'bnb.nf4-dq'.*PagedAdamW"),
        # LoRA under sharding: litgpt runs devices > 1 with FSDPStrategy; llama-recipes with --enable_fsdp
        ("litgpt-lora-7b-llama-none-mb1-2gpu", "LoRA with sharding not modelled: .* on 2 GPUs; .*FSDPStrategy"),
        ("litgpt-lora-13b-llama-none-mb1-4gpu", "LoRA with sharding not modelled: .* on 4 GPUs"),
        (
            "cookbook-41-final-active",
            r"LoRA with sharding not modelled: 'FSDP \(--enable_fsdp\).* on 4 GPUs.*memprof refuses LoRA with ZeRO / "
            r"FSDP.*r=8, lora_alpha=32, target_modules=\['q_proj', 'v_proj'\], lora_dropout=0.05",
        ),
        ("cookbook-41-limit-all-gathers-false-reserved", "LoRA with sharding not modelled"),
    ],
)
def test_rows_memprof_cannot_express_say_why(rows, row_id, reason):
    row = next(r for r in rows if r.id == row_id)
    with pytest.raises(NotExpressible, match=reason):
        express(row)


# ---------------------------------------------------------------- LoRA rows

# litgpt finetune/lora.py at commit 8641822 (the version litgpt's resource tables name): lora_r = 8,
# lora_dropout = 0.05 on query and value; batch_size = 128 samples per step in micro-batches; the
# longest Alpaca example in Llama 2 tokens (1304, stated by the tables) forced into the first batch
LITGPT_LORA_ROWS = {
    "litgpt-lora-7b-llama-none-mb1-1gpu": ("llama-2-7b", 1),
    "litgpt-lora-7b-llama-none-mb2-1gpu": ("llama-2-7b", 2),
    "litgpt-lora-7b-llama-none-mb4-1gpu": ("llama-2-7b", 4),
    "litgpt-lora-13b-llama-none-mb1-1gpu": ("llama-2-13b", 1),
    "litgpt-lora-13b-llama-none-mb2-1gpu": ("llama-2-13b", 2),
    "litgpt-lora-13b-llama-none-mb4-1gpu": ("llama-2-13b", 4),
}


@pytest.mark.parametrize("row_id", sorted(LITGPT_LORA_ROWS))
def test_litgpt_lora_rows_take_the_scripts_defaults(rows, row_id):
    model, micro_batch = LITGPT_LORA_ROWS[row_id]
    how = express(next(r for r in rows if r.id == row_id))
    assert how.model == model
    assert dict(how.knobs) == {
        "gpu": "a100-40gb",
        "precision": "bf16-true",
        "optimizer": "adamw",
        "lora_rank": 8,
        "lora_targets": "q_proj,v_proj",
        "lora_dropout": 0.05,
        "batch_size": micro_batch,
        "seq_len": 1304,
        "grad_accumulation": 128 // micro_batch,
        "checkpointing": "none",
        "keep_output": True,
        "cuda_version": "12.1",
    }
    # litgpt's own model and LoRA layers are estimated as the Hugging Face family: a proxy, said so
    assert any(p.startswith("model: litgpt's own GPT") and "LoRAQKVLinear" in p for p in how.proxies)
    assert any(a.startswith("optimizer: adamw (finetune/lora.py") for a in how.assumptions)
    assert any(a.startswith("seq_len: 1304 (") for a in how.assumptions)


def test_every_litgpt_lora_row_memprof_can_express_is_expressed(rows):
    expressed = set()
    for r in rows:
        if r.source == "litgpt-resource-tables":
            try:
                express(r)
            except NotExpressible:
                continue
            expressed.add(r.id)
    assert expressed == set(LITGPT_LORA_ROWS)


@pytest.mark.parametrize("row_id", sorted(LITGPT_LORA_ROWS))
def test_lora_trainable_parameters_equal_the_tables(rows, row_id):
    """The count litgpt's table prints is what memprof's adapters hold: layers x 2 x (h x r + r x h)."""
    from memprof.estimators.adapters import adapt
    from memprof.estimators.models import load_model
    from memprof.estimators.precision import get_precision

    row = next(r for r in rows if r.id == row_id)
    stated = int(row.get("peft").split(" trainable parameters")[0].split("(")[1].replace(",", ""))
    how = express(row)
    spec = load_model(how.model)
    adapted = adapt(
        spec,
        get_precision("bf16-true"),
        lora_rank=how.knobs["lora_rank"],
        lora_targets=how.knobs["lora_targets"],
        lora_dropout=how.knobs["lora_dropout"],
    )
    trainable = sum(t.numel for t in adapted.parameter_tensors() if t.trainable)
    layers, hidden = {"llama-2-7b": (32, 4096), "llama-2-13b": (40, 5120)}[how.model]
    assert trainable == stated == layers * 2 * (hidden * 8 + 8 * hidden)
    assert any(f"{stated:,} trainable parameters, as the source states" in a for a in how.assumptions)


def test_a_stated_lora_count_memprof_does_not_hold_is_refused(rows):
    row = next(r for r in rows if r.id == "litgpt-lora-7b-llama-none-mb1-1gpu")
    wrong = dataclasses.replace(
        row, fields={**row.fields, "peft": "LoRA (8,388,608 trainable parameters; finetune/lora.py)"}
    )
    with pytest.raises(NotExpressible, match=r"LoRA not matched: the source states 8,388,608 .* holds 4,194,304"):
        express(wrong)


def test_lora_without_a_known_script_says_so(rows):
    row = next(r for r in rows if r.id == "litgpt-lora-7b-llama-none-mb1-1gpu")
    unknown = dataclasses.replace(row, fields={**row.fields, "framework": "someone's train.py"})
    with pytest.raises(NotExpressible, match="LoRA settings not stated"):
        express(unknown)


def test_the_litgpt_source_states_what_the_recipe_takes_from_it():
    # seq_len 1304 and 128 samples per step are read from the tables' header, not chosen
    source = json.loads((ROOT / "profiles" / "published" / "litgpt-resource-tables.json").read_text())["source"]
    assert "Llama 2 1304" in source["context"] and "'minibatch size of 128'" in source["context"]
    assert "bf16-true" in source["context"]


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


def test_lora_knobs_reach_the_estimator():
    calls = []

    class Fake:
        def __init__(self):
            from types import SimpleNamespace

            self.record = SimpleNamespace(
                peak=SimpleNamespace(allocated=1, reserved=2, device_total=3), gpu=SimpleNamespace(fits=True)
            )

    def fake(model, optimizer, precision, **knobs):
        calls.append((model, optimizer, precision, knobs))
        return Fake()

    result = score_published(only="litgpt-resource-tables", estimator=fake)
    assert {r.id for r in result.scored} == set(LITGPT_LORA_ROWS)
    assert len(calls) == len(LITGPT_LORA_ROWS)
    for _model, optimizer, precision, knobs in calls:
        assert (optimizer, precision) == ("adamw", "bf16-true")
        assert (knobs["lora_rank"], knobs["lora_targets"], knobs["lora_dropout"]) == (8, "q_proj,v_proj", 0.05)
        assert "quantize" not in knobs and "zero" not in knobs
    assert score_published(only="llama-cookbook-fsdp-prs", estimator=fake).scored == ()


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
        [sys.executable, str(RENDER), "--check", "--readme", str(stale), "--rows", str(HF_PERF)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "out of date" in proc.stderr


def test_render_writes_the_block_and_the_json(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- published:start -->\n<!-- published:end -->\n", encoding="utf-8")
    out = tmp_path / "score.json"
    proc = subprocess.run(
        [sys.executable, str(RENDER), "--readme", str(readme), "--json", str(out), "--rows", str(HF_PERF)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    body = readme.read_text(encoding="utf-8")
    assert "| source | rows | scored |" in body and "`hf-perf-vanilla`" in body
    assert json.loads(out.read_text())["schema"] == "memprof.published/1"
