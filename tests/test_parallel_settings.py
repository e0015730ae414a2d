"""The record's pipeline and tensor-parallel settings (pp, pp_schedule, microbatches, virtual_stages,
pp_stage, tp): present only when used, round-tripped, type-checked, shown in the table's header."""

from __future__ import annotations

import json

import pytest

from memprof.cli import main
from memprof.estimators.errors import RecordError
from memprof.estimators.estimation import estimate
from memprof.estimators.records import EstimateRecord

PARALLEL_KEYS = {"pp", "pp_schedule", "microbatches", "virtual_stages", "pp_stage", "tp"}


def _tiny_llama():
    from memprof.tiny_models import build

    return build("llama", "sdpa")[1]


def _run(**knobs):
    return estimate(_tiny_llama(), "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", **knobs).record


def test_a_single_device_record_has_no_parallel_keys():
    assert not PARALLEL_KEYS & set(_run().to_dict()["settings"])


def test_a_pipeline_records_its_schedule_and_the_stage_with_the_largest_peak():
    record = _run(pp=2, pp_schedule="gpipe", microbatches=4)
    settings = record.to_dict()["settings"]
    peaks = {s: _run(pp=2, pp_schedule="gpipe", microbatches=4, pp_stage=s).peak.allocated for s in (0, 1)}
    worst = max(peaks, key=lambda s: peaks[s])
    assert {k: settings[k] for k in PARALLEL_KEYS - {"tp"}} == {
        "pp": 2,
        "pp_schedule": "gpipe",
        "microbatches": 4,
        "virtual_stages": 1,
        "pp_stage": worst,
    }
    assert "tp" not in settings
    assert record.peak.allocated == peaks[worst]


def test_the_stage_asked_for_and_tp_are_recorded_and_round_trip():
    record = _run(pp=2, microbatches=2, pp_stage=1, tp=2)
    data = record.to_dict()
    assert (data["settings"]["pp_stage"], data["settings"]["tp"], data["settings"]["pp_schedule"]) == (1, 2, "1f1b")
    again = EstimateRecord.from_dict(json.loads(json.dumps(data)))
    assert again.settings == record.settings
    assert again.to_dict() == data


@pytest.mark.parametrize(("key", "value", "kind"), [("tp", "2", "an integer"), ("pp_schedule", 1, "a string")])
def test_a_wrong_type_is_a_record_error(key, value, kind):
    data = _run(pp=2, microbatches=2, tp=2).to_dict()
    data["settings"][key] = value
    with pytest.raises(RecordError, match=f"'{key}' must be {kind}, got {value!r}"):
        EstimateRecord.from_dict(data)


def test_the_table_header_names_the_stage_and_the_tensor_parallel_rank(capsys):
    args = ["estimate", "qwen2.5-0.5b", "--device", "cpu", "--seq-len", "64", "--pp", "2", "--microbatches", "4"]
    args += ["--tp", "2", "--pp-schedule", "gpipe"]
    assert main([*args, "--format", "json"]) == 0
    stage = json.loads(capsys.readouterr().out)["settings"]["pp_stage"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == f"pipeline stage {stage} of 2 (gpipe, 4 micro-batches) · tensor parallel: one rank of 2"
