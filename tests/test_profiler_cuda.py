"""CUDA and NVML paths: exercised where a GPU exists; elsewhere the profile must say they are unavailable."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import memprof  # noqa: E402

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_cuda_figures_are_stated_unavailable_not_faked() -> None:
    model = nn.Linear(10, 10, bias=False)
    with memprof.track(model, device="cuda") as run:  # asked for cuda, none exists
        model(torch.ones(1, 10)).sum().backward()
    d = run.to_dict()
    assert d["device"] == "cpu"
    assert d["cuda"] == {"available": False, "reason": d["cuda"]["reason"]}
    assert "torch.cuda.is_available() is False" in d["cuda"]["reason"]
    assert d["nvml"]["available"] is False and "is_available() is False" in d["nvml"]["reason"]
    assert d["peak"]["reserved"] is None and d["peak"]["by_category"]["cuda_context"] is None
    # weight + its gradient + the input + the loss + backward's seed gradient (4 B each)
    assert d["peak"]["allocated"] == 400 + 400 + 40 + 4 + 4


def test_nvml_reports_a_reason_when_it_cannot_measure() -> None:
    from memprof.profiler.nvml import Nvml

    nvml = Nvml(0)
    if not nvml.available:
        assert nvml.reason and nvml.sample() is None
    else:
        assert nvml.sample() > 0
    assert Nvml(None).reason == "no CUDA device is being profiled"


@pytest.mark.cuda
@needs_cuda
def test_cuda_peak_comes_from_the_allocator_and_phases_are_split(tmp_path) -> None:
    dev = torch.device("cuda")
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).to(dev)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(64, 256, device=dev)
    with memprof.track(model, opt, memory_snapshot=True) as run:
        for _ in range(2):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        torch.cuda.synchronize()
    d = run.to_dict()
    assert d["cuda"]["available"] is True and d["device"].startswith("cuda")
    assert d["peak"]["allocated"] == d["cuda"]["max_memory_allocated"]
    assert d["peak"]["reserved"] >= d["peak"]["allocated"]
    assert d["peak"]["by_category"]["fragmentation"] == d["peak"]["reserved"] - d["peak"]["allocated"]
    # every tracked storage is rounded up by the allocator, so the allocator sees at least as much
    assert d["peak"]["allocated"] >= d["peak"]["detail"]["tracked_tensor_bytes"]
    for phase in ("forward", "backward", "optimizer_step"):
        assert d["phases"][phase]["cuda"]["max_memory_allocated"] > 0
        assert d["phases"][phase]["cuda"]["num_ooms"] == 0
    n = sum(p.numel() for p in model.parameters())
    assert d["model_states"]["optimizer_states"] == 2 * 4 * n + 4 * len(list(model.parameters()))
    if d["nvml"]["available"]:
        assert d["peak"]["by_category"]["cuda_context"] > 0
    else:
        assert d["nvml"]["reason"]
    path = run.save(tmp_path / "p.json")
    assert (tmp_path / "p.snapshot.pickle").stat().st_size > 0 and path.exists()


@pytest.mark.cuda
@needs_cuda
def test_cuda_out_of_memory_propagates_and_is_recorded() -> None:
    dev = torch.device("cuda")
    model = nn.Linear(16, 16).to(dev)
    total = torch.cuda.get_device_properties(dev).total_memory
    with pytest.raises(torch.OutOfMemoryError), memprof.track(model, mode="stats") as run:
        torch.empty(2 * total, dtype=torch.uint8, device=dev)
    err = run.to_dict()["error"]
    assert err["out_of_memory"] is True and err["type"] == "OutOfMemoryError"
    assert err["cuda_memory_allocated"] >= 0


@pytest.mark.cuda
@needs_cuda
def test_stats_mode_on_cuda_reads_allocator_counters() -> None:
    dev = torch.device("cuda")
    model = nn.Linear(512, 512).to(dev)
    with memprof.track(model, mode="stats") as run:
        model(torch.randn(128, 512, device=dev)).sum().backward()
    d = run.to_dict()
    assert d["peak"]["allocated"] >= 512 * 512 * 4 * 2  # weight + its gradient
    assert d["phases"]["backward"]["cuda"]["max_memory_allocated"] > 0
