"""The Profile record: contract keys, DataFrame, atomic save, load and its refusals."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import memprof  # noqa: E402
from memprof.estimators.vocabulary import CATEGORIES, MODEL_STATE_CATEGORIES, PHASES  # noqa: E402
from memprof.profiler import SCHEMA, Profile  # noqa: E402


@pytest.fixture(scope="module")
def run() -> Profile:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters())
    with memprof.track(model, opt) as r:
        model(torch.ones(8, 16)).pow(2).mean().backward()
        opt.step()
    return r


def test_record_follows_the_profile_contract(run: Profile) -> None:
    d = run.to_dict()
    assert d["schema"] == SCHEMA == "memprof.profile/1"
    assert d["memprof_version"] == memprof.__version__
    assert set(d["model_states"]) == set(MODEL_STATE_CATEGORIES)
    assert set(d["peak"]["by_category"]) == set(CATEGORIES)
    assert set(d["phases"]) == set(PHASES)
    assert {"torch", "python", "platform", "device_name", "driver", "cuda_version"} <= set(d["environment"])
    n_params = 16 * 32 + 32 + 32 * 4 + 4
    assert d["model_states"] == {
        "parameters": n_params * 4,
        "gradients": n_params * 4,
        "optimizer_states": 2 * n_params * 4 + 4 * 4,
    }
    assert d["settings"]["parameters"] == n_params
    json.dumps(d)  # plain data all the way down


def test_to_frame_is_long_and_matches_the_dict(run: Profile) -> None:
    frame = run.to_frame()
    d = run.to_dict()
    assert list(frame.columns) == ["scope", "phase", "category", "bytes"]
    assert len(frame) == len(CATEGORIES) * (1 + len(PHASES)) + len(MODEL_STATE_CATEGORIES)
    peak = frame[frame.scope == "peak"].set_index("category")["bytes"]
    assert int(peak["optimizer_states"]) == d["peak"]["by_category"]["optimizer_states"]
    assert peak.isna()["cuda_context"]  # not measured on the CPU: missing, not zero
    fwd = frame[(frame.scope == "forward") & (frame.category == "activations")]["bytes"].item()
    assert fwd == d["phases"]["forward"]["peak"]["by_category"]["activations"]


def test_save_is_atomic_and_load_round_trips(run: Profile, tmp_path) -> None:
    path = tmp_path / "p.json"
    run.save(path, events=True)
    assert sorted(os.listdir(tmp_path)) == ["p.json"]  # no temporary file left behind
    back = Profile.load(path)
    assert back.to_dict() == run.to_dict()
    assert back.events == run.events and len(back.events) > 0
    assert back.event_phases == run.event_phases
    run.save(path)  # replace, without events
    assert "events" not in json.loads(path.read_text())
    assert Profile.load(path).events == []


def test_saved_file_has_a_normal_files_mode(run: Profile, tmp_path) -> None:
    # the temporary file behind the atomic write is made 0600 by mkstemp; the result must not be
    mask = os.umask(0o022)
    try:
        path = run.save(tmp_path / "p.json")
    finally:
        os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_save_to_a_missing_folder_is_a_user_error(run: Profile, tmp_path) -> None:
    with pytest.raises(memprof.MemprofUserError, match="does not exist"):
        run.save(tmp_path / "nope" / "p.json")


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all {", "not readable JSON"),
        ('{"schema": "memprof.estimate/1"}', "expected 'memprof.profile/1'"),
        ("[1, 2]", "schema is 'list'"),
        ('{"schema": "memprof.profile/1", "settings": {}}', "missing model_states, peak, phases"),
    ],
)
def test_load_rejects_other_and_corrupt_files(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(memprof.MemprofUserError, match=message):
        Profile.load(path)
    with pytest.raises(memprof.MemprofUserError, match="does not exist"):
        Profile.load(tmp_path / "missing.json")


def test_summary_names_every_category_and_unavailable_device_figures(run: Profile) -> None:
    text = run.summary()
    for cat in CATEGORIES:
        assert cat in text
    assert "cuda: unavailable" in text and "nvml: unavailable" in text
    assert "optimizer steps 1" in text
