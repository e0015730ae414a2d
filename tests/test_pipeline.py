"""Pipeline parallelism: the split, the micro-batches in flight, one real torch.distributed.pipelining run."""

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.estimation import estimate
from memprof.estimators.parallel.pipeline import PipelineStage, in_flight, split_layers


def test_blocks_are_split_contiguously_the_earlier_chunks_taking_the_remainder():
    assert [list(r) for r in split_layers(10, 4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert [len(r) for r in split_layers(32, 4)] == [8, 8, 8, 8]
    # interleaved: chunk c runs on stage c mod N
    assert PipelineStage(2, 0, "interleaved-1f1b", 4, virtual=2).layers(8) == [0, 1, 4, 5]


@pytest.mark.parametrize(
    "schedule, stages, stage, micro, virtual, expected",
    [
        ("gpipe", 4, 0, 8, 1, 8),  # every forward before any backward
        ("1f1b", 4, 0, 8, 1, 4),  # the first stage warms up with N forwards
        ("1f1b", 4, 3, 8, 1, 1),  # the last runs one forward, then its backward
        ("1f1b", 4, 0, 2, 1, 2),  # never more than the step's micro-batches
        ("interleaved-1f1b", 4, 0, 8, 2, 11),  # Megatron: (N - 1) * 2 + (v - 1) * N warm-up chunks, + 1
    ],
)
def test_micro_batches_in_flight(schedule, stages, stage, micro, virtual, expected):
    assert in_flight(schedule, stages, stage, micro, virtual) == expected


def _tiny_llama():
    from memprof.tiny_models import build

    return build("llama", "sdpa")[1]


def test_the_stages_hold_every_parameter_once():
    spec = _tiny_llama()
    stages = [PipelineStage(2, s).tensors(spec.parameter_tensors(), spec.num_layers) for s in (0, 1)]
    names = [[t.name for t in s] for s in stages]
    assert names[0][0] == "model.embed_tokens.weight" and "lm_head.weight" in names[1]
    assert sorted(names[0] + names[1]) == sorted(t.name for t in spec.parameter_tensors())
    whole = estimate(spec, "adamw", "32-true", batch_size=2, seq_len=32, device="cpu").record.model_states
    parts = [
        estimate(
            spec, "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", pipeline=PipelineStage(2, s)
        ).record.model_states
        for s in (0, 1)
    ]
    assert sum(p.parameters for p in parts) == whole.parameters
    assert sum(p.gradients for p in parts) == whole.gradients


def test_gpipe_holds_more_micro_batches_than_1f1b_on_the_first_stage():
    spec = _tiny_llama()

    def peak(schedule, micro):
        stage = PipelineStage(2, 0, schedule, micro)
        return estimate(spec, "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", pipeline=stage).peak_allocated

    assert peak("gpipe", 8) > peak("1f1b", 8)
    # 1F1B keeps N micro-batches in flight however many the step has; only the schedule's receive
    # buffers for the output's gradient (one per micro-batch, batch x seq x hidden in fp32) grow
    assert peak("1f1b", 16) - peak("1f1b", 8) == 8 * (2 * 32 * spec.hidden_size * 4)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"pipeline": PipelineStage(4, 0)}, "pp 4 x 1 virtual stage(s) needs at least that many layers"),
        ({"pipeline": PipelineStage(2, 0, "1f1b", 4, virtual=2)}, "virtual stages need"),
        ({"pipeline": PipelineStage(2, 0, "zigzag", 4)}, "invalid pp_schedule 'zigzag'"),
        ({"pipeline": PipelineStage(2, 0, "1f1b", 4), "grad_accumulation": 2}, "micro-batches are the accumulation"),
    ],
)
def test_bad_pipeline_settings_are_one_clear_error(kwargs, fragment):
    with pytest.raises(MemprofUserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        estimate(_tiny_llama(), "adamw", "32-true", batch_size=2, seq_len=32, device="cpu", **kwargs)


@pytest.mark.slow
def test_a_real_1f1b_run_on_two_stages_is_predicted_rank_by_rank():
    # GIVEN two CPU processes running torch.distributed.pipelining's Schedule1F1B over the tiny Llama
    from memprof.validate_distributed import pipeline_cases, run_case

    row = run_case(pipeline_cases()[0])
    # THEN each stage's states are exact and its peak within the tolerance
    assert "error" not in row, row.get("error")
    assert row["states_exact"] and len(row["ranks"]) == 2
    assert abs(row["worst_error_pct"]) <= 3.0
