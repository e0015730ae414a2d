"""Sizes ("80GiB"), PYTORCH_CUDA_ALLOC_CONF parsing and request rounding, against c10's rules."""

from __future__ import annotations

import pytest

from memprof.estimators.allocator import AllocatorConfig, merge_alloc_conf, parse_alloc_conf
from memprof.estimators.allocator.simulator import CachingAllocatorSimulator
from memprof.estimators.errors import MemprofUserError
from memprof.estimators.units import format_bytes, parse_size

MiB = 1 << 20


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80GiB", 80 * 2**30),
        ("80GB", 80 * 10**9),
        ("512MiB", 512 * 2**20),
        ("512mib", 512 * 2**20),
        ("4096", 4096),
        (" 2 KiB ", 2048),
        ("1.5GiB", 3 * 2**29),
        ("1.1GB", 1_100_000_000),
        ("7B", 7),
        (1234, 1234),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["80 gigs", "GiB", "-5", "1.5", "", "80XB", "1e9"])
def test_parse_size_rejects_with_valid_units(text):
    with pytest.raises(MemprofUserError) as err:
        parse_size(text)
    message = str(err.value)
    assert "\n" not in message
    assert "GiB" in message or "whole number" in message


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (512, "512 B"),
        (1024, "1.00 KiB"),
        (1556925644, "1.45 GiB"),
        (80 * 2**30, "80.00 GiB"),
        (-3 * MiB, "-3.00 MiB"),
        (5 * 2**40, "5.00 TiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_default_conf():
    assert parse_alloc_conf(None) == AllocatorConfig()
    assert parse_alloc_conf("  ") == AllocatorConfig()
    assert AllocatorConfig().to_conf() == ""


def test_full_conf():
    config = parse_alloc_conf(
        "max_split_size_mb:128, roundup_power2_divisions:[256:1,512:2,1024:4,>:8],"
        "expandable_segments:True,garbage_collection_threshold:0.6,release_lock_on_cudamalloc:True"
    )
    assert config.max_split_size == 128 * MiB
    assert config.max_non_split_rounding == 20 * MiB
    assert config.expandable_segments is True
    assert config.garbage_collection_threshold == 0.6
    # intervals start at 1 MB: index 8 = 256 MB, 9 = 512 MB, 10 = 1 GB; the first entry fills below it,
    # '>' fills everything after the last entry
    assert config.roundup_power2_divisions == (1,) * 9 + (2, 4) + (8,) * 5
    assert config.divisions_for(100) == 1
    assert config.divisions_for(300 * MiB) == 1
    assert config.divisions_for(600 * MiB) == 2
    assert config.divisions_for(64 * 2**30) == 8
    assert parse_alloc_conf(config.to_conf()) == config


def test_conf_roundtrip_single_division():
    config = parse_alloc_conf("roundup_power2_divisions:4")
    assert config.roundup_power2_divisions == (4,) * 16
    assert config.to_conf() == "roundup_power2_divisions:4"


def test_large_segment_size_is_read_first():
    config = parse_alloc_conf("max_non_split_rounding_mb:40,large_segment_size_mb:32")
    assert config.large_segment_size == 32 * MiB
    assert config.max_non_split_rounding == 40 * MiB
    assert parse_alloc_conf("large_segment_size_mb:32").max_non_split_rounding == 32 * MiB


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("max_split_size_mb:10", "must be >= 20"),
        ("expandable_segments:true", "True or False"),
        ("roundup_power2_divisions:3", "power of two"),
        ("roundup_power2_divisions:[300:2]", "powers of two"),
        ("max_split_size_mb", "expected ':'"),
        ("expandable_segment:True", "did you mean expandable_segments"),
        ("backend:cudaMallocAsync", "native"),
        ("garbage_collection_threshold:1.5", "(0.0, 1.0)"),
        ("max_split_size_mb:64;expandable_segments:True", "whole number"),
    ],
)
def test_bad_conf_is_one_line_error(text, fragment):
    with pytest.raises(MemprofUserError) as err:
        parse_alloc_conf(text)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_merge_alloc_conf():
    assert (
        merge_alloc_conf("max_split_size_mb:64,expandable_segments:False", "expandable_segments:True")
        == "max_split_size_mb:64,expandable_segments:True"
    )
    assert merge_alloc_conf(None, "roundup_power2_divisions:[256:1,>:4]") == "roundup_power2_divisions:[256:1,>:4]"


@pytest.mark.parametrize(
    "conf, request_bytes, rounded",
    [
        ("", 1, 512),
        ("", 512, 512),
        ("", 513, 1024),
        ("", MiB + 1, MiB + 512),
        # divisions apply only when size > 512 * divisions: 1200 B stays on the 512 grid
        ("roundup_power2_divisions:4", 1200, 1536),
        # 1.2e6 lies in [1 MiB, 2 MiB), steps of 256 KiB: 1310720
        ("roundup_power2_divisions:4", 1_200_000, 1_310_720),
        ("roundup_power2_divisions:4", 2 * MiB, 2 * MiB),  # powers of two stay
        ("roundup_power2_divisions:8", 300 * MiB, 320 * MiB),  # 256 MiB + k * 32 MiB
        # per interval: 1 division (off) up to 256 MB, 4 from 512 MB
        ("roundup_power2_divisions:[256:1,512:4]", 300 * MiB + 1, 300 * MiB + 512),
        ("roundup_power2_divisions:[256:1,512:4]", 600 * MiB, 640 * MiB),
    ],
)
def test_round_size(conf, request_bytes, rounded):
    assert CachingAllocatorSimulator(conf).round_size(request_bytes) == rounded


def test_allocation_size():
    sim = CachingAllocatorSimulator()
    assert sim.allocation_size(512) == 2 * MiB
    assert sim.allocation_size(MiB) == 2 * MiB
    assert sim.allocation_size(MiB + 512) == 20 * MiB
    assert sim.allocation_size(10 * MiB - 512) == 20 * MiB
    assert sim.allocation_size(10 * MiB) == 10 * MiB
    assert sim.allocation_size(10 * MiB + 512) == 12 * MiB
    assert CachingAllocatorSimulator("large_segment_size_mb:32").allocation_size(3 * MiB) == 32 * MiB
