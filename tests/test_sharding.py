"""ZeRO partitioning and offload, anchored to the ZeRO paper's own example."""

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.parallel import ModelStateBytes, ParallelStrategy, Placement
from memprof.estimators.parallel import strategy_for as Sharding


def place_model_states(
    parameters: int, gradients: int, states: int, fp32_grads: int, strategy: ParallelStrategy
) -> Placement:
    return strategy.place(ModelStateBytes(parameters, gradients, states, fp32_grads))


PSI = 7_500_000_000  # the ZeRO paper's Figure 1: 7.5B parameters, N_d = 64, K = 12


@pytest.mark.parametrize("stage, published_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_figure_1(stage, published_gb):
    # GIVEN fp16 parameters and gradients (2Ψ each) and 12Ψ of fp32 master weights + Adam states
    # WHEN they are partitioned over 64 devices at each stage
    placed = place_model_states(2 * PSI, 2 * PSI, 12 * PSI, 4 * PSI, Sharding(gpus=64, zero=stage))
    per_device = placed.parameters + placed.gradients + placed.optimizer_states
    # THEN each device holds what the paper prints, to its one decimal (GB = 1e9 bytes)
    assert round(per_device / 1e9, 1) == published_gb
    assert placed.cpu == 0


def test_partitions_are_exact_ceilings():
    placed = place_model_states(10, 10, 10, 20, Sharding(gpus=3, zero=3))
    assert (placed.parameters, placed.gradients, placed.optimizer_states) == (4, 4, 4)


def test_stage_1_keeps_full_gradients_and_parameters():
    placed = place_model_states(200, 200, 1200, 400, Sharding(gpus=4, zero=1))
    assert (placed.parameters, placed.gradients, placed.optimizer_states) == (200, 200, 300)


def test_optimizer_offload_moves_states_and_an_fp32_gradient_copy_to_the_host():
    placed = place_model_states(2 * PSI, 2 * PSI, 12 * PSI, 4 * PSI, Sharding(gpus=1, zero=2, offload="optimizer"))
    assert placed.optimizer_states == 0
    assert placed.gradients == 0  # only reduction buckets remain on the device
    assert placed.parameters == 2 * PSI
    assert placed.cpu == 16 * PSI  # 12Ψ master + states, 4Ψ fp32 gradients


def test_parameter_offload_with_stage_3():
    placed = place_model_states(
        2 * PSI, 2 * PSI, 12 * PSI, 4 * PSI, Sharding(gpus=8, zero=3, offload="optimizer+parameters")
    )
    assert placed.parameters == 0 and placed.optimizer_states == 0
    assert placed.cpu == (12 * PSI + 4 * PSI + 2 * PSI) // 8


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"zero": 4}, "invalid ZeRO stage 4; valid: 0, 1, 2, 3"),
        ({"gpus": 0}, "gpus must be a whole number from 1"),
        ({"zero": 0, "offload": "optimizer"}, "CPU offload needs a ZeRO stage"),
        ({"zero": 2, "offload": "optimizer+parameters"}, "parameter offload needs ZeRO stage 3"),
        ({"zero": 1, "offload": "disk"}, "invalid offload 'disk'"),
    ],
)
def test_bad_sharding_is_a_user_error(kwargs, fragment):
    with pytest.raises(MemprofUserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Sharding(**kwargs)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"gpus": 2, "zero": 1, "engine": "fsdp"}, "engine fsdp shards with zero 2"),
        ({"gpus": 2, "zero": 0, "engine": "fsdp"}, "zero 0 on several devices is ddp"),
        ({"gpus": 1, "engine": "ddp"}, "use gpus 2 or more"),
        ({"gpus": 2, "zero": 2, "engine": "ddp"}, "engine ddp does not shard"),
        ({"gpus": 2, "zero": 3, "engine": "fsdp", "offload": "optimizer+parameters"}, "CPUOffloadPolicy"),
        ({"gpus": 2, "zero": 3, "fsdp_unit": "model"}, "fsdp_unit chooses FSDP2's wrapping"),
        ({"gpus": 2, "zero": 3, "engine": "megatron"}, "invalid engine 'megatron'"),
    ],
)
def test_engine_combinations_that_cannot_run_are_user_errors(kwargs, fragment):
    with pytest.raises(MemprofUserError) as info:
        Sharding(**kwargs)
    assert fragment in str(info.value)


def test_the_engine_the_knobs_imply():
    from memprof.estimators.parallel import default_engine

    # several devices without sharding replicate (DDP); a ZeRO stage without --engine is DeepSpeed's
    assert [default_engine(1, 0), default_engine(2, 0), default_engine(1, 2), default_engine(8, 3)] == [
        None,
        "ddp",
        "deepspeed",
        "deepspeed",
    ]
    assert Sharding(2, 0).name == "DDP" and Sharding(1, 0).name == "single device"
    assert Sharding(2, 3, engine="fsdp").name == "FSDP2 full-shard"
    assert Sharding(2, 2, engine="fsdp").name == "FSDP2 shard-grad-op"


def test_an_offloaded_optimizer_leaves_no_state_in_the_device_replay():
    # GIVEN one GPU at ZeRO-2, with and without the optimizer offloaded to the host
    from memprof.estimators.estimation import estimate

    on_device = estimate("gpt2-124m", zero=2)
    offloaded = estimate("gpt2-124m", zero=2, offload="optimizer")
    # THEN the states leave the device's allocator replay too, not only its model-state rows
    assert offloaded.record.model_states.optimizer_states == 0

    def step(e):
        return next(p for p in e.record.timeline if p.phase == "optimizer_step").by_category

    assert step(on_device)["optimizer_states"] == on_device.record.model_states.optimizer_states > 0
    assert step(offloaded)["optimizer_states"] == 0
    assert on_device.peak_allocated > offloaded.peak_allocated
    # DeepSpeed keeps its states as one flat fp32 partition, on one GPU too (single_partition_of_fp32_groups)
    assert Sharding(1, 2, "optimizer").states_as_flat_buffer and Sharding(1, 2).states_as_flat_buffer
