"""MODEL as `package.module:factory`: a user's function returning the Hugging Face model they train."""

from __future__ import annotations

import textwrap

import pytest

from memprof.cli import main
from memprof.predict import estimate

FACTORIES = textwrap.dedent("""
    import torch, transformers

    def _gpt2_config():
        return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=128,
                                       bos_token_id=0, eos_token_id=0)

    def tiny_gpt2():
        return transformers.GPT2LMHeadModel(_gpt2_config())

    def gpt2_without_head():
        return transformers.GPT2Model(_gpt2_config())

    def llama_70b_shape():
        # built on the meta device by memprof: no weight is allocated
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=80, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
            intermediate_size=28672, vocab_size=32000))

    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(4, 4))

    def broken():
        raise RuntimeError("no config found")

    not_callable = 3
""")


@pytest.fixture
def in_project(tmp_path, monkeypatch):
    (tmp_path / "usermodels.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_a_factory_gives_the_same_estimate_as_its_config(in_project):
    # GIVEN the same model as a factory and as the config.json it was built from
    import transformers

    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=128, bos_token_id=0, eos_token_id=0
    )
    config.to_json_file(in_project / "config.json")
    by_factory = estimate("usermodels:tiny_gpt2", device="cpu", batch_size=2, seq_len=32)
    by_config = estimate(str(in_project / "config.json"), device="cpu", batch_size=2, seq_len=32)
    # THEN parameters, model states and the peak agree exactly
    assert by_factory.parameters == by_config.parameters == 116_480
    assert by_factory.to_dict()["peak"] == by_config.to_dict()["peak"]


def test_a_large_factory_is_built_on_the_meta_device(in_project):
    result = estimate("usermodels:llama_70b_shape", gpus=8, zero=3)
    assert result.parameters == 68_976_648_192  # Llama-2-70B's shape


@pytest.mark.parametrize(
    "ref, message",
    [
        # not a model the analytic estimator knows: traced, and the trace says what it lacks
        (
            "usermodels:gpt2_without_head",
            "returned a BaseModelOutputWithPastAndCrossAttentions with no loss; pass loss=",
        ),
        (
            "usermodels:mlp",
            "returned a Sequential, which is not a Hugging Face model, so memprof cannot make its inputs",
        ),
        ("usermodels:broken", "the factory raised RuntimeError: no config found"),
        ("usermodels:not_callable", "not_callable (int) is not a function returning an nn.Module"),
        ("usermodels:missing", "usermodels has no 'missing'; callables there: broken, gpt2_without_head"),
        ("nosuchpackage.models:build", "cannot import module 'nosuchpackage.models'"),
    ],
)
def test_bad_factories_are_one_line_errors(in_project, capsys, ref, message):
    assert main(["estimate", ref, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_presets_do_not_import_torch_for_the_factory_path():
    import subprocess
    import sys

    code = (
        "import sys; from memprof.estimators.models import load_model; load_model('gpt2-124m'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
