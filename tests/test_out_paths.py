"""Every command that writes a file checks --out before it works: one line, exit 2, nothing run."""

import json

import pytest

from memprof.cli import main


@pytest.mark.parametrize("out", ["/proc/x.json", "/sys/x.json", "/nonexistent-folder/x.json"])
def test_validate_refuses_an_unwritable_out_before_training(capsys, out):
    assert main(["validate", "--quick", "--out", out]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not one case ran
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"memprof: error: --out '{out}'")


def test_report_refuses_out_under_proc(tmp_path, capsys):
    import torch

    import memprof

    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with memprof.track(model, opt) as run:
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
    profile = tmp_path / "p.json"
    run.save(profile)
    json.loads(profile.read_text())
    assert main(["report", str(profile), "--out", "/proc/x.png"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["memprof: error: --out '/proc/x.png' is under /proc, which holds no files memprof can write"]
