"""DeepSpeed ZeRO as DeepSpeed 0.19 allocates it (estimators/parallel/deepspeed.py), and real runs."""

import importlib.util

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.estimation import estimate
from memprof.estimators.parallel import ModelStateBytes, strategy_for
from memprof.estimators.parallel.deepspeed import (
    DeepSpeedConfig,
    DeepSpeedZeRO,
    flat_layout,
    params_in_partition_numel,
)
from memprof.integrations.configs import knobs_from_ds_config

PSI = 7_500_000_000  # the ZeRO paper's Figure 1: 7.5B parameters, N_d = 64, K = 12


@pytest.mark.parametrize("stage, published_gb", [(1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_figure_1_with_the_deepspeed_engine(stage, published_gb):
    # GIVEN fp16 parameters and gradients (2Ψ each) and 12Ψ of fp32 master weights + Adam states
    engine = strategy_for(gpus=64, zero=stage, engine="deepspeed")
    assert isinstance(engine, DeepSpeedZeRO)
    # WHEN DeepSpeed partitions them over 64 devices
    placed = engine.place(ModelStateBytes(2 * PSI, 2 * PSI, 12 * PSI, 4 * PSI))
    # THEN each device holds what the paper prints, to its one decimal (GB = 1e9 bytes)
    assert round((placed.parameters + placed.gradients + placed.optimizer_states) / 1e9, 1) == published_gb


def test_the_flat_buffer_is_padded_to_twice_the_ranks_and_split_evenly():
    # stage_1_and_2.py: alignment = nccl_start_alignment_factor (2) * world size
    assert flat_layout(10, 4) == (16, 4)
    assert flat_layout(16, 4) == (16, 4)
    assert flat_layout(17, 4) == (24, 6)
    # get_partition_info: a parameter straddling the boundary belongs to both partitions, whole
    numels = [3, 5, 2]  # offsets 0, 3, 8 in a flat buffer of 16 over 4 ranks (partitions of 4)
    assert [params_in_partition_numel(numels, 4, r) for r in range(4)] == [3 + 5, 5, 2, 0]


def _tiny_llama():
    from memprof.tiny_models import build

    return build("llama", "eager")[1]


def test_a_rank_keeps_whole_16_bit_weights_and_an_fp32_partition_with_the_optimizer_states_of_one_tensor():
    spec = _tiny_llama()
    psi = spec.num_parameters
    e = estimate(spec, "adamw", "bf16-master", batch_size=2, seq_len=32, device="cpu", gpus=2, zero=2)
    padded, part = flat_layout(psi, 2)
    assert e.record.model_states.parameters == padded * 2  # the flat bf16 buffer, whole on every rank
    # AdamW over the one flat partition: exp_avg + exp_avg_sq + one step, and the fp32 partition itself
    assert e.record.model_states.optimizer_states == 2 * part * 4 + 4 + part * 4
    assert e.record.model_states.gradients == part * 4  # the fp32 gradient partition the step runs on


def test_deepspeed_clones_an_fp32_partition_also_for_an_fp32_model():
    spec = _tiny_llama()
    _, part = flat_layout(spec.num_parameters, 2)
    e = estimate(spec, "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", gpus=2, zero=1)
    assert e.record.model_states.optimizer_states == 3 * part * 4 + 4


def test_the_reduction_bucket_is_its_configured_size_whatever_the_model():
    # setup_buckets: torch.empty(reduce_bucket_size) in the gradient dtype, two with overlap_comm
    spec = _tiny_llama()
    sizes = {}
    for overlap in (False, True):
        e = estimate(
            spec,
            "adamw",
            "32-true",
            batch_size=2,
            seq_len=32,
            device="cpu",
            gpus=2,
            zero=2,
            deepspeed={"overlap_comm": overlap},
        )
        sizes[overlap] = e.record.peak.allocated
        assert e.record.peak.phase == "backward"
        assert e.record.peak.by_category["gradients"] >= (2 if overlap else 1) * 500_000_000 * 4
    assert sizes[True] - sizes[False] == 500_000_000 * 4


def test_a_ds_config_sets_the_buckets():
    knobs, prov, warnings = knobs_from_ds_config(
        {"zero_optimization": {"stage": 2, "reduce_bucket_size": 2e8, "overlap_comm": True}}
    )
    assert knobs["deepspeed"] == {"reduce_bucket_size": 200_000_000, "overlap_comm": True}
    assert "reduce_bucket_size=200000000" in prov["deepspeed"] and warnings == []
    # stage3_* settings at stages 1 and 2 mean nothing to DeepSpeed: not a knob
    knobs, _, _ = knobs_from_ds_config({"zero_optimization": {"stage": 2, "stage3_max_live_parameters": 1e8}})
    assert "deepspeed" not in knobs


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"zero": 2, "deepspeed": {"reduce_bucket": 5}}, "unknown DeepSpeed setting(s) reduce_bucket"),
        ({"zero": 2, "deepspeed": {"reduce_bucket_size": 0}}, "reduce_bucket_size must be at least 1"),
        ({"zero": 2, "deepspeed": {"allgather_bucket_size": 3}}, "allgather_bucket_size must be a multiple of 2"),
        ({"zero": 2, "engine": "fsdp", "deepspeed": {"reduce_bucket_size": 5}}, "need engine deepspeed"),
    ],
)
def test_bad_deepspeed_settings_are_one_clear_error(kwargs, fragment):
    with pytest.raises(MemprofUserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        estimate(_tiny_llama(), "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", gpus=2, **kwargs)


def test_a_rank_outside_the_group_is_refused():
    with pytest.raises(MemprofUserError, match="rank must be a whole number from 0 to 1"):
        DeepSpeedZeRO(2, 2, config=DeepSpeedConfig(), rank=2)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install deepspeed)"
)
def test_a_real_zero_2_run_is_predicted_rank_by_rank():
    # GIVEN two CPU processes training the tiny Llama under DeepSpeed ZeRO-2 (gloo), small buckets
    from memprof.validate_distributed import DS_SMALL_BUCKETS, DistCase, run_case

    row = run_case(DistCase("deepspeed", "llama", 2, "bf16-master", 2, options=DS_SMALL_BUCKETS))
    # THEN every rank's model states (the fp32 partition and AdamW's states on it) are exact and its
    # peak is within the tolerance
    assert "error" not in row, row.get("error")
    assert row["states_exact"] and len(row["ranks"]) == 2
    assert abs(row["worst_error_pct"]) <= 3.0


# ---------------------------------------------------------------------------------------- ZeRO-3


def _zero3(precision, **ds):
    return estimate(
        _tiny_llama(), "adamw", precision, batch_size=2, seq_len=32, device="cpu", gpus=2, zero=3, deepspeed=ds
    ).record


def test_zero3_partitions_each_parameter_and_keeps_the_persistent_ones_whole():
    spec = _tiny_llama()
    numels = [t.numel for t in spec.parameter_tensors()]
    part = sum(-(-n // 2) for n in numels)  # ceil(numel / N) per parameter (_padding_size)
    # the tiny model's tensors are all below the default persistence threshold (100,000 elements):
    # every rank holds its flat partition and every parameter whole
    assert max(numels) <= 100_000
    fp32 = _zero3("32-true")
    assert fp32.model_states.parameters == (part + sum(numels)) * 4
    # AdamW's states of the one flat fp32 partition, and that partition: a clone also for an fp32
    # model (stage3.py compares a torch.device with a device name, which torch 2.13 finds unequal)
    assert fp32.model_states.optimizer_states == 2 * part * 4 + 4 + part * 4
    assert fp32.model_states.gradients == part * 4  # the step's fp32 gradient partition
    bf16 = _zero3("bf16-master")
    assert bf16.model_states.parameters == (part + sum(numels)) * 2
    assert bf16.model_states.optimizer_states == 2 * part * 4 + 4 + part * 4
    # threshold 0: nothing persistent, only the partition is held
    assert _zero3("32-true", stage3_param_persistence_threshold=0).model_states.parameters == part * 4


def test_zero3_keeps_the_bucket_and_the_gradient_partitions_all_step():
    spec = _tiny_llama()
    part = sum(-(-t.numel // 2) for t in spec.parameter_tensors())
    record = _zero3("bf16-master", reduce_bucket_size=20_000)
    assert record.temporary_breakdown["deepspeed_reduce_bucket"] == 20_000 * 2  # the model's dtype
    assert record.temporary_breakdown["deepspeed_grad_partitions"] == part * 2
    assert "deepspeed_zero3_gathered_parameters" not in record.temporary_breakdown  # all persistent


def test_zero3_reuse_distance_decides_how_many_gathered_parameters_live():
    spec = _tiny_llama()
    gathered_all = sum(-(-t.numel // 2) * 2 for t in spec.parameter_tensors()) * 4
    spans = _zero3("32-true", stage3_param_persistence_threshold=0)
    assert spans.temporary_breakdown["deepspeed_zero3_gathered_parameters"] == gathered_all
    short = _zero3("32-true", stage3_param_persistence_threshold=0, stage3_max_reuse_distance=1000)
    assert short.temporary_breakdown["deepspeed_zero3_gathered_parameters"] < gathered_all


def test_zero3_forward_holds_the_prefetch_all_gather_buffer_until_its_last_parameter():
    # measured on a real run (memprof.validate_distributed, zero3_partitioned_cases): the first module
    # (the embedding) is fetched alone, every later parameter in one coalesced prefetch whose flat
    # buffer lives until the last of them is waited; the backward finds every parameter gathered
    numels = [t.numel for t in _tiny_llama().parameter_tensors()]
    flat = sum(-(-n // 2) for n in numels[1:]) * 2
    for precision, nbytes in (("32-true", 4), ("bf16-master", 2)):
        record = _zero3(precision, stage3_param_persistence_threshold=0)
        assert record.temporary_breakdown["deepspeed_zero3_prefetch_flat_buffer"] == flat * nbytes
        forward = max(sum(p.by_category.values()) for p in record.timeline if p.phase == "forward")
        without = _zero3(precision, stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=flat - 1)
        assert "deepspeed_zero3_prefetch_flat_buffer" not in without.temporary_breakdown
        forward_without = max(sum(p.by_category.values()) for p in without.timeline if p.phase == "forward")
        assert forward - forward_without == flat * nbytes
    # nothing gathered (all persistent), or the reuse distance short of the step: no such buffer
    assert "deepspeed_zero3_prefetch_flat_buffer" not in _zero3("32-true").temporary_breakdown
    short = _zero3("32-true", stage3_param_persistence_threshold=0, stage3_max_reuse_distance=1000)
    assert "deepspeed_zero3_prefetch_flat_buffer" not in short.temporary_breakdown


def test_a_ds_config_sets_the_reuse_distance():
    knobs, _, warnings = knobs_from_ds_config({"zero_optimization": {"stage": 3, "stage3_max_reuse_distance": 1e8}})
    assert knobs["deepspeed"] == {"stage3_max_reuse_distance": 100_000_000} and warnings == []


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install deepspeed)"
)
def test_a_real_zero_3_run_is_predicted_rank_by_rank():
    from memprof.validate_distributed import DS3_SMALL_BUCKETS, DistCase, run_case

    row = run_case(DistCase("deepspeed", "llama", 2, "bf16-master", 3, options=DS3_SMALL_BUCKETS))
    assert "error" not in row, row.get("error")
    assert row["states_exact"] and len(row["ranks"]) == 2
    assert abs(row["worst_error_pct"]) <= 3.0
