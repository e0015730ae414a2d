"""Issue 14: measured numbers that mean what they say — warm-up steps, a single step's missing
optimizer states named in the comparison, and the optimizer_step phase ending at zero_grad."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch

import memprof
from memprof.comparison import format_comparison

F32 = 4


class Known(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int, after: int = 0) -> None:
    for _ in range(n):
        model(torch.ones(1000)).sum().backward()
        opt.step()
        opt.zero_grad()
        if after:
            torch.ones(after)  # the next batch being prepared: not part of the step


def test_warmup_steps_run_but_are_not_measured() -> None:
    # GIVEN Adam, whose states are created by the first step
    model = Known()
    opt = torch.optim.Adam(model.parameters())
    # WHEN two steps run with warmup=1
    with memprof.track(model, opt, warmup=1) as run:
        _steps(model, opt, 2)
    d = run.to_dict()
    # THEN the first step's forward (without states) is not what the forward phase reports
    assert d["settings"]["warmup_steps"] == 1 and d["settings"]["optimizer_steps"] == 2
    assert d["phases"]["forward"]["peak"]["by_category"]["optimizer_states"] == 2 * 1000 * F32 + F32
    assert d["peak"]["by_category"]["optimizer_states"] == 2 * 1000 * F32 + F32


def test_warmup_is_validated() -> None:
    with pytest.raises(memprof.ParameterError, match="warmup"):
        memprof.track(warmup=-1)


def test_a_single_step_without_states_says_so_on_the_total_line() -> None:
    # GIVEN one profiled step of Adam: the states are created inside it
    model = Known()
    opt = torch.optim.Adam(model.parameters())
    with memprof.track(model, opt) as run:
        _steps(model, opt, 1)
    frame = run.compare()
    # THEN the total line says the measured forward and backward ran without optimizer states
    note = frame.loc[("peak", "allocated"), "note"]
    assert "optimizer states did not exist" in note and "warmup=1" in note
    assert "optimizer states did not exist" in format_comparison(frame)
    # and with a warm-up step it does not
    with memprof.track(model, opt, warmup=1) as steady:
        _steps(model, opt, 2)
    assert "did not exist" not in steady.compare().loc[("peak", "allocated"), "note"]


def test_the_optimizer_step_phase_ends_at_zero_grad() -> None:
    # GIVEN a loop that allocates the next batch after zero_grad
    model = Known()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with memprof.track(model, opt) as run:
        _steps(model, opt, 2, after=10**6)
    d = run.to_dict()
    # THEN the 4 MB allocated after zero_grad is not charged to optimizer_step
    step_peak = d["phases"]["optimizer_step"]["peak"]["allocated"]
    assert step_peak < 10**6 * F32
