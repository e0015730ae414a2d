"""The tracer runs CUDA autocast's op lists for `device="cuda"` `*-mixed` steps (memprof.tracer.cuda_autocast),
and leaves CPU autocast as it found it.

Ground truth for the policy itself is torch's header and dispatcher (the module reads them, not
memprof.estimators.autocast); tests/test_cuda_autocast_replay.py checks its application on real tensors.
Here: the traced step of a tiny GPT-2 (memprof.tiny_models, dropout off: the CPU's dropout keeps a noise
tensor where CUDA's keeps a bool mask, a kernel difference the tracer does not model) against the analytic
estimate of the same config. What CUDA's lists change (gelu_new's `pow` runs in float32, and the rest of
gelu_new is promoted to float32 with it; the loss is float32 on both, transformers upcasts the logits)
must move both by the same bytes, so traced and analytic differ on cuda exactly as they do on cpu, where
both run CPU autocast's lists.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import memprof
from memprof import tiny_models
from memprof.tracer.api import CUDA_FROM_CPU
from memprof.tracer.cuda_autocast import HEADER, CudaAutocast

pytestmark = pytest.mark.skipif(not os.path.exists(HEADER), reason="torch wheel without headers")

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
# gelu_new's pow (CUDA's fp32 list) casts its bf16/fp16 input to float32 and the rest of gelu_new follows in
# float32: autograd keeps 6 B more per element of the 2 layers' 2 x 32 x 256 MLP activations; the same figure
# measured on real tensors by tests/test_cuda_autocast_replay.py
# (test_cuda_and_cpu_autocast_differ_where_the_lists_differ)
CUDA_LISTS_EXTRA = 196608
OPS = ("aten::layer_norm", "aten::softmax.int", "aten::mm", "aten::pow.Tensor_Scalar", "aten::cross_entropy_loss")


def _factory(**_):
    return tiny_models.build("gpt2", "eager", **NO_DROPOUT)[0]


def _traced(precision: str, device: str):
    return memprof.trace(_factory, "adamw", precision, device=device, batch_size=2, seq_len=32).record


def _analytic(precision: str, device: str):
    spec = tiny_models.build("gpt2", "eager", **NO_DROPOUT)[1]
    return memprof.estimate(spec, "adamw", precision, device=device, batch_size=2, seq_len=32, attention="eager").record


def _dispatch_table() -> dict[str, str]:
    """The AutocastCPU registrations and every kernel of a few ops, as the dispatcher lists them."""
    table = {op: torch._C._dispatch_dump(op) for op in OPS}
    table["AutocastCPU"] = "\n".join(sorted(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCPU")))
    return table


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_traced_cuda_step_moves_with_the_analytic_estimate(precision):
    # GIVEN the same tiny GPT-2 step traced and estimated on cpu (CPU autocast's lists on both sides)
    traced_cpu, analytic_cpu = _traced(precision, "cpu"), _analytic(precision, "cpu")
    # WHEN both model cuda (CUDA autocast's lists)
    traced_cuda, analytic_cuda = _traced(precision, "cuda"), _analytic(precision, "cuda")
    # THEN CUDA's lists add the same bytes to what autograd saves on both sides...
    assert traced_cuda.activations_saved - traced_cpu.activations_saved == CUDA_LISTS_EXTRA
    assert analytic_cuda.activations_saved - analytic_cpu.activations_saved == CUDA_LISTS_EXTRA
    # ...and at the peak (a backward peak on both devices) the activations agree as closely as on cpu
    assert traced_cuda.peak.phase == analytic_cuda.peak.phase == "backward"
    cuda_gap = traced_cuda.peak.by_category["activations"] - analytic_cuda.peak.by_category["activations"]
    cpu_gap = traced_cpu.peak.by_category["activations"] - analytic_cpu.peak.by_category["activations"]
    assert cuda_gap == cpu_gap == 4
    # and the record no longer says CUDA autocast's lists are missing
    assert CUDA_FROM_CPU in traced_cuda.warnings
    assert not any("the trace used CPU autocast" in w for w in traced_cuda.warnings)


def test_cpu_autocast_is_untouched_by_a_cuda_trace():
    # GIVEN the dispatcher's autocast table and a cpu bf16-mixed trace
    table, clear_cache = _dispatch_table(), torch.clear_autocast_cache
    before = _traced("bf16-mixed", "cpu")
    # WHEN a cuda bf16-mixed trace runs CUDA's lists (and one fails inside the context)
    _traced("bf16-mixed", "cuda")
    with pytest.raises(RuntimeError, match="the user's code failed"), CudaAutocast(torch.bfloat16):
        raise RuntimeError("the user's code failed")
    # THEN the same cpu trace gives the same bytes, the dispatcher holds what it held, and CPU autocast runs
    # its own lists: layer_norm and softmax in bf16 (CUDA's run them in float32)
    after = _traced("bf16-mixed", "cpu")
    assert (after.activations_saved, after.peak.allocated) == (before.activations_saved, before.peak.allocated)
    assert _dispatch_table() == table and torch.clear_autocast_cache is clear_cache
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.bfloat16
        assert torch.softmax(x, -1).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_kernels_register_and_go_away_repeatedly_under_fake_tensors(dtype):
    table = _dispatch_table()
    with FakeTensorMode():
        x = torch.randn(4, 8)
        w = torch.randn(8, 8, requires_grad=True)
        for _ in range(3):
            with CudaAutocast(dtype) as autocast:
                assert autocast.policies["aten::layer_norm"] == "fp32"
                assert torch.get_autocast_dtype("cpu") == dtype
                assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.float32
                assert torch.softmax(x.to(dtype), -1).dtype == torch.float32
                assert torch.pow(x.to(dtype), 2).dtype == torch.float32
                # a weight used twice is cast once (autocast's cast cache), and the cast is what mm runs on
                a, b = x @ w, x @ w
                assert a.dtype == b.dtype == dtype
                assert a.grad_fn.next_functions[1][0] is b.grad_fn.next_functions[1][0]
            assert not torch.is_autocast_enabled("cpu")
            assert _dispatch_table() == table
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.nn.functional.layer_norm(x.bfloat16(), (8,)).dtype == torch.bfloat16


def test_without_the_header_the_trace_says_it_ran_cpu_autocasts_lists(monkeypatch):
    # GIVEN a torch wheel without include/ATen/autocast_mode.h
    from memprof.tracer import cuda_autocast

    monkeypatch.setattr(cuda_autocast, "HEADER", "/nonexistent/ATen/autocast_mode.h")
    cuda_autocast._policies.cache_clear()
    try:
        # WHEN a cuda bf16-mixed step is traced
        record = _traced("bf16-mixed", "cuda")
    finally:
        cuda_autocast._policies.cache_clear()
    # THEN it ran CPU autocast's lists (what autograd saves is the cpu trace's) and its warnings say so
    assert record.activations_saved == _traced("bf16-mixed", "cpu").activations_saved
    assert any(w.startswith("CUDA autocast's op lists not applied (") for w in record.warnings)


def test_checkpointing_recomputes_under_cudas_lists():
    # GIVEN the tiny GPT-2 with full activation checkpointing (non-reentrant: torch/utils/checkpoint.py
    # recomputes each layer's forward in backward under the autocast state it recorded)
    def factory(**_):
        model = _factory()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    table = _dispatch_table()
    # WHEN it is traced on cpu and on cuda
    cpu, cuda = (
        memprof.trace(factory, "adamw", "bf16-mixed", device=d, batch_size=2, seq_len=32).record
        for d in ("cpu", "cuda")
    )
    # THEN the recompute met the forward's policy (a mismatch is a CheckpointError), the layer recomputed at the
    # backward peak holds its share of CUDA's float32 tensors (1 of 2 layers), and the kernels are gone again
    assert cuda.peak.phase == cpu.peak.phase == "backward"
    assert cuda.peak.by_category["activations"] - cpu.peak.by_category["activations"] == CUDA_LISTS_EXTRA // 2
    assert _dispatch_table() == table
