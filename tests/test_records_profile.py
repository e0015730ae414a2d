"""ProfileRecord: the profile JSON as a frozen type, its exact round trip, and the one check of its shape."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import memprof  # noqa: E402
from memprof.estimators.errors import MemprofUserError, RecordError  # noqa: E402
from memprof.estimators.records import PROFILE_SCHEMA, ProfileRecord, read_profile  # noqa: E402
from memprof.profiler.record import Profile, empty_record  # noqa: E402


def _step(mode: str = "attribution") -> Profile:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters())
    with memprof.track(model, opt, mode=mode) as run:
        model(torch.ones(8, 16)).pow(2).mean().backward()
        opt.step()
    return run


@pytest.fixture(scope="module")
def run() -> Profile:
    return _step()


def _round_trips(data: dict) -> None:
    again = ProfileRecord.from_dict(data).to_dict()
    assert again == data
    assert json.dumps(again) == json.dumps(data)  # key for key, in the same order


def test_a_real_profile_round_trips_through_its_json_exactly(run: Profile) -> None:
    # GIVEN the JSON of a small tracked training step
    data = json.loads(json.dumps(run.to_dict()))
    # THEN reading it into a record and writing it back gives the same JSON
    _round_trips(data)
    record = run.record
    assert record.to_dict() == data and data["schema"] == PROFILE_SCHEMA
    # and the typed fields are what the JSON says
    assert record.model == "Sequential" and record.parameters == data["settings"]["parameters"]
    assert record.model_states.to_dict() == data["model_states"]
    assert record.peak.allocated == data["peak"]["allocated"] and record.peak.phase == data["peak"]["phase"]
    assert dict(record.peak.by_category) == data["peak"]["by_category"]
    assert record.timeline is not None and [p.to_dict() for p in record.timeline] == data["timeline"]
    assert (
        record.devices is not None and record.devices["cpu"].peak_allocated == data["devices"]["cpu"]["peak_allocated"]
    )


def test_the_empty_record_and_a_stats_profile_round_trip(run: Profile) -> None:
    _round_trips(empty_record())
    stats = _step(mode="stats").to_dict()
    assert "devices" not in stats and "note" in stats["peak"]
    _round_trips(stats)


def test_a_file_saved_with_events_round_trips(run: Profile, tmp_path) -> None:
    path = run.save(tmp_path / "p.json", events=True)
    data = json.loads(path.read_text())
    _round_trips(data)
    record = read_profile(path)
    assert record.events is not None and len(record.events) == len(run.events) > 0
    assert list(record.events) == run.events and list(record.event_phases or ()) == run.event_phases
    assert path.read_text() == json.dumps(record.to_dict(), indent=1)  # saving the record writes the same bytes


def test_the_record_is_frozen(run: Profile) -> None:
    record = run.record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.device = "cuda:0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.peak.by_category["activations"] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        record.settings.values["model"] = "other"  # type: ignore[index]
    # a dict from to_dict() is independent of the record
    d = record.to_dict()
    d["settings"]["model"] = "other"
    assert record.to_dict()["settings"]["model"] == "Sequential"


def _set(data: dict, path: str, value: object) -> dict:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return data


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("peak.allocated", "12", "'allocated'"),
        ("peak.phase", 3, "'phase'"),
        ("peak.by_category.activations", 1.5, "'by_category.activations'"),
        ("model_states.gradients", "1 KiB", "'gradients'"),
        ("settings.parameters", "676", "'parameters'"),
        ("settings.model", ["Sequential"], "'model'"),
        ("device", 0, "'device'"),
        ("complete", "yes", "'complete'"),
        ("duration_s", "1s", "'duration_s'"),
        ("optimizer_state_breakdown.exp_avg", None, "'optimizer_state_breakdown.exp_avg'"),
        ("timeline", {"seq": 0}, "'timeline'"),
        ("timeline.0.seq", "first", "'seq'"),
        ("devices.cpu.peak_allocated", None, "'peak_allocated'"),
        ("phases.forward", [1, 2], "'forward'"),
        ("cuda", "unavailable", "'cuda'"),
        ("error", "boom", "'error'"),
    ],
)
def test_a_wrong_field_type_is_a_record_error_naming_the_field(run: Profile, path: str, value: object, field: str):
    bad = _set(run.to_dict(), path, value)
    with pytest.raises(RecordError, match=field) as info:
        ProfileRecord.from_dict(bad)
    assert isinstance(info.value, MemprofUserError)
    assert str(info.value).startswith("profile")  # says which record


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: [1, 2], "not a memprof profile: schema is 'list', expected 'memprof.profile/1'"),
        (lambda d: {**d, "schema": "memprof.profile/0"}, "schema is 'memprof.profile/0'"),
        (
            lambda d: {k: v for k, v in d.items() if k not in ("peak", "phases")},
            "corrupt memprof profile: missing peak, phases",
        ),
        (lambda d: {**d, "events": {"a": 1}}, "'events' is not a list"),
        (lambda d: {**d, "events": [["alloc", 1, -8, "cpu"]]}, "event 0 is"),
        (lambda d: {**d, "events": [["free", 1]], "event_phases": []}, "'event_phases'"),
    ],
)
def test_other_schemas_corrupt_parts_and_bad_events_are_refused(run: Profile, change, message: str) -> None:
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ProfileRecord.from_dict(change(run.to_dict()))


def test_keys_a_later_version_adds_are_kept(run: Profile) -> None:
    data = {**run.to_dict(), "energy_j": {"gpu": 12.5}}
    record = ProfileRecord.from_dict(data)
    assert dict(record.extra) == {"energy_j": {"gpu": 12.5}}
    _round_trips(data)


def test_reading_a_profile_needs_no_torch() -> None:
    code = (
        "import sys, memprof.profiler.record, memprof.comparison, memprof.commands.report; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
