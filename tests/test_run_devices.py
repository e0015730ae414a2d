"""`memprof run` refuses, before the script runs, device options it could only ignore."""

import pytest
import torch

from memprof.cli import main

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without CUDA")


@pytest.mark.parametrize(
    "options, line",
    [
        (["--device", "cuda"], "memprof: error: --device cuda: this machine has no CUDA device torch can use; "
         "use --device cpu (or auto)"),
        (["--memory-snapshot"], "memprof: error: --memory-snapshot records the CUDA caching allocator's history, "
         "and the profiled device is cpu: drop it, or profile a CUDA device"),
    ],
)  # fmt: skip
def test_cuda_only_options_without_cuda_are_one_line_and_the_script_never_runs(tmp_path, capsys, options, line):
    marker = tmp_path / "ran"
    script = tmp_path / "train.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    assert main(["run", *options, str(script)]) == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert not marker.exists()
