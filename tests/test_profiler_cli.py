"""`memprof run script.py [args...]` profiles an unmodified training script."""

from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("torch")

from memprof.cli import main
from memprof.profiler import Profile

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from torch import nn

    steps = int(sys.argv[1])
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))   # 676 parameters
    opt = torch.optim.Adam(model.parameters())
    for _ in range(steps):
        loss = model(torch.ones(8, 16)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    if len(sys.argv) > 2:
        {tail}
""")


def _script(tmp_path, tail: str = "pass") -> str:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT.format(tail=tail))
    return str(path)


def test_run_profiles_an_unmodified_script_and_saves(tmp_path, capsys) -> None:
    out = tmp_path / "profile.json"
    # WHEN the script runs with its own argument (3 steps)
    code = main(["run", "--out", str(out), "--events", _script(tmp_path), "3"])
    # THEN the breakdown is printed and the profile saved
    assert code == 0
    text = capsys.readouterr().out
    assert "memprof profile: Sequential (676 parameters), optimizer Adam" in text
    assert "optimizer steps 3" in text and "optimizer_states" in text
    prof = Profile.load(out)
    d = prof.to_dict()
    assert d["settings"]["optimizer_steps"] == 3 and d["settings"]["forward_calls"] == 3
    assert d["model_states"] == {"parameters": 676 * 4, "gradients": 676 * 4, "optimizer_states": 2 * 676 * 4 + 4 * 4}
    assert len(prof.events) > 0


def test_run_json_format(tmp_path, capsys) -> None:
    assert main(["run", "--format", "json", "--mode", "stats", _script(tmp_path), "1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mode"] == "stats" and d["settings"]["optimizer_steps"] == 1


def test_a_failing_script_still_reports_and_exits_nonzero(tmp_path, capsys) -> None:
    out = tmp_path / "p.json"
    code = main(["run", "--out", str(out), _script(tmp_path, "raise KeyError('boom')"), "1", "fail"])
    captured = capsys.readouterr()
    assert code == 1
    assert "KeyError: 'boom'" in captured.err
    assert "error: KeyError" in captured.out
    assert Profile.load(out).error["type"] == "KeyError"


def test_a_scripts_exit_code_is_kept(tmp_path, capsys) -> None:
    assert main(["run", _script(tmp_path, "sys.exit(3)"), "1", "exit"]) == 3
    assert main(["run", _script(tmp_path, "sys.exit(0)"), "1", "exit"]) == 0


def test_a_missing_script_is_a_usage_error(tmp_path, capsys) -> None:
    assert main(["run", str(tmp_path / "nope.py")]) == 2
    assert "nope.py" in capsys.readouterr().err
