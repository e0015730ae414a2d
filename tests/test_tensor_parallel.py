"""Tensor parallelism: a rank runs the block with 1/N of the heads and MLP features; one real DTensor run."""

import re

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.estimation import estimate
from memprof.estimators.parallel.tensor import local_spec


def _tiny(family="llama"):
    from memprof.tiny_models import build

    return build(family, "sdpa")[1]


def test_a_rank_holds_its_shards_of_the_split_weights_and_the_replicated_rest_whole():
    spec = _tiny()
    local = {t.name: t.shape for t in local_spec(spec, 2).parameter_tensors()}
    whole = {t.name: t.shape for t in spec.parameter_tensors()}
    assert local.keys() == whole.keys()
    q, o = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"
    down, up = "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight"
    assert local[q] == (whole[q][0] // 2, whole[q][1])  # ColwiseParallel: output rows
    assert local[up] == (whole[up][0] // 2, whole[up][1])
    assert local[o] == (whole[o][0], whole[o][1] // 2)  # RowwiseParallel: input columns
    assert local[down] == (whole[down][0], whole[down][1] // 2)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert local[name] == whole[name]  # replicated


def test_tensor_parallel_shrinks_the_blocks_states_and_activations():
    spec = _tiny()
    one, two = (
        estimate(spec, "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", tp=tp).record for tp in (1, 2)
    )
    assert two.model_states.parameters < one.model_states.parameters
    assert two.activations_saved < one.activations_saved


@pytest.mark.parametrize(
    "family, tp, fragment",
    [
        ("llama", 8, "tp 8 does not divide tiny-llama's attention heads (4)"),
        ("gpt2", 2, "memprof models Megatron's split for llama, mistral, qwen2"),
        ("llama", 0, "tp must be a whole number from 1"),
    ],
)
def test_bad_tensor_parallel_settings_are_one_clear_error(family, tp, fragment):
    with pytest.raises(MemprofUserError, match=re.escape(fragment)):
        estimate(_tiny(family), "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", tp=tp)


@pytest.mark.slow
def test_a_real_dtensor_run_on_two_ranks_is_predicted_rank_by_rank():
    # GIVEN two CPU processes training the tiny Llama with parallelize_module (Colwise / Rowwise)
    from memprof.validate_distributed import DistCase, run_case

    row = run_case(DistCase("tensor", "llama", 2, attention="sdpa", options=(("attention", "sdpa"),)))
    # THEN each rank's states are exact (its DTensor shards) and its peak within the tolerance
    assert "error" not in row, row.get("error")
    assert row["states_exact"] and len(row["ranks"]) == 2
    assert abs(row["worst_error_pct"]) <= 3.0
