"""Issue 14, "nothing lost": `memprof run` keeps what it measured whatever ends the script.

- --out is checked before the script starts; a save that still fails at the end falls back to a
  named file in the temp dir and keeps the summary;
- Ctrl-C / SIGINT / SIGTERM save and summarise the partial profile and exit 130 / 143;
- sys.exit(...) in the script behaves as it does under `python script.py`;
- `--format json` writes only JSON to stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from memprof.cli import main
from memprof.profiler import Profile

STEPS = textwrap.dedent("""
    import sys
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters())

    def step():
        loss = model(torch.ones(8, 16)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
""")


def _script(tmp_path: Path, body: str, name: str = "train.py") -> str:
    path = tmp_path / name
    path.write_text(STEPS + textwrap.dedent(body))
    return str(path)


# -- --out is checked before the script runs ----------------------------------------------------


@pytest.mark.parametrize(
    "out, message",
    [
        ("{tmp}/missing/p.json", "does not exist"),
        ("{tmp}", "is a folder"),
        ("/proc/memprof-p.json", "/proc"),
        ("/sys/memprof-p.json", "/sys"),
    ],
)
def test_an_unwritable_out_fails_before_the_script_runs(tmp_path, capsys, out: str, message: str) -> None:
    # GIVEN a script that leaves a mark when it runs
    marker = tmp_path / "ran"
    script = _script(tmp_path, f"open({str(marker)!r}, 'w').close()\nstep()\n")
    # WHEN --out cannot be written
    code = main(["run", "--out", out.format(tmp=tmp_path), script])
    # THEN one line on stderr naming --out, exit 2, and the script never ran
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("memprof: error: --out") and message in err and err.count("\n") == 1
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_folder_fails_before_the_script_runs(tmp_path, capsys) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code = main(["run", "--out", str(folder / "p.json"), _script(tmp_path, "step()\n")])
    finally:
        folder.chmod(0o700)
    assert code == 2 and "cannot be written" in capsys.readouterr().err


def test_a_save_that_fails_at_the_end_keeps_the_summary_and_falls_back(tmp_path, capsys) -> None:
    # GIVEN a script that removes the folder --out points into while it runs
    folder = tmp_path / "gone"
    folder.mkdir()
    script = _script(tmp_path, f"step()\nimport shutil; shutil.rmtree({str(folder)!r})\n")
    # WHEN it ends
    code = main(["run", "--out", str(folder / "p.json"), script])
    captured = capsys.readouterr()
    # THEN the summary is on screen, the profile in a fallback file the message names, exit non-zero
    assert code == 2
    assert "memprof profile: Sequential" in captured.out
    line = next(x for x in captured.err.splitlines() if "could not save" in x)
    fallback = Path(line.rsplit(" to ", 1)[1].split()[0])
    assert str(folder / "p.json") in line
    assert fallback.exists() and Profile.load(fallback).to_dict()["settings"]["optimizer_steps"] == 1
    fallback.unlink()


# -- how the script ends --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail, code, message", [("sys.exit('bad input')", 1, "bad input"), ("sys.exit(None)", 0, None)]
)
def test_sys_exit_behaves_as_under_python(tmp_path, capsys, tail: str, code: int, message: str | None) -> None:
    assert main(["run", _script(tmp_path, f"step()\n{tail}\n")]) == code
    err = capsys.readouterr().err
    if message:
        assert err.splitlines()[0] == message
    else:
        assert err == ""


def test_json_format_writes_only_json_to_stdout(tmp_path, capsys) -> None:
    script = _script(tmp_path, "print('hello from the script')\nstep()\n")
    assert main(["run", "--format", "json", "--mode", "stats", script]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["settings"]["optimizer_steps"] == 1
    assert "hello from the script" in captured.err


# -- real signals, real processes -----------------------------------------------------------------

LOOP = """
print("ready", flush=True)
while True:
    step()
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_partial_profile_and_exits_as_the_shell_expects(tmp_path, sig, code) -> None:
    # GIVEN `memprof run --out` on a script that trains forever
    out = tmp_path / "p.json"
    script = _script(tmp_path, LOOP)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "memprof", "run", "--mode", "stats", "--out", str(out), script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # a few steps
        # WHEN the signal arrives
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # THEN the partial profile is saved and summarised, and the exit code is 128 + signal
    assert proc.returncode == code, stderr
    assert "memprof profile: Sequential" in stdout and f"profile saved to {out}" in stdout
    d = Profile.load(out).to_dict()
    assert d["settings"]["optimizer_steps"] > 0
    assert d["error"]["type"] in ("KeyboardInterrupt", "Terminated")
