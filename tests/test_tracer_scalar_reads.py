"""Value reads inside optimizer.step() on fake tensors (memprof.tracer.run._ScalarReads): scalars whose value
torch's FakeTensorMode keeps (one-element tensors made from Python numbers, as torch's `step` counters and
NAdam's `mu_product`) read their real value; other reads get the placeholder 1. NAdam divides by
`1 - mu_product`, which the placeholder made 0 (ZeroDivisionError); it now traces as it runs."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import memprof
from memprof.tracer.optimizers import build_optimizers
from memprof.tracer.run import _allowing, _ScalarReads


def _workload():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    return memprof.Workload(model, torch.randn(16, 32), loss=lambda out, inputs: out.square().mean())


def _measured(name: str):
    w = _workload()
    opts = build_optimizers(name, [p for p in w.model.parameters() if p.requires_grad])

    def step():  # as the tracer's step: the output stays referenced through backward
        out = w.model(w.inputs)
        loss = w.loss(out, w.inputs)
        loss.backward()
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)

    step()
    with memprof.track(w.model, opts) as run:
        step()
    return run.record, opts


def test_nadam_traces_as_it_runs():
    traced = memprof.trace(_workload, "nadam", "32-true", device="cpu").record
    measured, opts = _measured("nadam")
    assert traced.model_states == measured.model_states
    assert traced.optimizer_state_breakdown == measured.optimizer_state_breakdown
    assert set(traced.optimizer_state_breakdown) == {"step", "mu_product", "exp_avg", "exp_avg_sq"}
    assert traced.peak.allocated == measured.peak.allocated
    state = next(iter(opts[0].state.values()))
    assert state["step"].item() == 2.0  # the warm-up step + the measured one, as the trace reads it below


def test_step_counters_read_their_real_value_and_other_reads_the_placeholder():
    reads = _ScalarReads()
    with FakeTensorMode():
        p = torch.nn.Parameter(torch.empty(4, 4))
        opt = torch.optim.NAdam([p], foreach=False)
        for _ in range(3):
            p.grad = torch.zeros_like(p)
            with _allowing(reads):
                opt.step()
        with _allowing(reads):
            step = opt.state[p]["step"].item()
            mu_product = opt.state[p]["mu_product"].item()
            unknown = p.sum().item()  # a fake tensor's value: the placeholder
    expected_mu = 1.0
    for t in (1, 2, 3):  # nadam.py: mu = beta1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
        expected_mu *= 0.9 * (1.0 - 0.5 * 0.96 ** (t * 4e-3))
    assert step == 3.0
    assert abs(mu_product - expected_mu) < 1e-6
    assert unknown == 1.0
    assert reads.reads == 1
