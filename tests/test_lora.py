"""LoRA and quantized base weights (memprof.estimators.adapters) against real peft / bitsandbytes on
the CPU: the adapted model's parameters tensor by tensor, model states to the byte, the peak of a
real step within the matrix's tolerance, and the one-line errors of bad input."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from memprof.estimators.adapters import adapt
from memprof.estimators.errors import ParameterError
from memprof.estimators.estimation import estimate
from memprof.estimators.precision import get_precision

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

_DTYPES = {"float32": torch.float32, "uint8": torch.uint8, "int8": torch.int8}


def _tiny(family: str = "llama"):
    from memprof.tiny_models import build

    return build(family, "sdpa")


@pytest.mark.parametrize(
    ("family", "targets"),
    [("llama", None), ("llama", "all-linear"), ("gpt2", None), ("opt", "q_proj,k_proj,fc1"), ("bert", "all-linear")],
)
def test_lora_parameters_are_peft_named_parameters(family, targets):
    from memprof.tiny_models import apply_lora

    model, spec = _tiny(family)
    real = apply_lora(model, rank=4, targets=targets)
    adapted = adapt(spec, get_precision("32-true"), lora_rank=4, lora_targets=targets)
    ours = {t.name: t for t in adapted.parameter_tensors()}
    theirs = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p for n, p in real.named_parameters()}
    assert set(ours) == set(theirs)
    for name, p in theirs.items():
        t = ours[name]
        assert (t.numel, t.trainable) == (p.numel(), p.requires_grad), name
        if t.dtype is not None:
            assert _DTYPES[t.dtype] == p.dtype, name
    assert adapted.num_parameters == sum(p.numel() for p in real.parameters())


@pytest.mark.parametrize(("quantize", "double_quant"), [("nf4", False), ("nf4", True), ("fp4", False), ("int8", False)])
def test_quantized_storage_to_the_byte(quantize, double_quant):
    """Every tensor bitsandbytes keeps (weights, absmax, codes, row scales) against the estimate."""
    from memprof.profiler.api import _quantization_state
    from memprof.tiny_models import apply_lora

    model, spec = _tiny("llama")
    real = apply_lora(model, rank=8, quantize=quantize, double_quant=double_quant)
    measured = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in real.parameters()}
    measured.update({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _quantization_state(real)})
    e = estimate(spec, "adamw", "32-true", device="cpu", lora_rank=8, quantize=quantize, double_quant=double_quant)
    assert e.record.model_states.parameters == sum(measured.values())
    trainable = sum(p.numel() * p.element_size() for p in real.parameters() if p.requires_grad)
    assert e.record.model_states.gradients == trainable


def test_real_lora_and_qlora_steps_within_tolerance():
    """Two validation-matrix cases run for real: model states exact, the peak within 3 %."""
    import transformers

    from memprof.validate import Case, run_case

    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in (
            Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=8),
            Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=8, quantize="nf4", double_quant=True),
        ):
            result = run_case(case)
            assert result["status"] == "pass", (case.id, result["error"], result["rows"].get("peak.allocated"))


def test_frozen_base_saves_no_weight_gradient_inputs():
    """LoRA on q/v only: no gradients or states for the base; fewer saved activations than full training."""
    full = estimate("llama-3.1-8b", seq_len=512, device="cpu")
    lora = estimate("llama-3.1-8b", seq_len=512, device="cpu", lora_rank=16)
    adapters = 32 * (16 * 4096 + 4096 * 16 + 16 * 4096 + 1024 * 16)  # q_proj and v_proj of 32 layers
    assert lora.record.model_states.gradients == adapters * 4
    assert lora.record.settings.lora_modules == 64
    assert lora.record.activations_saved < full.record.activations_saved


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora_rank": 8, "lora_targets": "nope"}, "names no linear module"),
        ({"lora_rank": 0}, "at least 1"),
        ({"lora_rank": -4}, "at least 1"),
        ({"lora_rank": 100}, "larger than layer"),
        ({"quantize": "nf4"}, "nothing would train"),
        ({"lora_rank": 8, "quantize": "int8", "double_quant": True}, "4-bit"),
        ({"lora_rank": 8, "lora_dropout": 1.0}, "probability"),
        ({"lora_targets": "q_proj"}, "configure LoRA: add lora_rank"),
        ({"lora_rank": 8, "zero": 2}, "ZeRO, FSDP, pipelines or CPU offload are not modelled"),
    ],
)
def test_bad_input_is_a_parameter_error(kwargs, message):
    _, spec = _tiny("llama")
    with pytest.raises(ParameterError, match=message.replace("{", r"\{").replace("}", r"\}")):
        estimate(spec, device="cpu", **kwargs)


def test_mixture_of_experts_lora_is_refused():
    _, mixtral = _tiny("mixtral")
    with pytest.raises(ParameterError, match="mixture-of-experts model"):
        estimate(mixtral, device="cpu", lora_rank=8, lora_targets="q_proj,v_proj")


def test_unquantizable_family_and_missing_default():
    _, gpt2 = _tiny("gpt2")
    with pytest.raises(ParameterError, match="cannot quantize a gpt2"):
        estimate(gpt2, device="cpu", lora_rank=4, quantize="nf4")
    _, vit = _tiny("vit")
    with pytest.raises(
        ParameterError, match=r"no default LoRA target modules for model type 'vit'.*its linear modules: "
    ):
        estimate(vit, device="cpu", lora_rank=4)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--lora-rank", "16", "--lora-targets", "c_attn"], "--lora-targets c_attn names no linear module"),
        (["--lora-rank", "0"], "--lora-rank must be a whole number"),
        (["--quantize", "nf4"], "--quantize nf4 freezes the whole model"),
    ],
)
def test_cli_bad_input_one_line_exit_2(args, expected):
    out = subprocess.run(
        [sys.executable, "-m", "memprof", "estimate", "llama-3.1-8b", *args], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr


def test_fit_offers_lora_qlora_and_fused_where_they_make_it_fit():
    """Full fine-tuning of Llama-3.2-1B at 512 tokens does not fit a T4; the knob table says LoRA and
    QLoRA would (each row an estimate that was run)."""
    from memprof.estimators.fit import fit

    result = fit("llama-3.2-1b", "t4", seq_len=512, batch_size=1)
    rows = {r.label: r for r in result.rows}
    assert result.max_batch_size is None  # full training: not even batch 1
    assert rows["--lora-rank 16"].fits and rows["--lora-rank 16 --quantize nf4"].fits
    assert rows["--lora-rank 16 --quantize nf4"].peak < rows["--lora-rank 16"].peak
    assert "--optimizer-impl fused" in rows
    qlora = fit("llama-3.2-1b", "t4", seq_len="auto", lora_rank=16, quantize="nf4")
    assert qlora.max_seq_len is not None and qlora.best is not None
    assert qlora.best.settings.quantize == "nf4" and qlora.best.settings.lora_modules == 32


def test_estimate_json_round_trips_the_adapter_settings():
    import json

    from memprof.estimators.records import EstimateRecord

    record = estimate("llama-3.1-8b", lora_rank=16, lora_targets="all-linear", quantize="nf4", double_quant=True).record
    data = record.to_dict()
    assert {k: data["settings"][k] for k in ("lora_rank", "lora_targets", "lora_modules", "quantize")} == {
        "lora_rank": 16,
        "lora_targets": "all-linear",
        "lora_modules": 224,
        "quantize": "nf4",
    }
    assert EstimateRecord.from_dict(json.loads(json.dumps(data))).to_dict() == data
    assert "lora_rank" not in estimate("llama-3.1-8b").record.to_dict()["settings"]
