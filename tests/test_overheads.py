"""Non-tensor device memory: cuBLAS/cuBLASLt workspace sizes (torch 2.13 CublasHandlePool.cpp),
allocator rounding, and the CUDA-context estimate built from cited measurements."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.gpus import get_gpu
from memprof.estimators.overheads import (
    ALLOCATOR_ROUNDING,
    CUBLAS_DEFAULT_WORKSPACE,
    architecture_of,
    blas_workspace_allocations,
    context_observations,
    cublas_workspace_bytes,
    cublaslt_workspace_bytes,
    cuda_context_bytes,
    parse_compute_capability,
    parse_cublas_workspace_config,
    parse_cuda_major,
    round_allocation,
)
from memprof.profiles import data_path

MiB = 2**20


# ---------------------------------------------------------------- cuBLAS workspace


@pytest.mark.parametrize(
    "cc, expected",
    [
        ((8, 0), 8_519_680),  # A100: ":4096:2:16:8" = 4096 KiB * 2 + 16 KiB * 8
        ((8, 6), 8_519_680),  # RTX 3090 / A10
        ((8, 9), 8_519_680),  # L4 / RTX 4090
        ((7, 0), 8_519_680),  # V100
        ((9, 0), 33_554_432),  # H100: 32 MiB
        ((10, 0), 33_554_432),  # B200: 32 MiB since pytorch#175344
        ((12, 0), 33_554_432),  # RTX 5090: 32 MiB since pytorch#175344
        ((11, 0), 8_519_680),  # Thor: 32 MiB only after 2.13 (pytorch#189312)
    ],
)
def test_cublas_default_workspace_by_compute_capability(cc, expected):
    assert cublas_workspace_bytes(cc) == expected


def test_cublas_default_is_4096_2_16_8():
    assert CUBLAS_DEFAULT_WORKSPACE == 4096 * 1024 * 2 + 16 * 1024 * 8 == 8_519_680


@pytest.mark.parametrize(
    "spelling", [(9, 0), [9, 0], "9.0", "sm_90", "sm90", "sm_90a", SimpleNamespace(compute_capability=(9, 0))]
)
def test_compute_capability_spellings(spelling):
    assert parse_compute_capability(spelling) == (9, 0)
    assert cublas_workspace_bytes(spelling) == 32 * MiB


def test_compute_capability_three_digit_sm():
    assert parse_compute_capability("sm_100") == (10, 0)
    assert parse_compute_capability("sm_120") == (12, 0)


@pytest.mark.parametrize("bad", ["eighty", (8,), (8, -1), "8", None, (8.0, 0)])
def test_bad_compute_capability_is_a_user_error(bad):
    with pytest.raises(MemprofUserError, match="compute capability"):
        cublas_workspace_bytes(bad)


@pytest.mark.parametrize(
    "config, expected",
    [
        (":4096:8", 32 * MiB),  # the deterministic-mode setting
        (":16:8", 128 * 1024),  # the small deterministic setting
        (":4096:2:16:8", 8_519_680),  # torch's own default, spelled out
        ("::4096:8", 32 * MiB),  # a stray colon is skipped like std::regex does
        (":4096:2 junk :16:8", 8_519_680),  # text between pairs is ignored
        (":0:0", 0),
    ],
)
def test_cublas_workspace_config(config, expected):
    assert parse_cublas_workspace_config(config) == expected
    assert cublas_workspace_bytes((8, 0), config) == expected
    assert cublas_workspace_bytes((9, 0), config) == expected  # an explicit config wins on Hopper too


@pytest.mark.parametrize("config", ["", "4096:8", "garbage", ":4096"])
def test_unparsable_config_keeps_the_default(config):
    assert parse_cublas_workspace_config(config) is None
    assert cublas_workspace_bytes((8, 0), config) == 8_519_680
    assert cublas_workspace_bytes((9, 0), config) == 32 * MiB


# ---------------------------------------------------------------- cuBLASLt workspace


def test_cublaslt_unified_default_is_the_cublas_size():
    assert cublaslt_workspace_bytes((8, 0)) == 8_519_680
    assert cublaslt_workspace_bytes((9, 0)) == 32 * MiB


def test_cublaslt_unified_caps_at_cublas_size():
    assert cublaslt_workspace_bytes((8, 0), "65536") == 8_519_680  # 64 MiB asked, capped
    assert cublaslt_workspace_bytes((8, 0), "1024") == 1 * MiB  # smaller than cuBLAS: kept
    assert cublaslt_workspace_bytes((8, 0), "4096", ":16:8") == 128 * 1024  # cap follows the config


def test_cublaslt_separate_workspace():
    assert cublaslt_workspace_bytes((8, 0), unified=False) == 1 * MiB
    assert cublaslt_workspace_bytes((9, 0), unified=False) == 1 * MiB
    assert cublaslt_workspace_bytes((8, 0), "65536", unified=False) == 64 * MiB


@pytest.mark.parametrize(
    "value, expected_kib",
    [
        ("2048", 2048),
        (" 2048", 2048),
        ("2048KiB", 2048),
        ("+16", 16),  # std::stoi prefix rules
        ("abc", 1024),
        ("", 1024),
        ("99999999999", 1024),  # invalid / out of range -> default
    ],
)
def test_cublaslt_size_is_read_like_stoi(value, expected_kib):
    assert cublaslt_workspace_bytes((8, 0), value, unified=False) == expected_kib * 1024


def test_negative_cublaslt_size_is_a_user_error():
    with pytest.raises(MemprofUserError, match="CUBLASLT_WORKSPACE_SIZE"):
        cublaslt_workspace_bytes((8, 0), "-1")


def test_blas_workspace_allocations():
    assert blas_workspace_allocations((8, 0)) == (8_519_680,)
    assert blas_workspace_allocations((9, 0)) == (32 * MiB,)
    assert blas_workspace_allocations((8, 0), unified=False) == (8_519_680, 1 * MiB)
    assert blas_workspace_allocations((8, 0), unified=False, uses_cublaslt=False) == (8_519_680,)


# ---------------------------------------------------------------- allocator rounding


@pytest.mark.parametrize(
    "nbytes, expected",
    [
        (0, 512),
        (1, 512),
        (4, 512),
        (511, 512),
        (512, 512),
        (513, 1024),
        (1000, 1024),
        (1024, 1024),
        (1025, 1536),
        (4 * 1000, 4096),
        (1 << 20, 1 << 20),
        ((1 << 20) + 1, (1 << 20) + 512),
        (8_519_680, 8_519_680),
    ],
)
def test_round_allocation(nbytes, expected):
    assert ALLOCATOR_ROUNDING == 512
    assert round_allocation(nbytes) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, "512", True])
def test_round_allocation_rejects_non_sizes(bad):
    with pytest.raises(MemprofUserError, match="allocation size"):
        round_allocation(bad)


# ---------------------------------------------------------------- CUDA context data


def _raw_observations():
    with open(data_path("cuda_context.json"), encoding="utf-8") as f:
        return json.load(f)["observations"]


def test_every_observation_cites_a_source():
    raw = _raw_observations()
    assert len(raw) >= 15
    for entry in raw:
        source = entry["source"]
        assert source["url"].startswith("https://"), entry["id"]
        assert source.get("where"), entry["id"]
        assert entry["measured"] and entry["derivation"], entry["id"]
        assert entry["reported"]["unit"] in {"B", "MiB"}, entry["id"]
        if "github.com" in source["url"] and "/docs" not in source["url"]:
            assert source["repository"] in source["url"], entry["id"]
            assert source["url"].endswith(f"/{source['number']}"), entry["id"]


def test_excluded_observations_say_why_and_are_not_used():
    raw = {e["id"]: e for e in _raw_observations()}
    excluded = [i for i, e in raw.items() if e.get("use_in_estimate") is False]
    assert set(excluded) == {"modded-nanogpt-161", "pytorch-135279", "vllm-37449", "vllm-omni-3768"}
    for i in excluded:
        assert raw[i]["excluded_because"], i
    used = {o.id for lazy in (True, False) for o in cuda_context_bytes(None, lazy=lazy).observations}
    assert not used & set(excluded)


def test_observation_fields_are_consistent():
    for entry in _raw_observations():
        reported = entry["reported"]
        value = reported["value"] * (MiB if reported["unit"] == "MiB" else 1)
        # context_bytes is the reported figure or that figure minus known allocator segments
        assert 0 < entry["context_bytes"] <= value, entry["id"]
        if entry["quality"] != "derived":
            assert entry["context_bytes"] == value, entry["id"]
    for obs in context_observations():
        if obs.compute_capability is not None:
            assert obs.architecture == architecture_of(obs.compute_capability)


def test_derived_figures_subtract_the_right_segment():
    by_id = {o.id: o for o in context_observations()}
    # randn(20, 16, 50, 100) is 6,400,000 B: large pool, below 10 MiB -> one 20 MiB segment
    assert by_id["pytorch-86509-lazy"].context_bytes == 287_047_680 - 20 * MiB == 266_076_160
    # randn(64, 16, 200, 200) is 163,840,000 B: segment rounded up to 2 MiB -> 158 MiB
    assert by_id["pytorch-49877-rtx3090"].context_bytes == (1644 - 158) * MiB


# ---------------------------------------------------------------- CUDA context estimate


def test_context_without_gpu_uses_every_lazy_figure():
    est = cuda_context_bytes(None)
    lazy = [o for o in context_observations() if o.lazy_loading is True and o.use_in_estimate]
    assert est.observations == tuple(lazy)
    assert len(lazy) == 4
    # 253.75, 256, 426 and 534 MiB -> mean of the middle two
    assert est.bytes == (256 * MiB + 426 * MiB) // 2 == 357_564_416
    assert (est.low, est.high) == (266_076_160, 534 * MiB)
    assert est.basis == "median of all 4 measured figures with lazy loading (GPU architecture not given)"


def test_context_prefers_same_architecture_and_cuda_major():
    rtx6000_ada = SimpleNamespace(name="rtx-6000-ada", compute_capability=(8, 9), architecture="Ada Lovelace")
    est = cuda_context_bytes(rtx6000_ada, "13.0")
    assert [o.id for o in est.observations] == ["unsloth-zoo-1053"]
    assert est.bytes == est.low == est.high == 426 * MiB
    assert est.basis == "median of 1 measured figure on Ada, CUDA 13.x, lazy loading"


def test_context_falls_back_to_same_architecture_any_cuda():
    est = cuda_context_bytes(get_gpu("rtx-4090"), "cu124")
    assert [o.id for o in est.observations] == ["unsloth-zoo-1053"]
    assert est.basis == "median of 1 measured figure on Ada, any CUDA version, lazy loading (none for CUDA 12.x)"


def test_context_for_registry_gpus_picks_their_architecture():
    a100 = cuda_context_bytes(get_gpu("a100-80gb"), "12.8")
    assert [o.id for o in a100.observations] == ["invokeai-9413"]
    assert a100.bytes == 256 * MiB
    h100 = cuda_context_bytes(get_gpu("h100-80gb"))
    assert [o.id for o in h100.observations] == ["torchcomms-777"]
    assert h100.bytes == 534 * MiB


def test_context_architecture_only_object():
    est = cuda_context_bytes(SimpleNamespace(compute_capability=None, architecture="Hopper"))
    assert [o.id for o in est.observations] == ["torchcomms-777"]


def test_context_unknown_architecture_falls_back_to_all():
    est = cuda_context_bytes(SimpleNamespace(compute_capability=(10, 0), architecture="Blackwell"))
    assert len(est.observations) == 4
    assert est.basis == "median of all 4 measured figures with lazy loading (none for Blackwell)"


def test_context_eager_loading_uses_eager_figures():
    eager = cuda_context_bytes(get_gpu("rtx-3090"), "11.1", lazy=False)
    assert {o.id for o in eager.observations} == {"pytorch-55277-rtx3090", "pytorch-49877-rtx3090"}
    assert eager.bytes == (1685 * MiB + 1486 * MiB) // 2
    assert (eager.low, eager.high) == (1486 * MiB, 1685 * MiB)
    assert eager.basis == "median of 2 measured figures on Ampere, CUDA 11.x, eager loading"
    t4 = cuda_context_bytes(get_gpu("t4"), "10.1", lazy=False)  # Turing: the 2080 Ti figure
    assert [o.id for o in t4.observations] == ["pytorch-49877-rtx2080ti"]
    assert t4.bytes == 877 * MiB
    assert cuda_context_bytes(None, lazy=False).bytes > cuda_context_bytes(None, lazy=True).bytes


@pytest.mark.parametrize(
    "text, major", [("12.4", 12), ("12", 12), ("13.0.3", 13), ("cu124", 12), ("cu118", 11), ("cu92", 9), ("cu130", 13)]
)
def test_cuda_major(text, major):
    assert parse_cuda_major(text) == major


@pytest.mark.parametrize("bad", ["twelve", "12.x", "cu", 12])
def test_bad_cuda_version_is_a_user_error(bad):
    with pytest.raises(MemprofUserError, match="CUDA version"):
        cuda_context_bytes(None, bad)


def test_lazy_must_be_boolean():
    with pytest.raises(MemprofUserError, match="lazy"):
        cuda_context_bytes(None, lazy="yes")
