"""Real multi-process CPU runs (torchrun, gloo), rank by rank: the quick set of the distributed
validation matrix (one case per engine; DeepSpeed's is its own test), and `memprof run` under
torchrun writing one profile per rank that `memprof compare` reads rank by rank."""

import json
import os
import subprocess
import sys

import pytest

from memprof import validate_distributed as V

pytest.importorskip("torch")

QUICK = [c for c in V.quick_matrix() if c.engine in ("fsdp", "ddp")]


@pytest.mark.parametrize("case", QUICK, ids=lambda c: c.name)
def test_quick_case_is_predicted_per_rank(case):
    row = V.run_case(case)
    assert "error" not in row, row.get("error")
    assert row["states_exact"], row["ranks"][0]["model_states"]
    assert len(row["ranks"]) == case.nproc
    for r in row["ranks"]:
        assert r["world_size"] == case.nproc
        assert abs(r["error_pct"]) <= V.PEAK_TOLERANCE_PCT, r
    assert sorted(r["rank"] for r in row["ranks"]) == list(range(case.nproc))


SCRIPT = """
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from memprof.tiny_models import batch, build
dist.init_process_group("gloo")
model, _ = build("llama", "eager")
for block in model.model.layers:
    fully_shard(block)
fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for i in range(2):
    loss = model(**batch("llama", 2, 32, seed=10 * dist.get_rank() + i)).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
dist.destroy_process_group()
"""


def test_memprof_run_under_torchrun_writes_one_profile_per_rank(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [*run, "-m", "memprof", "run", "--out", str(out), str(script)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = [tmp_path / f"out.rank{r}.json" for r in (0, 1)]
    for rank, path in enumerate(paths):
        data = json.loads(path.read_text())
        assert (data["rank"], data["world_size"]) == (rank, 2)
    # the per-rank estimate of the same run, then both ranks against it
    from memprof.estimators.estimation import estimate
    from memprof.tiny_models import build

    _, spec = build("llama", "eager")
    est = estimate(
        spec,
        "adamw",
        "32-true",
        batch_size=2,
        seq_len=32,
        attention="eager",
        device="cpu",
        gpus=2,
        engine="fsdp",
        zero=3,
        keep_output=False,
    )
    (tmp_path / "est.json").write_text(json.dumps(est.to_dict()))
    cmp = subprocess.run(
        [
            sys.executable,
            "-m",
            "memprof",
            "compare",
            *map(str, paths),
            "--estimate",
            str(tmp_path / "est.json"),
            "--format",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stderr
    result = json.loads(cmp.stdout)
    assert [r["rank"] for r in result["ranks"]] == [0, 1]
    assert result["worst_rank"] in (0, 1)
    assert all(r["states_exact"] for r in result["ranks"])
    # FSDP2's model states are each rank's shards: half the model's parameters in fp32
    assert json.loads(paths[1].read_text())["model_states"]["parameters"] * 2 == spec.num_parameters * 4


def test_comparing_ranks_without_the_per_rank_estimate_is_one_line(tmp_path):
    from memprof.estimators.records import ProfileRecord  # noqa: F401 - the record the CLI reads

    prof = tmp_path / "p.json"
    # two copies of one saved profile are two ranks only with an estimate
    import memprof
    from memprof.tiny_models import batch, build

    model, _ = build("llama", "eager")
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with memprof.track(model, opt) as run:
        model(**batch("llama", 1, 8)).loss.backward()
        opt.step()
    run.save(str(prof))
    proc = subprocess.run(
        [sys.executable, "-m", "memprof", "compare", str(prof), str(prof)],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("memprof: error: comparing ranks needs the per-rank estimate")


def test_the_matrix_runs_deepspeed_zero3_with_and_without_partitioned_parameters():
    from memprof.validate_distributed import DS3_PARTITIONED, full_matrix, main, zero3_partitioned_cases

    names = [c.name for c in full_matrix()]
    zero3 = [n for n in names if n.startswith("deepspeed zero3")]
    # fp32 and bf16 on llama and gpt2, 4 ranks, DeepSpeed's default buckets; partitioned fp32 and bf16
    assert len(zero3) == 8 and "deepspeed zero3 llama bf16-master x2" in zero3
    assert len(set(names)) == len(names)
    partitioned = zero3_partitioned_cases()
    assert {c.options for c in partitioned} == {DS3_PARTITIONED}
    assert {c.name for c in partitioned} <= set(names)
    assert main(["--only", "partitioned", "--only", "no-such-case", "--no-save"]) == 0  # selects among them only
