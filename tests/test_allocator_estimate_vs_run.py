"""The estimate's allocator replay (input c) against the replay of a real run's timeline (input b).

Each case trains a small transformers model on the CPU from model creation on (two AdamW steps,
foreach or single-tensor) under memprof.track(events=True), and replays that timeline through the
simulator as if on CUDA; simulate_training_step predicts the same run from the ModelSpec alone
(one warm-up step, then the measured one). The simulator is the same on both sides: what is
measured is how faithful the estimator's allocation stream is, not the simulator against a GPU.

Measured (torch 2.13 CPU, transformers 5): the peak of live tensor bytes agrees within 4 bytes; the
reserved peak within 2.4 % (the real backward makes transient allocations the timeline does not
list one by one - several per layer, and a third vocabulary-sized buffer where a tied embedding's
two gradients are summed - which the allocator packs a little differently). Tolerance: 3 %.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import memprof
from activation_cases import batch, train_step
from memprof.estimators.activations import ActivationSettings
from memprof.estimators.allocator import simulate, simulate_training_step, states_per_parameter
from memprof.estimators.allocator.timeline import device_events
from memprof.estimators.models import ModelSpec
from memprof.estimators.optimizers import get_optimizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(family: str):
    if family == "gpt2":
        return transformers.GPT2Config(
            n_layer=2,
            n_embd=256,
            n_head=4,
            n_positions=256,
            vocab_size=4096,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        )
    return transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        max_position_embeddings=256,
        vocab_size=4096,
        attn_implementation="sdpa",
    )


CASES = [("gpt2", 2, True), ("gpt2", 8, True), ("gpt2", 2, False), ("llama", 2, True), ("llama", 8, False)]


@pytest.mark.parametrize("family, batch_size, foreach", CASES)
def test_estimate_replay_matches_the_real_timeline(family, batch_size, foreach):
    seq = 128
    cfg = _config(family)
    # GIVEN the real run, recorded from model creation on
    torch.manual_seed(0)
    with memprof.track(events=True) as run:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = transformers.AutoModelForCausalLM.from_config(cfg)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=foreach)
        for _ in range(2):
            train_step(model, optimizer, batch("gpt2", batch_size, seq), autocast=False)
    real = simulate(list(device_events(run.events, "cpu")))
    # WHEN the estimator predicts it from the config
    spec = ModelSpec("small", cfg.model_type, cfg.to_dict(), "causal-lm")
    params = spec.parameter_tensors()
    n = spec.num_parameters
    sizes = [p.numel for p in params]
    # foreach: exp_avg_sq.sqrt() for every parameter at once; single-tensor: max_i(2 n_i + n_(i-1))
    temporaries = 4 * n if foreach else 4 * max(2 * x + (sizes[i - 1] if i else 0) for i, x in enumerate(sizes))
    states = states_per_parameter(params, get_optimizer("adamw").state_tensors(params, "float32"), device="cpu")
    settings = ActivationSettings(batch_size, seq, "float32", "float32", False, cfg._attn_implementation, "none")
    sim = simulate_training_step(
        spec,
        settings,
        param_bytes=4 * n,
        grad_bytes=4 * n,
        grad_dtype="float32",
        optimizer_states=states,
        optimizer_temporaries=temporaries,
        warmup_steps=1,
    )
    # THEN the same peak of tensor bytes, and reserved memory within 3 %
    assert abs(sim.peak_requested - real.peak_requested) <= 16, (sim.peak_requested, real.peak_requested)
    assert abs(sim.peak_reserved - real.peak_reserved) / real.peak_reserved < 0.03, (
        sim.peak_reserved,
        real.peak_reserved,
    )
