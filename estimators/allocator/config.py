"""PYTORCH_CUDA_ALLOC_CONF, parsed the way c10 parses it.

Source: c10/core/AllocatorConfig.{h,cpp} (AcceleratorAllocatorConfig, ConfigTokenizer) and
c10/cuda/CUDAAllocatorConfig.h of torch 2.13 (the installed headers), checked against
pytorch/pytorch on GitHub:
- tokens are split at ',', ':', '[' and ']'; whitespace is dropped;
- `large_segment_size_mb` (> 10, default 20) is read first; `max_non_split_rounding_mb` defaults to it;
- `max_split_size_mb` and `max_non_split_rounding_mb` must be >= large_segment_size_mb (20);
- `roundup_power2_divisions` is either one power of two for every size, or a list
  `[256:1,512:2,>:4]` of (interval start in MB, divisions) over 16 power-of-two intervals starting
  at 1 MB; the first entry also fills the intervals below it, `>` fills those after the last entry;
- booleans are exactly `True` or `False` (PyTorch rejects `true`);
- `backend:cudaMallocAsync` replaces this allocator entirely, so it cannot be simulated here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypedDict

from ..errors import MemprofUserError, unknown_name

MB = 1 << 20
NUM_ROUNDUP_INTERVALS = 16  # kRoundUpPowerOfTwoIntervals: 1 MB .. 64 GB
DEFAULT_LARGE_SEGMENT = 20 * MB  # kLargeBuffer / large_segment_size_

# options that only affect pinned host memory, locking or CUDA graphs: accepted and ignored
_IGNORED_KEYS = frozenset(
    {
        "release_lock_on_cudamalloc",
        "release_lock_on_hipmalloc",
        "pinned_use_cuda_host_register",
        "pinned_use_hip_host_register",
        "pinned_num_register_threads",
        "pinned_use_background_threads",
        "pinned_reserve_segment_size_mb",
        "pinned_free_catch_all",
        "graph_capture_record_stream_reuse",
        "throw_on_cudamalloc_oom",
    }
)
_SIMULATED_KEYS = frozenset(
    {
        "large_segment_size_mb",
        "max_split_size_mb",
        "max_non_split_rounding_mb",
        "roundup_power2_divisions",
        "expandable_segments",
        "garbage_collection_threshold",
        "per_process_memory_fraction",
        "backend",
    }
)
VALID_KEYS = tuple(sorted(_SIMULATED_KEYS | _IGNORED_KEYS))


@dataclass(frozen=True)
class AllocatorConfig:
    """The caching-allocator settings the simulator honours (defaults = no PYTORCH_CUDA_ALLOC_CONF)."""

    max_split_size: int | None = None  # bytes; None = unlimited (every block may be split)
    max_non_split_rounding: int = DEFAULT_LARGE_SEGMENT
    roundup_power2_divisions: tuple[int, ...] = (0,) * NUM_ROUNDUP_INTERVALS
    expandable_segments: bool = False
    large_segment_size: int = DEFAULT_LARGE_SEGMENT
    garbage_collection_threshold: float = 0.0  # parsed; not simulated (needs a memory fraction)
    per_process_memory_fraction: float = 1.0  # scales the capacity given to the simulator

    def replace(self, **changes: Any) -> AllocatorConfig:
        return dataclasses.replace(self, **changes)

    def divisions_for(self, size: int) -> int:
        """roundup_power2_divisions(size): the divisions of the power-of-two interval holding size."""
        index = size.bit_length() - 1 - 20
        if index < 0:
            index = 0
        elif index >= NUM_ROUNDUP_INTERVALS:
            index = NUM_ROUNDUP_INTERVALS - 1
        return self.roundup_power2_divisions[index]

    def to_conf(self) -> str:
        """The PYTORCH_CUDA_ALLOC_CONF string that produces these settings ("" for the defaults)."""
        parts = []
        if self.large_segment_size != DEFAULT_LARGE_SEGMENT:
            parts.append(f"large_segment_size_mb:{self.large_segment_size // MB}")
        if self.max_split_size is not None:
            parts.append(f"max_split_size_mb:{self.max_split_size // MB}")
        if self.max_non_split_rounding != self.large_segment_size:
            parts.append(f"max_non_split_rounding_mb:{self.max_non_split_rounding // MB}")
        divs = self.roundup_power2_divisions
        if any(divs):
            if len(set(divs)) == 1:
                parts.append(f"roundup_power2_divisions:{divs[0]}")
            else:
                parts.append("roundup_power2_divisions:[" + ",".join(_roundup_items(divs)) + "]")
        if self.garbage_collection_threshold:
            parts.append(f"garbage_collection_threshold:{self.garbage_collection_threshold:g}")
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        if self.per_process_memory_fraction != 1.0:
            parts.append(f"per_process_memory_fraction:{self.per_process_memory_fraction:g}")
        return ",".join(parts)


def _roundup_items(divs: tuple[int, ...]) -> list[str]:
    """List entries reproducing `divs`: the first entry also fills the intervals below it and '>'
    fills those after the last entry; intervals in between must be listed one by one."""
    runs: list[list[int]] = []  # [start, end, value]
    for i, d in enumerate(divs):
        if runs and runs[-1][2] == d:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, d])
    items = []
    for n, (start, end, value) in enumerate(runs):
        if n == 0:
            items.append(f"{1 << (end - 1)}:{value}")
        elif n == len(runs) - 1:
            items.append(f"{1 << start}:{value}")
            if end - start > 1:
                items.append(f">:{value}")
        else:
            items.extend(f"{1 << i}:{value}" for i in range(start, end))
    return items


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    buf: list[str] = []
    for ch in text:
        if ch in ",:[]":
            if buf:
                tokens.append("".join(buf))
                buf = []
            tokens.append(ch)
        elif not ch.isspace():
            buf.append(ch)
    if buf:
        tokens.append("".join(buf))
    return tokens


class _Tokens:
    def __init__(self, text: str):
        self.text = text
        self.items = _tokenize(text)

    def error(self, why: str) -> MemprofUserError:
        return MemprofUserError(f"invalid PYTORCH_CUDA_ALLOC_CONF {self.text!r}: {why}")

    def at(self, i: int, what: str) -> str:
        if i >= len(self.items):
            raise self.error(f"expected {what} at the end")
        return self.items[i]

    def expect(self, i: int, token: str) -> None:
        got = self.at(i, repr(token))
        if got != token:
            raise self.error(f"expected {token!r} but found {got!r}")

    def integer(self, i: int, key: str) -> int:
        token = self.at(i, f"a value for {key}")
        if not token.isdigit():
            raise self.error(f"{key} needs a whole number, got {token!r}")
        return int(token)

    def boolean(self, i: int, key: str) -> bool:
        token = self.at(i, f"a value for {key}")
        if token not in ("True", "False"):
            raise self.error(f"{key} must be True or False (PyTorch rejects {token!r})")
        return token == "True"

    def skip_value(self, i: int) -> int:
        """Index of the last token of the value that follows key i (a single token or a [...] list)."""
        self.expect(i + 1, ":")
        i += 2
        if self.at(i, "a value") != "[":
            return i
        while i < len(self.items) and self.items[i] != "]":
            i += 1
        if i >= len(self.items):
            raise self.error("missing closing ']'")
        return i


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _parse_roundup(tok: _Tokens, i: int) -> tuple[int, tuple[int, ...]]:
    key = "roundup_power2_divisions"
    tok.expect(i + 1, ":")
    i += 2
    divs = [0] * NUM_ROUNDUP_INTERVALS
    if tok.at(i, f"a value for {key}") != "[":
        value = tok.integer(i, key)
        if not _is_power_of_two(value):
            raise tok.error(f"{key} must be a power of two, got {value}")
        return i, (value,) * NUM_ROUNDUP_INTERVALS
    first = True
    last_index = 0
    i += 1
    while tok.at(i, "']'") != "]":
        boundary = tok.items[i]
        tok.expect(i + 1, ":")
        value = tok.integer(i + 2, key)
        if value != 0 and not _is_power_of_two(value):
            raise tok.error(f"{key} divisions must be a power of two or 0, got {value}")
        if boundary == ">":
            for j in range(last_index + 1, NUM_ROUNDUP_INTERVALS):
                divs[j] = value
        else:
            if not boundary.isdigit() or not _is_power_of_two(int(boundary)):
                raise tok.error(f"{key} interval starts must be powers of two (MB) or '>', got {boundary!r}")
            index = min(int(boundary).bit_length() - 1, NUM_ROUNDUP_INTERVALS - 1)
            if first:
                for j in range(index):
                    divs[j] = value
                first = False
            divs[index] = value
            last_index = index
        i += 3
        if tok.at(i, "']'") == ",":
            i += 1
    return i, tuple(divs)


class _Fields(TypedDict, total=False):
    """The AllocatorConfig fields a PYTORCH_CUDA_ALLOC_CONF string sets."""

    max_split_size: int | None
    max_non_split_rounding: int
    roundup_power2_divisions: tuple[int, ...]
    expandable_segments: bool
    large_segment_size: int
    garbage_collection_threshold: float
    per_process_memory_fraction: float


def parse_alloc_conf(text: str | None) -> AllocatorConfig:
    """AllocatorConfig for a PYTORCH_CUDA_ALLOC_CONF string ("" or None: the defaults).

    Raises MemprofUserError for anything PyTorch would reject, and for backend:cudaMallocAsync,
    which replaces the caching allocator this module simulates.
    """
    config = AllocatorConfig()
    if not text or not text.strip():
        return config
    tok = _Tokens(text)
    items = tok.items
    # pass 1: large_segment_size_mb first, as c10 does (the other sizes are checked against it)
    large = DEFAULT_LARGE_SEGMENT
    for i, token in enumerate(items):
        if token == "large_segment_size_mb" and (i == 0 or items[i - 1] == ","):
            tok.expect(i + 1, ":")
            value = tok.integer(i + 2, token)
            if value <= 10:
                raise tok.error("large_segment_size_mb must be > 10")
            large = value * MB
    fields: _Fields = {"large_segment_size": large, "max_non_split_rounding": large}
    i = 0
    while i < len(items):
        key = items[i]
        if key in (",", ":", "[", "]"):
            raise tok.error(f"unexpected {key!r}")
        if key == "large_segment_size_mb":
            i = tok.skip_value(i)
        elif key in ("max_split_size_mb", "max_non_split_rounding_mb"):
            tok.expect(i + 1, ":")
            value = tok.integer(i + 2, key)
            if value * MB < large:
                raise tok.error(f"{key} too small, must be >= {large // MB}")
            fields["max_split_size" if key == "max_split_size_mb" else "max_non_split_rounding"] = value * MB
            i += 2
        elif key == "roundup_power2_divisions":
            i, fields["roundup_power2_divisions"] = _parse_roundup(tok, i)
        elif key == "expandable_segments":
            tok.expect(i + 1, ":")
            fields["expandable_segments"] = tok.boolean(i + 2, key)
            i += 2
        elif key == "garbage_collection_threshold":
            tok.expect(i + 1, ":")
            threshold = _float(tok, i + 2, key)
            if not 0.0 < threshold < 1.0:
                raise tok.error("garbage_collection_threshold must be in (0.0, 1.0)")
            fields["garbage_collection_threshold"] = threshold
            i += 2
        elif key == "per_process_memory_fraction":
            tok.expect(i + 1, ":")
            fraction = _float(tok, i + 2, key)
            if not 0.0 <= fraction <= 1.0:
                raise tok.error("per_process_memory_fraction must be in [0.0, 1.0]")
            fields["per_process_memory_fraction"] = fraction
            i += 2
        elif key == "backend":
            tok.expect(i + 1, ":")
            backend = tok.at(i + 2, "a value for backend")
            if backend == "cudaMallocAsync":
                raise MemprofUserError(
                    "backend:cudaMallocAsync replaces the caching allocator; memprof simulates only the "
                    "native backend (use backend:native or drop the option)"
                )
            if backend != "native":
                raise tok.error(f"unknown backend {backend!r}; options are native and cudaMallocAsync")
            i += 2
        elif key in _IGNORED_KEYS:
            i = tok.skip_value(i)
        else:
            raise unknown_name("PYTORCH_CUDA_ALLOC_CONF option", key, VALID_KEYS)
        i += 1
        if i < len(items):
            tok.expect(i, ",")
            i += 1
    return config.replace(**fields)


def _float(tok: _Tokens, i: int, key: str) -> float:
    token = tok.at(i, f"a value for {key}")
    try:
        return float(token)
    except ValueError:
        raise tok.error(f"{key} needs a number, got {token!r}") from None


def merge_alloc_conf(base: str | None, override: str) -> str:
    """`base` with the options of `override` replacing those of the same name (both conf strings)."""

    def split(text: str | None) -> dict[str, str]:
        out: dict[str, str] = {}
        depth = 0
        start = 0
        text = text or ""
        for pos, ch in enumerate(text + ","):
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            elif ch == "," and depth == 0:
                item = text[start:pos].strip()
                if item:
                    out[item.split(":", 1)[0].strip()] = item
                start = pos + 1
        return out

    merged = split(base)
    merged.update(split(override))
    return ",".join(merged.values())
