"""EstimateRecord: the estimate JSON as a frozen type, and its round trip."""

import dataclasses
import json

import pytest

from memprof.estimators.errors import RecordError
from memprof.estimators.estimation import estimate
from memprof.estimators.records import EstimateRecord, ModelStates, Peak

CONFIGS = [
    dict(model="gpt2-124m", device="cpu"),
    dict(model="gpt2-1.5b", gpu="a100-80gb"),
    dict(model="llama-3.1-8b", gpus=8, zero=3, offload="optimizer+parameters", precision="bf16-true"),
    dict(model="vit-b-16", optimizer="sgd", device="cpu", checkpointing="full"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c["model"])
def test_an_estimate_round_trips_through_its_json_exactly(config):
    # GIVEN an estimate's JSON, as `memprof estimate --format json` writes it
    data = json.loads(json.dumps(estimate(**config).to_dict()))
    # WHEN it is read back into a record
    record = EstimateRecord.from_dict(data)
    # THEN writing the record gives the same JSON, key for key and in the same order
    again = record.to_dict()
    assert again == data
    assert json.dumps(again) == json.dumps(data)


def test_the_record_is_the_estimates_own_figures():
    result = estimate("gpt2-1.5b", gpu="h100-80gb")
    record = result.record
    assert record.peak.device_total == result.device_total == record.device_total
    assert record.peak.by_category["cuda_context"] + record.peak.reserved == record.peak.device_total
    assert record.model_states.total == sum(result.model_states.values())
    assert record.gpu is not None and record.fits is (record.peak.device_total <= record.gpu.usable)


def test_records_are_frozen():
    record = estimate("gpt2-124m", device="cpu").record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.model = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.peak.by_category["activations"] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        record.optimizer_state_breakdown["exp_avg"] = 0  # type: ignore[index]


def test_without_optimizer_leaves_states_and_peak_unpredicted():
    record = estimate("gpt2-124m", device="cpu").record.without_optimizer()
    data = record.to_dict()
    assert data["model_states"]["optimizer_states"] is None
    assert data["settings"]["optimizer"] is None
    assert data["peak"] == {"phase": None, "allocated": None, "reserved": None, "device_total": None, "by_category": {}}
    assert record.model_states.total is None
    assert EstimateRecord.from_dict(data).to_dict() == data


def test_an_older_estimate_without_the_new_keys_still_reads():
    minimal = {
        "model": "gpt2-124m",
        "parameters": 124439808,
        "settings": {"optimizer": "adamw", "precision": "bf16-mixed", "batch_size": 1, "seq_len": 1024},
        "model_states": {"parameters": 1, "gradients": 2, "optimizer_states": 3},
        "peak": {
            "phase": "backward",
            "allocated": 10,
            "reserved": 10,
            "device_total": 10,
            "by_category": {"activations": 4},
        },
    }
    record = EstimateRecord.from_dict(minimal)
    assert record.model_states == ModelStates(1, 2, 3)
    assert record.peak.phase == "backward" and record.peak.by_category == {"activations": 4}
    assert record.timeline is None and record.gpu is None and record.warnings == ()


@pytest.mark.parametrize(
    "patch, message",
    [
        (lambda d: d.pop("peak"), "'peak' must be an object"),
        (lambda d: d["model_states"].update(gradients="12"), "model_states: 'gradients' must be an integer, got '12'"),
        (lambda d: d["peak"].update(allocated=True), "peak: 'allocated' must be an integer, got True"),
        (lambda d: d["settings"].update(batch_size=1.5), "settings: 'batch_size' must be an integer"),
        (lambda d: d.update(warnings="oops"), "warnings must be a list of strings"),
        (lambda d: d.update(timeline=[{"phase": "forward"}]), "timeline[0]: missing 'label'"),
        (lambda d: d.update(gpu={"name": "x"}), "gpu: missing 'memory'"),
    ],
)
def test_a_malformed_estimate_names_the_field(patch, message):
    data = estimate("gpt2-124m", gpu="a100-80gb").to_dict()
    patch(data)
    with pytest.raises(RecordError) as err:
        EstimateRecord.from_dict(data, where="e.json")
    assert str(err.value).startswith("e.json")
    assert message in str(err.value)


def test_not_an_object_is_a_record_error():
    with pytest.raises(RecordError, match="expected a JSON object, got list"):
        EstimateRecord.from_dict([1, 2])


def test_peak_unknown_has_no_tensor_bytes():
    assert Peak.unknown().tensor_bytes is None
    categories = ("parameters", "gradients", "optimizer_states", "activations", "temporary")
    assert Peak(by_category=dict.fromkeys(categories, 1)).tensor_bytes == 5
