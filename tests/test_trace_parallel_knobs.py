"""`memprof estimate --trace` (and MODULE:FACTORY, `memprof optimizers` on a factory) with the parallel
knobs of the analytic estimate: the tracer gets only its own arguments (the defaults of --engine,
--fsdp-unit, --pp, --pp-schedule, --microbatches, --tp are dropped), and one set to anything else is
one line, exit 2 (the traced step runs the workload's own code on one device)."""

from __future__ import annotations

import json

import pytest

from memprof.cli import main

TINY_GPT2 = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "vocab_size": 128,
    "n_positions": 64,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 2,
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_GPT2))
    return str(path)


def _record(capsys, *args):
    assert main(["estimate", *args, "--format", "json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_a_preset_traces_with_the_default_parallel_knobs(capsys):
    # the knobs --tp / --pp default to 1 on the command line; the tracer must not receive them
    traced = _record(capsys, "gpt2-124m", "--trace", "--device", "cpu", "--seq-len", "32")
    analytic = _record(capsys, "gpt2-124m", "--device", "cpu", "--seq-len", "32")
    assert any(w.startswith("traced:") for w in traced["warnings"])
    assert traced["model_states"] == analytic["model_states"]  # parameters, gradients, AdamW states: exact


def test_the_table_of_a_traced_config_renders(capsys, tiny_config):
    assert main(["estimate", tiny_config, "--trace", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "device total" in out and "traced:" in out


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (("--tp", "2"), "--tp"),
        (("--pp", "2"), "--pp"),
        (("--pp-schedule", "gpipe"), "--pp-schedule"),
        (("--microbatches", "4"), "--microbatches"),
        (("--engine", "fsdp"), "--engine"),
        (("--fsdp-unit", "model"), "--fsdp-unit"),
    ],
)
def test_a_parallel_knob_with_trace_is_one_line(capsys, tiny_config, extra, flag):
    assert main(["estimate", tiny_config, "--trace", "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"memprof: error: {flag} shards or splits a multi-GPU run (the analytic estimate models it); the traced "
        "step runs the workload's own code on one device: drop it with --trace\n"
    )


def test_optimizers_of_a_traced_factory_refuse_tp(capsys, tmp_path, monkeypatch):
    (tmp_path / "tpcode.py").write_text(
        "import torch, memprof\n"
        "def mlp(batch_size=2):\n"
        "    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))\n"
        "    return memprof.Workload(m, torch.randn(batch_size, 4), loss=lambda out, inputs: out.sum())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["optimizers", "tpcode:mlp", "--device", "cpu", "--tp", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memprof: error: --tp shards or splits") and err.count("\n") == 1, err
