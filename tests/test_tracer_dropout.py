"""Dropout on a traced `device="cuda"` step runs as CUDA dispatches it (memprof.tracer.rules, `_CudaDropout`).

aten/src/ATen/native/Dropout.cpp `dropout()`: a CUDA input in training with 0 < p < 1 and elements
(`is_fused_kernel_acceptable`) runs `at::native_dropout`, which keeps a bool mask for backward; anything
else runs the composite `_dropout<false>` (a noise tensor of the input's dtype), which is what the CPU
trace runs without the rule. `dropout_`, feature and alpha dropout run the composite on every device.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import memprof
from memprof.tracer import trace_preset
from memprof.tracer.rules import DROPOUT_RULE, shape_rules


def _saved_mask(y: torch.Tensor) -> torch.dtype | None:
    """The mask NativeDropoutBackward0 keeps (None when the composite ran)."""
    if type(y.grad_fn).__name__ != "NativeDropoutBackward0":
        return None
    return y.grad_fn._saved_result1.dtype


def test_cuda_dropout_runs_native_dropout_only_where_cuda_does():
    notes: list[str] = []
    with FakeTensorMode():
        x = torch.randn(4, 8, requires_grad=True)
        with shape_rules(notes, cuda=True):
            assert _saved_mask(F.dropout(x * 1, 0.1, True)) == torch.bool
            assert _saved_mask(torch.dropout(x * 1, 0.5, True)) == torch.bool
            assert _saved_mask(torch.nn.Dropout(0.2)(x * 1)) == torch.bool
            # not the fused kernel on CUDA either: the composite, as on the CPU
            assert _saved_mask(F.dropout(x * 1, 0.0, True)) is None
            assert _saved_mask(F.dropout(x * 1, 1.0, True)) is None
            assert _saved_mask(F.dropout(x * 1, 0.1, False)) is None
            assert F.dropout(torch.randn(0, 8, requires_grad=True), 0.1, True).shape == (0, 8)
            assert _saved_mask(F.dropout(x * 1, 0.1, True, inplace=True)) is None
            assert _saved_mask(F.alpha_dropout(x * 1, 0.1, True)) is None
            assert _saved_mask(F.feature_alpha_dropout(x * 1, 0.1, True)) is None
            assert _saved_mask(F.dropout2d(torch.randn(2, 3, 4, 4, requires_grad=True) * 1, 0.1, True)) is None
        # removed after the trace: the composite's noise tensor again
        y = F.dropout(x * 1, 0.1, True)
        assert _saved_mask(y) is None and type(y.grad_fn).__name__ == "MulBackward0"
    assert notes == [DROPOUT_RULE.format(calls=3)]


def test_cpu_trace_keeps_the_composite():
    notes: list[str] = []
    with FakeTensorMode(), shape_rules(notes):
        x = torch.randn(4, 8, requires_grad=True)
        assert _saved_mask(F.dropout(x * 1, 0.1, True)) is None
    assert notes == []


GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64, "vocab_size": 128}
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
BATCH, SEQ = 2, 32


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_traced_cuda_dropout_saves_what_the_analytic_estimate_saves(tmp_path, precision):
    """The bytes GPT-2's dropout adds to the tensors saved for backward (eager attention, on cuda): traced
    with the rule, they equal the analytic estimate's (which models CUDA's bool mask) and the count from
    the shapes: a 1 B mask per element of each dropout's input (the embeddings, and per layer the attention
    probabilities, the attention's and the MLP's outputs), and in float32 the attention probabilities kept
    a second time (softmax keeps its output, the value matmul the dropped-out copy; under autocast the matmul
    keeps its bf16 cast of the probabilities with or without dropout)."""
    saved = {}
    for name, cfg in (("dropout", GPT2), ("none", {**GPT2, **NO_DROPOUT})):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        kw = dict(device="cuda", batch_size=BATCH, seq_len=SEQ, attention="eager")
        traced = trace_preset(str(path), "adamw", precision, **kw).record
        analytic = memprof.estimate(str(path), "adamw", precision, **kw).record
        saved[name] = (traced.activations_saved, analytic.activations_saved)
        assert any(w.startswith("dropout as CUDA runs it: 7 ") for w in traced.warnings) == (name == "dropout")
    hidden = BATCH * SEQ * GPT2["n_embd"]
    probs = BATCH * GPT2["n_head"] * SEQ * SEQ
    masks = hidden + GPT2["n_layer"] * (probs + 2 * hidden)
    expected = masks + (GPT2["n_layer"] * probs * 4 if precision == "32-true" else 0)
    traced_added = saved["dropout"][0] - saved["none"][0]
    analytic_added = saved["dropout"][1] - saved["none"][1]
    assert traced_added == analytic_added == expected
