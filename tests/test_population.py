"""Issue 14: population optimizers (ga, pso) have no gradients and no backward: the estimate
counts neither, shows the population and lets it be set."""

from __future__ import annotations

import pytest

import memprof
from memprof.estimators.optimizers import get_optimizer
from memprof.render import estimate_table

GPT2 = 124_439_808


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", ["ga", "pso"])
def test_population_methods_count_no_gradients_and_no_backward(name: str, device: str) -> None:
    # WHEN a population method is estimated
    record = memprof.estimate("gpt2-124m", name, device=device).record
    # THEN there are no gradients, nothing saved for backward and no backward phase
    assert record.model_states.gradients == 0 and record.peak.by_category["gradients"] == 0
    assert record.activations_saved == 0
    assert record.timeline is not None and {p.phase for p in record.timeline} == {"forward", "optimizer_step"}
    # compared with a gradient method on the same model: its saved activations are gone
    adam = memprof.estimate("gpt2-124m", "adamw", device=device).record
    assert adam.activations_saved and adam.activations_saved > 100 * 2**20
    assert record.settings.population == 16 and adam.settings.population is None


def test_the_population_is_settable_and_shown() -> None:
    small = memprof.estimate("gpt2-124m", "ga", population=4, device="cpu").record
    big = memprof.estimate("gpt2-124m", "ga", population=8, device="cpu").record
    # P copies of the fp32 weights + P float32 fitness values
    assert big.model_states.optimizer_states - small.model_states.optimizer_states == 4 * GPT2 * 4 + 4 * 4
    assert small.settings.population == 4
    assert small.to_dict()["settings"]["population"] == 4
    table = estimate_table(small)
    assert "population 4" in table and "no backward" in table
    # the older option name still works, and the two must agree
    assert get_optimizer("ga").state_bytes([], population_size=8) == 8 * 4
    with pytest.raises(memprof.ParameterError, match="population"):
        memprof.estimate("gpt2-124m", "ga", population=0, device="cpu")


def test_a_gradient_methods_record_has_no_population_key() -> None:
    assert "population" not in memprof.estimate("gpt2-124m", device="cpu").to_dict()["settings"]
