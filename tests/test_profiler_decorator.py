"""Issue 14: the decorator keeps a bounded number of profiles, never hides the user's exception,
and saves next to nothing it cannot pair; leftover temporary files are cleaned up."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings

import pytest

pytest.importorskip("torch")

import torch

import memprof
from memprof.profiler import Profile
from memprof.profiler.record import atomic_write

F32 = 4


class Known(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def test_the_decorator_keeps_a_bounded_number_of_profiles_and_the_true_worst() -> None:
    # GIVEN a step whose scratch size varies, with the worst call early
    model = Known()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @memprof.profile(model=model, optimizer=opt, keep=3)
    def step(n: int) -> None:
        extra = torch.ones(n)
        model(torch.ones(1000)).sum().backward()
        opt.step()
        opt.zero_grad()
        del extra

    sizes = [10, 20, 9000, 30, 40, 50, 60, 70]
    for n in sizes:
        step(n)
    # THEN only the last `keep` are stored, yet the worst (the third call) is still known
    assert len(step.profiles) == 3
    assert step.calls == len(sizes)
    worst = step.worst
    assert worst is not None and worst not in step.profiles
    others = [p.to_dict()["peak"]["allocated"] for p in step.profiles]
    assert worst.to_dict()["peak"]["allocated"] > max(others)
    assert step.worst_call == 2
    assert step.last is step.profiles[-1]


def test_keep_has_a_small_default_and_is_validated() -> None:
    @memprof.profile
    def step() -> None:
        pass

    for _ in range(40):
        step()
    assert 1 <= len(step.profiles) <= 16 and step.calls == 40
    with pytest.raises(memprof.ParameterError, match="keep"):
        memprof.profile(keep=0)


def test_out_is_validated_when_the_decorator_is_applied(tmp_path) -> None:
    with pytest.raises(memprof.ParameterError, match=r"out .*does not exist"):
        memprof.profile(out=str(tmp_path / "missing" / "p.json"))
    with pytest.raises(memprof.ParameterError, match=r"out .*is a folder"):
        memprof.profile(out=str(tmp_path))
    with pytest.raises(memprof.ParameterError, match="out must be a path"):
        memprof.profile(out=3)  # type: ignore[arg-type]


def test_a_failing_save_never_replaces_the_users_exception(tmp_path) -> None:
    # GIVEN a decorated step saving into a folder that disappears
    folder = tmp_path / "f"
    folder.mkdir()

    @memprof.profile(out=str(folder / "p.json"))
    def step() -> None:
        folder.rmdir()
        raise KeyError("the user's own error")

    # WHEN the step raises and the save fails too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyError, match="the user's own error"):
            step()
    # THEN the user's exception is what propagates; the save failure is a warning; the call is kept
    assert any("could not save" in str(w.message) for w in caught)
    assert step.calls == 1 and step.last is not None and step.last.error["type"] == "KeyError"


# -- files ----------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_temporary_files_are_removed_on_the_next_save(tmp_path) -> None:
    # GIVEN temporaries of an interrupted save: an old-style one and one of a process that is gone
    target = tmp_path / "p.json"
    legacy = tmp_path / ".p.json.ab12_x9z.tmp"
    orphan = tmp_path / f".p.json.{_dead_pid()}.k3j4l5.tmp"
    other = tmp_path / ".q.json.zzzzzzzz.tmp"  # another target's: not ours to remove
    for f in (legacy, orphan, other):
        f.write_bytes(b"partial")
    # WHEN the same path is saved again
    atomic_write(target, b"{}")
    # THEN only the target and the other file's temporary remain
    assert sorted(os.listdir(tmp_path)) == sorted(["p.json", other.name])


def test_the_snapshot_and_its_profile_are_a_checked_pair(tmp_path) -> None:
    # GIVEN a profile with a (stand-in) CUDA memory snapshot
    with memprof.track() as run:
        torch.ones(10)
    run.memory_snapshot = {"segments": [], "device_traces": []}
    path = run.save(tmp_path / "p.json")
    record = json.loads(path.read_text())
    # THEN the JSON names the snapshot file and its content id, and load checks the pairing
    snap = record["memory_snapshot"]
    assert (tmp_path / snap["file"]).exists() and len(snap["sha256"]) == 64
    assert Profile.load_snapshot(path) == run.memory_snapshot
    # WHEN a crash left another save's snapshot beside this JSON
    (tmp_path / snap["file"]).write_bytes(pickle.dumps({"segments": ["other"]}))
    with pytest.raises(memprof.RecordError, match="does not belong"):
        Profile.load_snapshot(path)
