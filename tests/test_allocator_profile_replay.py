"""`memprof replay PROFILE.json`: a real CPU run's allocation timeline replayed as if on CUDA.

The profile is recorded by memprof.track(events=True) around two AdamW steps of a tiny transformers
model on the CPU and saved with its events. The replayed peaks are checked against figures computed
here from the saved events independently of the simulator: the peak of live bytes, and the peak of
live bytes with every allocation rounded up to 512 B (what the small pool hands out: all tensors of
this model are below 1 MiB, so the allocator adds nothing else).
"""

from __future__ import annotations

import json

import pytest
import torch

import memprof
from activation_cases import batch, build, train_step
from memprof.cli import main
from memprof.estimators.allocator import load_profile_timeline, replay_profile
from memprof.estimators.errors import MemprofUserError

pytestmark = pytest.mark.filterwarnings("ignore:Module is None")
MiB = 1 << 20


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    model, _ = build("gpt2", "eager")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with memprof.track(model, optimizer, events=True) as run:
        for _ in range(2):
            train_step(model, optimizer, batch("gpt2", 2, 32), autocast=False)
    folder = tmp_path_factory.mktemp("profile")
    path = run.save(folder / "run.json", events=True)
    bare = run.save(folder / "no_events.json")
    return path, bare


def peaks_from_events(events: list) -> tuple[int, int, int]:
    """(peak of live bytes, peak with each allocation rounded up to 512 B, largest allocation)."""
    live: dict = {}
    exact = rounded = peak = peak_rounded = largest = 0
    for e in events:
        if e[0] == "alloc":
            n = e[2]
            r = 0 if n == 0 else (n + 511) // 512 * 512
            live[e[1]] = (n, r)
            exact += n
            rounded += r
            largest = max(largest, n)
            peak, peak_rounded = max(peak, exact), max(peak_rounded, rounded)
        elif e[1] in live:
            n, r = live.pop(e[1])
            exact -= n
            rounded -= r
    return peak, peak_rounded, largest


def test_cli_replays_a_cpu_profile_as_if_on_cuda(profile_file, capsys):
    path, _ = profile_file
    saved = json.loads(path.read_text())
    peak, peak_rounded, largest = peaks_from_events(saved["events"])
    assert largest <= MiB  # all in the small pool
    assert peak == saved["peak"]["allocated"]  # the profiler's own peak, from its events
    assert main(["replay", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "profile" and out["device"] == "cpu" and out["as_if_cuda"] is True
    assert "as if on CUDA" in out["note"]
    assert out["peak"]["allocated"] == peak_rounded
    assert out["peak"]["requested"] == peak == out["profile"]["peak_allocated"]
    assert out["peak"]["reserved"] >= out["peak"]["allocated"] and out["peak"]["reserved"] % (2 * MiB) == 0
    assert out["unmatched_frees"] == 0 and out["events"] == len(saved["events"])
    assert out["what_if"]["baseline"]["peak_reserved"] == out["peak"]["reserved"]


def test_cli_table_says_it_is_a_prediction(profile_file, capsys):
    path, _ = profile_file
    assert main(["replay", str(path), "--no-what-if"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("profile of a cpu run replayed as if on CUDA")
    assert "profiled peak" in out and "what if" not in out


def test_library_replay_with_capacity_reports_the_oom(profile_file):
    path, _ = profile_file
    timeline = load_profile_timeline(path)
    full = replay_profile(timeline)
    # one 2 MiB segment less than needed: the replay runs out of memory
    short = replay_profile(timeline, capacity=full.result.peak_reserved - 2 * MiB)
    assert full.result.oom is None and short.result.oom is not None
    assert short.result.oom.reserved <= full.result.peak_reserved - 2 * MiB


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ('{"schema": "memprof.profile/1", "events": [["alloc", 1, 8, "cpu"]', "is not readable JSON"),
        ('{"name": "some other tool", "events": []}', "is not a memprof profile (schema None"),
        ("[1, 2, 3]", "is not a memprof profile (schema a JSON list"),
        ('{"schema": "memprof.profile/1", "events": {"a": 1}}', "'events' is not a list"),
        ('{"schema": "memprof.profile/1", "events": [["alloc", 1, -8, "cpu"]]}', "event 0 is"),
        ('{"schema": "memprof.profile/1", "events": [["free", 1]]}', "holds no allocation event"),
    ],
)
def test_bad_profiles_are_one_line_errors(tmp_path, capsys, payload, fragment):
    path = tmp_path / "bad.json"
    path.write_text(payload)
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memprof: error:") and fragment in err and err.count("\n") == 1
    with pytest.raises(MemprofUserError, match=r"memprof profile|JSON|event"):
        load_profile_timeline(path)


def test_missing_file_and_directory(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.json")]) == 2
    assert "file not found" in capsys.readouterr().err
    with pytest.raises(MemprofUserError, match="profile file not found"):
        load_profile_timeline(tmp_path / "nope.json")
    with pytest.raises(MemprofUserError, match="is a directory"):
        load_profile_timeline(tmp_path)


def test_profile_saved_without_events(profile_file, capsys):
    _, bare = profile_file
    assert main(["replay", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "saved without its allocation timeline" in err and "events=True" in err and err.count("\n") == 1


def test_device_choice(profile_file, capsys):
    path, _ = profile_file
    assert main(["replay", str(path), "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err
    assert "device 'cuda:0' has no allocation in the profile; it holds cpu" in err
    assert main(["replay", str(path), "--device", "cpu", "--format", "json", "--no-what-if"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"
