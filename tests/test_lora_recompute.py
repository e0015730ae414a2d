"""A submodule call holds its input until it returns (families/_trace.py, `module_returns`): what the
checkpointed recomputation's early stop still holds in a LoRA layer under autocast, where no frozen or
autocast linear saves the attention's / MLP's float32 input. Real CPU runs (memprof.validate)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.mark.parametrize(
    ("family", "before"),
    [("llama", -3.309), ("gemma3_text", -1.191)],  # peak error (%) when the input died at its last use
)
def test_lora_full_checkpointing_under_autocast_is_predicted(family, before):
    from memprof.validate import Case, run_case

    case = Case(family, "adamw", "bf16-mixed", "sdpa", "full", lora_rank=8, lora_targets="all-linear")
    result = run_case(case)
    assert result["status"] == "pass", result
    error = result["rows"]["peak.allocated"]["error_pct"]
    assert abs(error) < abs(before), error  # closer than before; within the matrix's tolerance (pass)
    assert result["inferred_mismatch"] == {}, result["inferred_mismatch"]


def test_the_attention_and_mlp_inputs_live_until_their_call_returns():
    from memprof.estimators.activations import ActivationSettings, build_trace
    from memprof.estimators.models import ModelSpec
    from memprof.tiny_models import build

    _, spec = build("llama", "sdpa")
    assert isinstance(spec, ModelSpec)
    tr = build_trace(spec, ActivationSettings(2, 32, "float32", "bfloat16", True, "sdpa", "full", device="cpu"))
    ops = tr.ops
    returns = [i for i, op in enumerate(ops) if op.op == "module_return" and op.layer == 0]
    # THEN each call's input (its layer norm's output) is read last when the call returns, after the
    # call's own last operation (o_proj, down_proj), before the residual add
    modules = []
    for i, norm in zip(returns, ("input_layernorm", "post_attention_layernorm"), strict=True):
        (held,) = ops[i].inputs
        producer = next(op for op in ops if any(t is held for t in op.outputs))
        assert producer.module == f"model.layers.0.{norm}"
        modules.append(ops[i - 1].module)
        assert ops[i + 1].op == "add"
    assert modules == ["model.layers.0.self_attn", "model.layers.0.mlp"]
