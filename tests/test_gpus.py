"""GPU presets: the data file round-trips, figures are the sourced ones, names resolve."""

from __future__ import annotations

import json

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.gpus import GPUS, GPUSpec, get_gpu, gpu_names, load_gpus
from memprof.profiles import data_path

MIB = 2**20
ENTRIES = json.loads(data_path("gpus.json").read_text(encoding="utf-8"))
FIELDS = {
    "name",
    "family",
    "aliases",
    "nvml_names",
    "architecture",
    "compute_capability",
    "nominal_gb",
    "memory_mib",
    "memory_bytes",
    "verified",
    "memory_source",
    "torch_total_memory",
    "torch_total_memory_verified",
    "torch_total_memory_source",
    "memory_bandwidth_gb_s",
    "fp16_tensor_dense_tflops",
    "perf_source",
    "notes",
}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_every_entry_round_trips_through_the_loader(entry):
    spec = GPUS[entry["name"]]
    assert set(entry) == FIELDS
    assert spec.memory_bytes == entry["memory_bytes"] == entry["memory_mib"] * MIB
    assert spec.memory_mib == entry["memory_mib"]
    assert spec.compute_capability == tuple(entry["compute_capability"])
    assert spec.torch_total_memory == entry["torch_total_memory"]
    assert set(spec.nvml_names) == set(entry["nvml_names"])
    assert set(entry["aliases"]) | set(entry["nvml_names"]) <= set(spec.aliases)
    for name in (entry["name"], *entry["aliases"], *entry["nvml_names"]):
        assert get_gpu(name) is spec


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_every_entry_has_a_source_and_consistent_torch_figure(entry):
    assert entry["memory_source"].strip()
    assert entry["verified"] is True or "not verified" in entry["memory_source"]
    assert entry["torch_total_memory_source"].strip()
    assert entry["torch_total_memory_verified"] is (entry["torch_total_memory"] is not None)
    if entry["torch_total_memory"] is None:
        assert entry["torch_total_memory_source"].startswith("not verified")
    else:
        # CUDA's total excludes what the driver reserves, so it is below the NVML total
        assert 0 < entry["memory_bytes"] - entry["torch_total_memory"] < 1024 * MIB
    if entry["memory_bandwidth_gb_s"] is not None or entry["fp16_tensor_dense_tflops"] is not None:
        assert entry["perf_source"]
    # a typo in the MiB figure would leave the band around the marketing size ("80 GB")
    assert 0.95 < entry["memory_bytes"] / (entry["nominal_gb"] * 1e9) < 1.1


def test_the_fourteen_presets():
    assert gpu_names() == [
        "a10",
        "a100-40gb",
        "a100-80gb",
        "h100-80gb",
        "h100-pcie",
        "h200",
        "l4",
        "l40s",
        "rtx-3090",
        "rtx-4090",
        "rtx-a6000",
        "t4",
        "v100-16gb",
        "v100-32gb",
    ]


@pytest.mark.parametrize(
    "name, mib",
    [
        ("h100-80gb", 81559),
        ("h100-pcie", 81559),
        ("a100-80gb", 81920),
        ("a100-40gb", 40960),
        ("a10", 23028),
        ("l4", 23034),
        ("l40s", 46068),
        ("t4", 15360),
        ("rtx-4090", 24564),
        ("rtx-3090", 24576),
        ("rtx-a6000", 49140),
        ("h200", 143771),
        ("v100-16gb", 16384),
        ("v100-32gb", 32768),
    ],
)
def test_driver_totals_are_the_sourced_nvidia_smi_figures(name, mib):
    assert get_gpu(name).memory_bytes == mib * MIB


def test_h100_matches_the_design_document():
    h100 = get_gpu("h100-80gb")
    assert h100.verified
    assert h100.memory_bytes == 85520809984
    assert h100.torch_total_memory == 85045477376  # deviceQuery, driver 565.57.01
    assert (h100.sm, h100.architecture, h100.nominal_gb) == ("sm_90", "Hopper", 80)


def test_a10_nvml_bytes_are_whole_mib():
    # NVML's exact Total for an A10 (mayooot/detect-gpu#3) is 23028 MiB to the byte
    assert get_gpu("a10").memory_bytes == 24146608128


@pytest.mark.parametrize(
    "name, cc, arch",
    [
        ("t4", (7, 5), "Turing"),
        ("v100-32gb", (7, 0), "Volta"),
        ("a100-40gb", (8, 0), "Ampere"),
        ("rtx-3090", (8, 6), "Ampere"),
        ("l40s", (8, 9), "Ada Lovelace"),
        ("h200", (9, 0), "Hopper"),
    ],
)
def test_compute_capability_and_architecture(name, cc, arch):
    spec = get_gpu(name)
    assert (spec.compute_capability, spec.architecture) == (cc, arch)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("H100", "h100-80gb"),
        ("h100-sxm", "h100-80gb"),
        ("NVIDIA H100 80GB HBM3", "h100-80gb"),
        ("nvidia h100 80gb hbm3", "h100-80gb"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("Tesla T4", "t4"),
        ("T4", "t4"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("A100_80GB", "a100-80gb"),
        ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
        ("Tesla V100-SXM2-16GB", "v100-16gb"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("rtx 3090", "rtx-3090"),
        ("GeForce RTX 3090", "rtx-3090"),
        ("A6000", "rtx-a6000"),
        ("NVIDIA L40S", "l40s"),
        ("nvidia l4", "l4"),
        ("NVIDIA H200", "h200"),
        ("  H200 ", "h200"),
    ],
)
def test_names_aliases_and_nvml_names_resolve(query, expected):
    assert get_gpu(query).name == expected


@pytest.mark.parametrize(
    "query, listed",
    [
        ("a100", "a100-40gb, a100-80gb"),
        ("A100", "a100-40gb, a100-80gb"),
        ("NVIDIA A100", "a100-40gb, a100-80gb"),
        ("v100", "v100-16gb, v100-32gb"),
    ],
)
def test_ambiguous_names_raise_listing_the_choices(query, listed):
    with pytest.raises(MemprofUserError) as err:
        get_gpu(query)
    assert str(err.value) == f"ambiguous GPU {query!r}; say which: {listed}"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(MemprofUserError, match=r"^unknown GPU 'h100-80g'; did you mean h100-80gb"):
        get_gpu("h100-80g")


def test_unknown_name_without_close_match_lists_every_preset():
    with pytest.raises(MemprofUserError) as err:
        get_gpu("mi300x")
    assert str(err.value) == "unknown GPU 'mi300x'; valid: " + ", ".join(gpu_names())


def test_loader_rejects_bytes_that_disagree_with_mib(tmp_path):
    entry = dict(ENTRIES[0], memory_bytes=ENTRIES[0]["memory_bytes"] + 1)
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match="memory_bytes"):
        load_gpus(path)


def test_loader_rejects_a_name_claimed_by_two_presets(tmp_path):
    from memprof.estimators.gpus import _build_index

    a, b = ENTRIES[0], dict(ENTRIES[1], aliases=[*ENTRIES[1]["aliases"], ENTRIES[0]["name"]])
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([a, b]))
    with pytest.raises(ValueError, match="names both"):
        _build_index(load_gpus(path))


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        get_gpu("t4").memory_bytes = 0  # type: ignore[misc]
    assert isinstance(get_gpu("t4"), GPUSpec)


def test_no_heavy_imports():
    import subprocess
    import sys

    code = (
        "import sys, memprof.estimators.gpus as g; g.get_gpu('h100');"
        "bad = [m for m in ('torch', 'numpy', 'pandas', 'matplotlib') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
