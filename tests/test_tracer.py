"""The tracer against the real thing: each workload traced on fake tensors, and the same step run
for real on the CPU under memprof.track (steady state: the second step is measured).

Tolerances: model states and the optimizer's states by key exact to the byte; the peak of live
tensor bytes within 1 %. Both sides attribute storages with the same StorageTracker, so what can
differ is only what the fake kernels allocate against the real ones.
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch

import memprof
import tracer_models as M
from memprof.tracer.optimizers import build_optimizers

PEAK_TOLERANCE = 0.01
NEEDS_PEFT = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="peft is not installed (pip install -e '.[dev]')"
)


def _default_loss(out, inputs):
    loss = getattr(out, "loss", None)
    return loss if loss is not None else out


def _call(model, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def measure(factory, optimizer="adamw", precision="32-true", **kw) -> dict:
    """The factory's step for real: step 1 warms the optimizer up, step 2 runs under memprof.track."""
    w = memprof.Workload.from_value(factory(**kw))
    model, inputs = w.model, w.inputs
    model.train()
    if precision == "bf16-true":  # the workloads cast here hold one floating tensor as inputs
        model.to(torch.bfloat16)
        inputs = inputs.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    opts = [w.optimizer(params)] if w.optimizer else build_optimizers(optimizer, params)
    loss_fn = w.loss or _default_loss
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()

    def step():
        with autocast:
            out = _call(model, inputs)
            loss = loss_fn(out, inputs)
        loss.backward()
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)

    step()
    with memprof.track(model, opts) as run:
        step()
    return run.to_dict()


CASES = [
    pytest.param(M.gpt_workload, "adamw", "32-true", {}, id="nanogpt-adamw-fp32"),
    pytest.param(M.gpt_workload, "adamw", "bf16-mixed", {}, id="nanogpt-adamw-bf16-mixed"),
    pytest.param(M.cnn_workload, "adamw", "32-true", {}, id="cnn-adamw-fp32"),
    pytest.param(M.cnn_workload, "sgd-momentum", "32-true", {}, id="cnn-sgd-momentum"),
    pytest.param(M.mlp_workload, "adamw", "32-true", {}, id="checkpointed-mlp-own-sgd"),
    pytest.param(M.mlp_workload, "adamw", "bf16-true", {}, id="checkpointed-mlp-bf16-true"),
    pytest.param(M.hf_llama_workload, "adamw", "32-true", {}, id="hf-llama-workload"),
    pytest.param(M.hf_llama_workload, "adafactor", "bf16-mixed", {}, id="hf-llama-adafactor-bf16-mixed"),
    pytest.param(M.peft_lora_workload, "adamw", "bf16-mixed", {}, id="peft-lora-llama", marks=NEEDS_PEFT),
]


@pytest.mark.parametrize("factory, optimizer, precision, kw", CASES)
def test_traced_step_matches_the_measured_step(factory, optimizer, precision, kw):
    # GIVEN a workload traced on fake tensors and the same step measured for real
    traced = memprof.trace(factory, optimizer, precision, device="cpu", **kw).to_dict()
    measured = measure(factory, optimizer, precision, **kw)
    # THEN model states and the optimizer's states are exact to the byte
    assert traced["model_states"] == measured["model_states"]
    assert traced["optimizer_state_breakdown"] == measured["optimizer_state_breakdown"]
    # AND the peak of live tensor bytes is within 1 %
    t, m = traced["peak"]["allocated"], measured["peak"]["allocated"]
    assert abs(t - m) / m <= PEAK_TOLERANCE, (t, m, traced["peak"], measured["peak"])
    assert traced["peak"]["by_category"]["parameters"] == measured["peak"]["by_category"]["parameters"]


def test_optimizer_states_come_from_the_optimizer_itself():
    # GIVEN AdamW traced over a model with a frozen layer
    def frozen_head(batch_size=4):
        w = M.gpt_workload(batch_size)
        w.model.lm_head.weight.requires_grad_(False)  # tied: the embedding is frozen too
        return w

    record = memprof.trace(frozen_head, "adamw", "32-true", device="cpu").record
    trainable = sum(p.numel() for p in M.gpt_workload().model.parameters()) - 256 * 64
    # THEN exp_avg and exp_avg_sq cover the trainable parameters only, 4 bytes each, plus one
    # 4-byte `step` per trainable tensor (torch.optim keeps it as a float32 0-d tensor on the CPU)
    assert record.optimizer_state_breakdown["exp_avg"] == 4 * trainable
    assert record.optimizer_state_breakdown["exp_avg_sq"] == 4 * trainable
    assert record.model_states.gradients == 4 * trainable


def test_cuda_adds_the_allocator_replay_and_the_context():
    record = memprof.trace(M.gpt_workload, "adamw", "bf16-mixed", device="cuda", gpu="a100-80gb").record
    by = record.peak.by_category
    assert record.settings.optimizer_impl == "foreach"  # torch's CUDA default
    assert record.cuda_context is not None and by["cuda_context"] == record.cuda_context.bytes
    assert record.allocator is not None and record.allocator["source"] == "trace"
    assert record.peak.reserved == sum(
        by[c] for c in ("parameters", "gradients", "optimizer_states", "activations", "temporary", "fragmentation")
    )
    assert record.peak.device_total == record.peak.reserved + by["cuda_context"]
    assert record.peak.allocated >= record.peak.tensor_bytes - record.temporary_breakdown["cublas_workspace"]
    assert record.gpu is not None and record.gpu.fits is True
    assert any("traced on the CPU" in w for w in record.warnings)


def test_a_bare_hugging_face_model_gets_token_inputs():
    record = memprof.trace(M.hf_llama_model, "adamw", "32-true", device="cpu", batch_size=2, seq_len=16).record
    assert (record.settings.batch_size, record.settings.seq_len) == (2, 16)
    assert record.settings.attention == "sdpa"
    assert any("inputs made by memprof: input_ids, labels" in w for w in record.warnings)
    # the same step, made by hand, traces to the same bytes
    by_hand = memprof.trace(M.hf_llama_workload, "adamw", "32-true", device="cpu", batch_size=2, seq_len=16).record
    assert record.peak.allocated == by_hand.peak.allocated


def test_a_model_calling_to_inside_the_factory_traces():
    def cast_in_factory(batch_size=8):
        w = M.cnn_workload(batch_size)
        w.model.to(torch.float64).to(torch.float32).to("cpu")  # as peft and many scripts do
        return w

    assert memprof.trace(cast_in_factory, "adamw", "32-true", device="cpu").record.peak.allocated > 0
