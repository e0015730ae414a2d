"""FSDP2 (`fully_shard`) as the estimate models it: per-rank shards with their padding, against the
real engine in one process (torch's fake process group: FSDP2 shards as on rank 0 of N, its
collectives do nothing), and the sharded estimate of a real model against one device."""

import pytest

from memprof.estimators.estimation import estimate
from memprof.estimators.parallel.fsdp import padded_numel, shard_tensor
from memprof.estimators.tensors import ParamTensor


def test_dim0_is_chunked_into_ceil_rows_and_padded_to_them():
    # torch.chunk gives ceil(dim0 / N) rows; FSDPParam pads every rank's chunk to chunks[0].size()
    t = ParamTensor("w", (5, 3))
    assert shard_tensor(t, 4).shape == (2, 3)
    assert padded_numel(t, 4) == 24  # the all-gather output / reduce-scatter input: 8 rows
    assert shard_tensor(ParamTensor("b", (3,)), 4).shape == (1,)


@pytest.fixture
def fake_group():
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=3)
    try:
        yield torch
    finally:
        dist.destroy_process_group()


def test_rank_states_are_the_real_dtensor_shards_to_the_byte(fake_group):
    # GIVEN a tiny llama none of whose dims (128, 64, 32) divides by 3 ranks, fully_shard per block
    # and on the root, as the estimate assumes, and one AdamW step on rank 0 of 3
    torch = fake_group
    from torch.distributed.fsdp import fully_shard

    import memprof
    from memprof.tiny_models import batch, build

    model, spec = build("llama", "eager")
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with memprof.track(model, opt) as run:
        loss = model(**batch("llama", 2, 16)).loss
        loss.backward()
        opt.step()
    measured = run.record
    # WHEN the same run is estimated for rank 0 of 3
    predicted = estimate(
        spec,
        "adamw",
        "32-true",
        batch_size=2,
        seq_len=16,
        attention="eager",
        device="cpu",
        gpus=3,
        engine="fsdp",
        zero=3,
    ).record
    # THEN parameters, gradients and optimizer states are rank 0's padded shards, to the byte
    assert predicted.model_states == measured.model_states
    assert dict(predicted.optimizer_state_breakdown) == dict(measured.optimizer_state_breakdown)
    # padded: rank 0 holds more than a third (43 of 128 rows, 22 of 64, 11 of 32)
    assert 3 * measured.model_states.parameters > 4 * spec.num_parameters


def test_sharding_a_real_model_over_two_gpus_costs_less_than_one():
    one = estimate("qwen2.5-0.5b").record
    fsdp = {z: estimate("qwen2.5-0.5b", gpus=2, engine="fsdp", zero=z).record for z in (2, 3)}
    assert fsdp[3].peak.device_total < fsdp[2].peak.device_total < one.peak.device_total
    # and with more GPUs, less again
    assert estimate("qwen2.5-0.5b", gpus=8, engine="fsdp", zero=3).record.peak.device_total < fsdp[3].peak.device_total
    assert fsdp[3].settings.engine == "fsdp" and fsdp[3].settings.fsdp_unit == "block"


def test_one_unit_gathers_the_whole_model():
    block = estimate("gpt2-124m", gpus=4, engine="fsdp", zero=3, device="cpu").record
    model = estimate("gpt2-124m", gpus=4, engine="fsdp", zero=3, device="cpu", fsdp_unit="model").record
    assert model.model_states == block.model_states  # the same shards
    # the whole model gathered at once in bf16 (MixedPrecisionPolicy), its flat all-gather output
    # kept beside the parameters through the forward; per block, one block and the root at a time
    gathered = 2 * model.parameters
    assert model.peak.by_category["temporary"] >= 2 * gathered > block.peak.by_category["temporary"]
    assert model.peak.allocated > block.peak.allocated
