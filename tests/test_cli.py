"""The `memprof` command line: the headline estimate, its formats, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from memprof.cli import main

GPT2_XL = 1_557_611_200
GPT2_XL_TENSORS = 2 + 48 * 12 + 2  # wte, wpe; 12 per block; ln_f weight and bias (lm_head is tied)


def run_json(capsys, *args):
    assert main(["estimate", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_headline_gpt2_xl_adamw_is_16_bytes_per_parameter(capsys):
    # GIVEN the user's headline command, in JSON
    record = run_json(capsys, "gpt2-1.5b", "--optimizer", "adamw")
    # THEN the parameter count is GPT-2 XL's and AMP's 4 + 4 + 8 bytes are exact on the GPU (torch
    # keeps Adam's per-tensor `step` scalar on the host unless capturable/fused)
    assert record["parameters"] == GPT2_XL
    states = record["model_states"]
    assert states == {"parameters": 4 * GPT2_XL, "gradients": 4 * GPT2_XL, "optimizer_states": 8 * GPT2_XL}
    assert record["optimizer_state_breakdown"] == {"exp_avg": 4 * GPT2_XL, "exp_avg_sq": 4 * GPT2_XL}


def test_cpu_run_counts_adams_step_scalars(capsys):
    record = run_json(capsys, "gpt2-1.5b", "--device", "cpu")
    assert record["optimizer_state_breakdown"]["step"] == 4 * GPT2_XL_TENSORS
    assert record["settings"]["precision"] == "bf16-mixed"
    assert record["gpu"] is None


def test_master_weight_scheme_is_2_2_12(capsys):
    record = run_json(capsys, "gpt2-1.5b", "--precision", "16-master")
    assert record["model_states"]["parameters"] == 2 * GPT2_XL
    assert record["model_states"]["gradients"] == 2 * GPT2_XL
    assert record["model_states"]["optimizer_states"] == 12 * GPT2_XL


def test_zero_3_over_8_gpus_shards_every_state(capsys):
    # DeepSpeed ZeRO-3 (the default engine of --zero 3), as it allocates (estimators/parallel/deepspeed.py)
    record = run_json(capsys, "gpt2-1.5b", "--gpus", "8", "--zero", "3")
    full, rank = record["model_states_unsharded"], record["model_states"]
    assert rank["gradients"] == -(-full["gradients"] // 8)  # the fp32 gradient partition
    # AdamW's two states and the fp32 master partition DeepSpeed clones, on the flat partition (its
    # `step` is a host scalar on CUDA)
    assert rank["optimizer_states"] == 3 * rank["gradients"]
    # every parameter's partition (ceil(numel / 8) elements of the flat buffer), and the parameters of
    # at most stage3_param_persistence_threshold (1e5) elements whole on every rank besides (ds_persist)
    from memprof.estimators.models import load_model

    sizes = [t.numel for t in load_model("gpt2-1.5b").parameter_tensors()]
    assert rank["parameters"] == 4 * (sum(-(-n // 8) for n in sizes) + sum(n for n in sizes if n <= 100_000))


def test_table_reports_bytes_per_parameter_and_the_gpu_verdict(capsys):
    assert main(["estimate", "gpt2-1.5b", "--optimizer", "adamw", "--gpu", "t4"]) == 0
    out = capsys.readouterr().out
    assert "1,557,611,200 parameters" in out
    model_states_row = next(line for line in out.splitlines() if line.startswith("model states"))
    assert model_states_row.split()[2] == "16.00"
    # 23.2 GiB of model states cannot fit a 15 GiB T4 whatever the activations are
    assert "does not fit t4" in out


def test_csv_has_a_row_per_category(capsys):
    record = run_json(capsys, "gpt2-1.5b")
    assert main(["estimate", "gpt2-1.5b", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # issue 14: the per-category columns come first; the estimate's totals, phase, settings and
    # GPU verdict follow on every row (tests/test_estimate_itemized.py checks those columns)
    assert lines[0].startswith("model,category,model_state_bytes,peak_bytes,peak_phase,")
    peak = record["peak"]["by_category"]
    assert lines[1].startswith(f"gpt2-1.5b,parameters,{4 * GPT2_XL},{peak['parameters']},")
    assert lines[4].startswith(f"gpt2-1.5b,activations,,{peak['activations']},")
    assert len(lines) == 1 + 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["estimate", "gpt2-1.5bb"], "unknown model 'gpt2-1.5bb'; did you mean gpt2-1.5b"),
        (["estimate", "gpt2-1.5b", "--optimizer", "adamww"], "unknown optimizer 'adamww'; did you mean"),
        (["estimate", "gpt2-1.5b", "--precision", "fp8"], "unknown precision 'fp8'"),
        (["estimate", "gpt2-1.5b", "--batch-size", "0"], "--batch-size must be a whole number from 1"),
        (["estimate", "gpt2-1.5b", "--batch-size", "99999999"], "--batch-size must be a whole number from 1"),
        (["estimate", "gpt2-1.5b", "--seq-len", "-5"], "--seq-len must be a whole number from 1"),
        (["estimate", "gpt2-1.5b", "--gpu", "h1000"], "unknown GPU 'h1000'"),
        (["estimate", "gpt2-1.5b", "--gpus", "0"], "--gpus must be a whole number from 1"),
        (["estimate", "gpt2-1.5b", "--offload", "optimizer"], "CPU offload needs a ZeRO stage"),
        (["estimate", "/nonexistent/config.json"], "/nonexistent/config.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memprof: error: ")
    assert message in err


def test_malformed_config_names_the_file(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "gpt2", "n_layer": 2,,}')
    assert main(["estimate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1


def test_invalid_zero_stage_is_a_usage_error_with_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "memprof", "estimate", "gpt2-1.5b", "--zero", "5"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "'--zero'" in proc.stderr and "0<=x<=3" in proc.stderr


def test_estimate_imports_neither_torch_nor_pandas_nor_matplotlib():
    # GIVEN a fresh interpreter WHEN it runs the headline estimate THEN no heavy module was imported
    code = (
        "import sys; from memprof.cli import main; rc = main(['estimate', 'gpt2-1.5b', '--optimizer', "
        "'adamw', '--gpu', 'h100-80gb']); heavy = sorted(m for m in ('torch', 'pandas', 'matplotlib', "
        "'numpy') if m in sys.modules); print(rc, heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "0 []"
