"""`memprof validate --device cuda`: the GPU matrix, its record and the table rendered from it.

Without a GPU (this machine, CI) the record and the renderer are checked on a record built from real
CPU measurements of the same code path (memprof.track's peak of live tensor bytes), which the record
and every rendered line label as CPU figures; nothing here invents a CUDA measurement. With a GPU the
matrix's small form runs for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memprof.cli import main
from memprof.estimators.errors import RecordError
from memprof.validate_cuda import (
    SCHEMA,
    CudaCase,
    check_record,
    cuda_matrix,
    cuda_table,
    cuda_unavailable,
    run_matrix,
    slug,
)

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = cuda_unavailable()


def one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.startswith("memprof: error: "), err
    return err


@pytest.mark.skipif(NO_CUDA is None, reason="a CUDA GPU is present: --device cuda runs")
def test_device_cuda_without_a_gpu_is_one_line_exit_2(capsys):
    err = one_line_error(capsys, ["validate", "--device", "cuda"])
    assert "--device cuda" in err and ("no CUDA" in err or "is_available() is False" in err)


def test_device_cuda_with_another_matrix_is_one_line_exit_2(capsys):
    err = one_line_error(capsys, ["validate", "--device", "cuda", "--published"])
    assert "drop --published / --trace" in err


def test_the_matrix_covers_what_the_issue_asks():
    cases = cuda_matrix()
    assert {c.optimizer_impl for c in cases} == {"foreach", "fused"}
    assert {c.backend for c in cases if c.attention == "sdpa"} >= {"flash", "efficient"}
    assert {"bf16-mixed", "16-mixed"} <= {c.precision for c in cases}
    assert any(c.attention == "eager" for c in cases)
    assert len({c.id for c in cases}) == len(cases)
    assert len(cuda_matrix(quick=True)) == 3


@pytest.fixture(scope="module")
def cpu_record(tmp_path_factory) -> dict:
    """A record of the matrix's code path measured on the CPU: a small GPT-2 config, two loops."""
    folder = tmp_path_factory.mktemp("tiny")
    config = {
        "model_type": "gpt2",
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "n_positions": 128,
        "vocab_size": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(config))
    model = str(folder / "config.json")
    cases = [
        CudaCase(model, "foreach", "32-true", "eager", None, batch_size=2, seq_len=32),
        CudaCase(model, "foreach", "bf16-mixed", "sdpa", None, batch_size=2, seq_len=32),
    ]
    return run_matrix(cases, "schema test", device="cpu")


def test_a_cpu_record_is_a_valid_record_labelled_as_cpu(cpu_record):
    record = check_record(json.loads(json.dumps(cpu_record)))
    assert record["schema"] == SCHEMA and record["environment"]["device"] == "cpu"
    assert "not a GPU figure" in record["environment"]["note"]
    assert record["gpu_preset"] is None
    for case in record["cases"]:
        assert case["status"] in ("pass", "fail"), case.get("error")
        allocated = case["rows"]["allocated"]
        assert isinstance(allocated["measured"], int) and isinstance(allocated["predicted"], int)
        # the CPU has no reserved memory, no NVML, no snapshot: absent, never 0
        for key in ("reserved", "device_total", "cuda_context", "snapshot_replay_reserved"):
            assert case["rows"][key]["measured"] is None
        assert case["measured"]["max_memory_reserved"] is None
    # the CPU estimate of the same loop: the CPU matrix's tolerance holds here too
    assert record["summary"]["pass"] == 2


def test_the_table_renders_the_record_and_says_cpu(cpu_record):
    table = cuda_table(cpu_record)
    assert table.startswith("CPU measurements (device cpu)") and "not a GPU" in table
    for case in cpu_record["cases"]:
        row = case["rows"]["allocated"]
        assert f"{row['predicted'] / 2**20:,.0f} / {row['measured'] / 2**20:,.0f} MiB" in table
        assert case["id"] in table
    assert "2 cases: 2 pass" in table


def test_the_renderer_script_reads_a_record_file(cpu_record, tmp_path):
    path = tmp_path / "validation-cuda-cpu.json"
    path.write_text(json.dumps(cpu_record))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_cuda_validation.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == cuda_table(cpu_record)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"schema": "memprof.validation/1"}, "not a GPU validation record"),
        ([], "not a GPU validation record"),
        ({"schema": SCHEMA, "subset": "x", "date": "d", "environment": {}, "summary": {}}, "'cases' must be list"),
        (
            {"schema": SCHEMA, "subset": "x", "date": "d", "environment": {}, "summary": {}, "cases": [{"id": "a"}]},
            "case 0 has no id or status",
        ),
    ],
)
def test_bad_records_are_refused(record, message):
    with pytest.raises(RecordError, match=message):
        check_record(record)


def test_slug_names_the_record_file():
    assert slug("NVIDIA A100-SXM4-80GB") == "a100-sxm4-80gb"
    assert slug("Tesla V100-SXM2-16GB") == "tesla-v100-sxm2-16gb"
    assert slug(None) == "cpu"


@pytest.mark.skipif(NO_CUDA is not None, reason=f"needs a CUDA GPU: {NO_CUDA}")
def test_small_matrix_on_the_gpu():
    record = run_matrix(cuda_matrix(quick=True)[:1], "test", device="cuda")
    check_record(record)
    case = record["cases"][0]
    assert case["status"] != "error", case.get("error")
    measured = case["measured"]
    assert measured["max_memory_allocated"] > 0 and measured["max_memory_reserved"] >= measured["max_memory_allocated"]
    assert measured["snapshot"]["simulated_peak_reserved"] > 0
    assert torch.cuda.is_available()


def test_cases_a_gpu_cannot_run_are_not_run_with_pytorchs_reason():
    from memprof.validate_cuda import not_runnable, run_case

    flash = CudaCase("gpt2-124m", backend="flash")
    assert not_runnable(flash, (8, 0)) is None
    assert "[sm80, sm121]" in not_runnable(flash, (7, 0))
    assert "not bfloat16" in not_runnable(CudaCase("gpt2-124m", backend="efficient"), (7, 0))
    assert not_runnable(CudaCase("gpt2-124m", precision="16-mixed", backend="efficient"), (7, 0)) is None
    result = run_case(flash, "cuda", "v100-16gb", "12.8", (7, 0))  # refused before any process starts
    assert result["status"] == "not run" and "Flash attention only supports" in result["error"]
