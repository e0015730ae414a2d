"""The profiler reads a peft LoRA / QLoRA model (memprof.profiler.adapters: settings.adapter) and the
comparison predicts what ran: `Profile.compare()` on real CPU runs of peft + bitsandbytes, the record's
round trip and schema check, and what the comparison does with adapters it cannot model."""

from __future__ import annotations

import copy

import pytest

from memprof.comparison.observed import observe, precision_of, target_names
from memprof.estimators.errors import RecordError
from memprof.estimators.records import ProfileRecord

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


def _profile(quantize=None, double_quant=False, targets=None, dropout=0.0, autocast=None):
    """A tiny llama trained through peft (tiny_models.apply_lora), one step profiled after a warm-up."""
    import memprof
    from memprof.tiny_models import apply_lora, batch, build

    torch.manual_seed(0)
    model, _ = build("llama", "sdpa")
    model = apply_lora(
        model,
        rank=8,
        targets=targets,
        dropout=dropout,
        quantize=quantize,
        double_quant=double_quant,
        compute_dtype=autocast or torch.float32,
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

    def step():
        inputs = batch("llama", 2, 32)
        with torch.autocast("cpu", autocast or torch.bfloat16, enabled=autocast is not None):
            out = model(**inputs)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    with memprof.track(model, opt, events=False) as run:
        step()
    return run


def _rows(frame):
    return {(s, c): frame.loc[(s, c)] for s, c in frame.index}


@pytest.mark.parametrize(
    ("quantize", "double_quant", "targets", "dropout", "autocast", "precision", "lora_targets"),
    [
        (None, False, "all-linear", 0.1, None, "32-true", ("q_proj", "k_proj", "v_proj", "o_proj")),
        ("nf4", True, None, 0.0, "bf16", "bf16-mixed", ("q_proj", "v_proj")),
    ],
    ids=["lora-all-linear-dropout", "qlora-nf4-double-quant-bf16"],
)
def test_compare_predicts_the_lora_run_it_profiled(
    quantize, double_quant, targets, dropout, autocast, precision, lora_targets
):
    # GIVEN a real peft run (LoRA on every linear layer with dropout; QLoRA nf4 + double quant, bf16 autocast)
    run = _profile(quantize, double_quant, targets, dropout, {"bf16": torch.bfloat16}.get(autocast))
    # THEN the profile records the adapter as peft and bitsandbytes hold it
    adapter = run.to_dict()["settings"]["adapter"]
    assert (adapter["base_model"], adapter["ranks"], adapter["dropouts"]) == ("LlamaForCausalLM", [8], [dropout])
    assert (adapter["quantize"], adapter["double_quant"]) == (quantize, double_quant)
    assert adapter["quantized"] == (14 if quantize else 0)  # 2 layers x 7 linears (tiny llama)
    frame = run.compare()
    # AND the comparison predicts with the LoRA knobs (the precision read past the uint8 weights) and says so
    observed = frame.attrs["observed"]
    assert observed["precision"] == precision
    assert (observed["lora_rank"], observed["lora_dropout"]) == (8, dropout)
    assert observed["lora_targets"][: len(lora_targets)] == lora_targets
    assert observed.get("quantize") == quantize and observed.get("double_quant", False) == double_quant
    assert any("peft LoRA r=8" in n and "--lora-rank 8" in n for n in frame.attrs["notes"]), frame.attrs["notes"]
    assert frame.attrs["missing"] == []
    rows = _rows(frame)
    # model states to the byte, the peak within the matrix's tolerance
    for cat in ("parameters", "gradients", "optimizer_states"):
        assert rows[("model_states", cat)]["predicted"] == rows[("model_states", cat)]["measured"], cat
    peak = rows[("peak", "allocated")]
    assert abs(peak["error_pct"]) <= 3.0, peak
    # AND the saved profile, read back, predicts the same
    data = run.to_dict()
    assert ProfileRecord.from_dict(data).to_dict() == data
    assert observe(data).estimate_kwargs() == observed


def test_the_precision_of_a_quantized_model_is_that_of_its_floating_parameters():
    dtypes = {"uint8": 36864, "float32": 20288}
    assert precision_of(dtypes, None) is None  # read naively, the packed 4-bit weights decide
    assert precision_of(dtypes, None, quantized=True) == "32-true"
    assert precision_of(dtypes, "bfloat16", quantized=True) == "bf16-mixed"
    assert precision_of({"int8": 10, "bfloat16": 4}, None, quantized=True) == "bf16-true"


def test_targets_are_named_as_the_flag_would_name_them():
    linears = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj")]
    every_v_and_q = [linears[5], linears[3], linears[2], linears[0]]  # in peft's registration order
    assert target_names(every_v_and_q, linears) == ("q_proj", "v_proj")
    only_layer_0 = [linears[0]]  # "q_proj" would select layer 1's too: the full name
    assert target_names(only_layer_0, linears) == ("model.layers.0.self_attn.q_proj",)


def _record_with(adapter):
    from memprof.estimators.records.profile import ProfileSettings

    return ProfileSettings.from_dict({"model": "PeftModel", "adapter": adapter})


@pytest.mark.parametrize(
    ("adapter", "field"),
    [
        ([1, 2], "'adapter' must be an object"),
        ({"ranks": [0]}, "ranks"),
        ({"targets": [3]}, "targets"),
        ({"double_quant": "yes"}, "double_quant"),
        ({"unquantized_parameters": 1.5}, "unquantized_parameters"),
    ],
)
def test_a_malformed_adapter_is_a_record_error_naming_the_field(adapter, field):
    with pytest.raises(RecordError, match=field):
        _record_with(adapter)


def _bare(settings):
    """A profile holding only `settings` (nothing measured)."""
    return {
        "schema": "memprof.profile/1",
        "mode": "attribution",
        "device": "cpu",
        "settings": settings,
        "model_states": {},
        "peak": {},
        "phases": {},
    }


def test_an_adapter_memprof_cannot_model_leaves_the_peak_unpredicted_with_the_reason():
    from memprof.tiny_models import build

    model, _ = build("llama", "sdpa")
    config = model.config.to_dict()
    n = sum(p.numel() for p in model.parameters())
    settings = {
        "model": "PeftModel",
        "parameters": n,
        "param_dtypes": {"float32": n},
        "input_shapes": [[2, 32]],
        "hf_config": config,
        "parameter_tensors": [["a", [8, 64]]],
        "adapter": {"type": "lora", "base_model": "LlamaForCausalLM", "ranks": [4, 8], "dropouts": [0.0]},
    }
    obs = observe(_bare(settings))
    assert obs.model is None and obs.lora_rank is None
    assert any("ranks [4, 8]" in m and "peak not predicted" in m for m in obs.missing), obs.missing
    # a rank the parameters do not confirm is not assumed either
    wrong = copy.deepcopy(settings)
    wrong["adapter"].update(ranks=[8], targets=["model.layers.0.self_attn.q_proj"], unquantized_parameters=n)
    obs = observe(_bare(wrong))
    assert obs.model is None and obs.lora_rank is None
    assert any("LoRA r=8 on 1 modules" in m for m in obs.missing), obs.missing
