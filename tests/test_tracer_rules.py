"""What the tracer models beyond running the step as the CPU would: operators PyTorch marks data-dependent
that a rule makes traceable (memprof.tracer.rules), optimizer states CUDA keeps on the host, and the SDPA
kernel CUDA picks. Each figure is checked against a real CPU run or against torch's own source rules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import memprof
from memprof.tracer.rules import CTC_RULE

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import tracer_models  # noqa: E402

REF = str(TESTS / "tracer_models.py")


def _measured(workload: dict, optimizer: torch.optim.Optimizer):
    def step():  # the traced step: the output stays referenced through backward
        out = workload["model"](workload["inputs"])
        loss = workload["loss"](out, workload["inputs"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with memprof.track(workload["model"], optimizer) as run:
        step()
    return run.record


def test_ctc_with_python_int_lengths_traces_to_the_byte():
    torch.manual_seed(0)
    traced = memprof.trace(f"{REF}:ctc_workload", "adamw", "32-true", device="cpu").record
    workload = tracer_models.ctc_workload()
    measured = _measured(workload, torch.optim.AdamW(workload["model"].parameters()))
    assert traced.peak.allocated == measured.peak.allocated
    assert traced.model_states == measured.model_states
    assert CTC_RULE in traced.warnings
    # log_alpha: batch 3 x T 40 x (2 x 9 + 1) float32, saved for backward
    assert traced.activations_saved >= 3 * 40 * 19 * 4


def test_ctc_with_tensor_lengths_stays_a_named_error():
    with pytest.raises(memprof.UserCodeError, match=r"_ctc_loss.*depends on tensor values"):
        memprof.trace(f"{REF}:ctc_tensor_lengths_workload", "adamw", "32-true", device="cpu")


def test_moe_routing_from_topk_is_assumed_balanced():
    # the routing rule (tests/test_tracer_moe.py checks it against real runs); masks of other values: an error
    traced = memprof.trace(f"{REF}:moe_workload", "adamw", "32-true", device="cpu").record
    assert [w for w in traced.warnings if w.startswith("routing assumed balanced")]


def test_ctc_rule_is_scoped_to_the_trace():
    from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode

    memprof.trace(f"{REF}:ctc_workload", "sgd", "32-true", device="cpu")
    assert torch.nn.functional.ctc_loss.__module__ == "torch.nn.functional"
    with FakeTensorMode(), pytest.raises(DynamicOutputShapeException):
        lp = torch.randn(10, 2, 5).log_softmax(-1)
        torch.ops.aten._ctc_loss(lp, torch.ones(2, 3, dtype=torch.long), [10, 10], [3, 3])


# ------------------------------------------------------- optimizer states on the host (CUDA)


def _tiny(optimizer: str, device: str, **kw):
    return memprof.trace(f"{REF}:tiny_workload", optimizer, "32-true", device=device, **kw).record


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "adafactor", "rmsprop"])
def test_step_counters_are_host_memory_on_cuda(optimizer):
    model = tracer_models.tiny_workload()["model"]
    tensors = len(list(model.parameters()))
    cpu, cuda = _tiny(optimizer, "cpu"), _tiny(optimizer, "cuda")
    # torch/optim/*.py _init_group: `step` is torch.tensor(0.0) (no device) unless capturable or fused
    assert cpu.optimizer_state_breakdown["step"] == 4 * tensors
    assert "step" not in cuda.optimizer_state_breakdown
    assert cuda.model_states.optimizer_states == cpu.model_states.optimizer_states - 4 * tensors
    assert cuda.peak.by_category["optimizer_states"] == cpu.peak.by_category["optimizer_states"] - 4 * tensors


def test_fused_and_asgd_keep_their_scalars_on_the_device():
    model = tracer_models.tiny_workload()["model"]
    tensors = len(list(model.parameters()))
    fused = _tiny("adamw", "cuda", optimizer_impl="fused")
    assert fused.optimizer_state_breakdown["step"] == 4 * tensors  # device=p.device when fused
    asgd = _tiny("asgd", "cuda")  # step, eta, mu: torch.zeros((), device=p.device) always
    assert asgd.optimizer_state_breakdown == _tiny("asgd", "cpu").optimizer_state_breakdown


# --------------------------------------------------------------------------- SDPA on CUDA


@pytest.mark.parametrize(
    "precision, kernel",
    [("bf16-mixed", "flash"), ("32-true", "efficient")],  # flash runs 16-bit inputs only (check_dtypes_flash)
)
def test_sdpa_runs_the_kernel_cuda_picks(precision, kernel):
    record = memprof.trace(f"{REF}:gpt_workload", "adamw", precision, device="cuda", seq_len=40).record
    assert record.settings.attention_kernel == kernel


def test_efficient_kernel_pads_its_logsumexp_as_cuda_allocates_it():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 40, 16, requires_grad=True)
        out, lse, _seed, _offset = torch.ops.aten._scaled_dot_product_efficient_attention(q, q, q, None, True)
        assert lse.shape == (2, 4, 64)  # ceil(40 / 32) x 32 rows (attention.cu, _meta_registrations.py)
        assert out.shape == q.shape


# ------------------------------------------------------------------ the loop's own choices


@pytest.mark.parametrize("keep_output, zero_grad", [(False, "set-to-none"), (True, "zeros"), (False, "zeros")])
def test_loop_knobs_trace_the_loop_they_name(keep_output, zero_grad):
    """--no-keep-output: the loop holds no reference to the output through backward; --zero-grad zeros:
    the gradients are kept (zeroed), so they exist from the forward on. Against the same loop, for real."""
    traced = memprof.trace(
        f"{REF}:ctc_workload", "adamw", "32-true", device="cpu", keep_output=keep_output, zero_grad=zero_grad
    ).record
    torch.manual_seed(0)
    w = tracer_models.ctc_workload()
    model, opt = w["model"], torch.optim.AdamW(w["model"].parameters())

    def step():
        if keep_output:
            out = model(w["inputs"])
            loss = w["loss"](out, w["inputs"])
        else:
            loss = w["loss"](model(w["inputs"]), w["inputs"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=zero_grad == "set-to-none")

    step()
    with memprof.track(model, opt) as run:
        step()
    assert traced.peak.allocated == run.record.peak.allocated
    assert traced.model_states == run.record.model_states


def test_the_estimate_command_passes_the_loop_knobs_to_the_trace(capsys):
    from memprof.cli import main

    args = ["estimate", f"{REF}:ctc_workload", "--precision", "32-true", "--device", "cpu", "--batch-size", "3"]
    args += ["--format", "json"]
    assert main(args) == 0
    kept = json.loads(capsys.readouterr().out)["peak"]["allocated"]
    assert main([*args, "--no-keep-output"]) == 0
    dropped = json.loads(capsys.readouterr().out)["peak"]["allocated"]
    expected = memprof.trace(f"{REF}:ctc_workload", "adamw", "32-true", device="cpu", keep_output=False)
    assert dropped == expected.record.peak.allocated and dropped < kept


def test_recurrent_layers_say_their_workspace_is_not_traced():
    from memprof.tracer.run import RNN_WORKSPACE

    def lstm_workload(batch_size: int = 3) -> dict:
        model = torch.nn.LSTM(16, 32)
        return {"model": model, "inputs": torch.randn(40, batch_size, 16), "loss": lambda out, _: out[0].pow(2).mean()}

    traced = memprof.trace(lstm_workload, "sgd", "32-true", device="cpu").record
    assert RNN_WORKSPACE in traced.warnings
    # measured for real: oneDNN's training workspace (mkldnn_rnn_layer's fourth output) is on top
    w = lstm_workload()
    opt = torch.optim.SGD(w["model"].parameters(), lr=0.1)
    measured = _measured(w, opt)
    assert measured.peak.allocated > traced.peak.allocated
    assert RNN_WORKSPACE not in memprof.trace(f"{REF}:tiny_workload", "sgd", "32-true", device="cpu").record.warnings


def test_bitsandbytes_8bit_adamw_traces_to_the_byte():
    """AdamW8bit reads values while it builds its quantization maps: placeholders inside the optimizer's
    own code; its 8-bit states, 32-bit states of small tensors and absmax blocks are sizes only."""
    pytest.importorskip("bitsandbytes")
    from memprof.tracer.optimizers import build_optimizers

    traced = memprof.trace(f"{REF}:gpt_workload", "adamw8bit", "32-true", device="cpu").record
    torch.manual_seed(0)
    w = tracer_models.gpt_workload()
    model = w.model
    opt = build_optimizers("adamw8bit", [p for p in model.parameters() if p.requires_grad])[0]

    def step():
        out = model(**w.inputs) if isinstance(w.inputs, dict) else model(*w.inputs)
        w.loss(out, w.inputs).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    with memprof.track(model, opt) as run:
        step()
    assert traced.peak.allocated == run.record.peak.allocated
    assert traced.model_states == run.record.model_states
    assert dict(traced.optimizer_state_breakdown) == dict(run.record.optimizer_state_breakdown)
