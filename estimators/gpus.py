"""GPU presets: device memory as the driver reports it, with the source of every figure.

The data lives in `profiles/gpus.json` (fields documented in `profiles/gpus.md`); this module loads
it once, checks it, and resolves names. A name matches case-insensitively, with spaces and
underscores read as dashes, against the preset name, its aliases and the NVML device name
(`nvidia-smi --query-gpu=name`, `torch.cuda.get_device_name()`), so a profiler can look up the
card it runs on. A family name shared by several presets (`a100`, `v100`) is ambiguous unless an
entry claims it as an explicit alias (`h100` -> `h100-80gb`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import MemprofUserError, unknown_name

MIB = 2**20


@dataclass(frozen=True)
class GPUSpec:
    name: str  # preset name, lowercase: "h100-80gb"
    aliases: tuple[str, ...]  # other names that resolve here, NVML device names included
    memory_bytes: int  # total as NVML / nvidia-smi reports it (MiB figure * 2**20)
    memory_source: str  # where that figure was verified
    verified: bool  # memory_bytes confirmed by the cited source(s)
    torch_total_memory: int | None  # torch.cuda.get_device_properties().total_memory, one driver
    compute_capability: tuple[int, int]  # (major, minor): (9, 0) is sm_90
    architecture: str  # "Hopper"
    nominal_gb: int  # marketing size: 80 for an "80 GB" card
    notes: str  # variants by driver / ECC, caveats
    nvml_names: tuple[str, ...] = ()  # exact NVML device name strings
    family: str = ""  # shared by sizes of one card ("a100")
    torch_total_memory_source: str = ""  # where torch_total_memory was seen, or why it is None
    memory_bandwidth_gb_s: float | None = None  # datasheet memory bandwidth
    fp16_tensor_dense_tflops: float | None = None  # datasheet fp16 tensor-core peak, dense
    perf_source: str | None = None  # source of the two figures above

    @property
    def memory_mib(self) -> int:
        """The driver's figure in the unit nvidia-smi prints ("81559MiB")."""
        return self.memory_bytes // MIB

    @property
    def sm(self) -> str:
        """Compute capability as an arch tag: "sm_90"."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


_PREFIXES = ("nvidia-", "tesla-", "geforce-")


def _strip_vendor(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _spec(entry: dict[str, Any]) -> GPUSpec:
    mib, total = entry["memory_mib"], entry["memory_bytes"]
    if total != mib * MIB:
        raise ValueError(f"gpus.json: {entry['name']}: memory_bytes {total} != memory_mib {mib} * 2**20")
    extra = tuple(a for a in (*entry["aliases"], *entry["nvml_names"]) if a != entry["name"])
    return GPUSpec(
        name=entry["name"],
        aliases=extra,
        memory_bytes=total,
        memory_source=entry["memory_source"],
        verified=entry["verified"],
        torch_total_memory=entry["torch_total_memory"],
        compute_capability=tuple(entry["compute_capability"]),
        architecture=entry["architecture"],
        nominal_gb=entry["nominal_gb"],
        notes=entry["notes"],
        nvml_names=tuple(entry["nvml_names"]),
        family=entry["family"],
        torch_total_memory_source=entry["torch_total_memory_source"],
        memory_bandwidth_gb_s=entry["memory_bandwidth_gb_s"],
        fp16_tensor_dense_tflops=entry["fp16_tensor_dense_tflops"],
        perf_source=entry["perf_source"],
    )


def load_gpus(path: str | os.PathLike[str] | None = None) -> dict[str, GPUSpec]:
    """Read and check gpus.json (default: the copy shipped in memprof.profiles)."""
    if path is None:
        from memprof.profiles import data_path

        path = data_path("gpus.json")
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    specs: dict[str, GPUSpec] = {}
    for entry in entries:
        spec = _spec(entry)
        if spec.name != _key(spec.name) or spec.name in specs:
            raise ValueError(f"gpus.json: bad or duplicate preset name {spec.name!r}")
        specs[spec.name] = spec
    return specs


def _build_index(specs: dict[str, GPUSpec]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    index: dict[str, str] = {}
    for spec in specs.values():
        for key in {_key(spec.name), *(_key(a) for a in spec.aliases)}:
            other = index.setdefault(key, spec.name)
            if other != spec.name:
                raise ValueError(f"gpus.json: {key!r} names both {other} and {spec.name}")
    families: dict[str, list[str]] = {}
    for spec in specs.values():
        families.setdefault(_key(spec.family or spec.name), []).append(spec.name)
    ambiguous = {}
    for fam, members in families.items():
        if len(members) == 1:
            index.setdefault(fam, members[0])
        elif fam not in index:
            ambiguous[fam] = tuple(sorted(members))
    return index, ambiguous


GPUS: dict[str, GPUSpec] = load_gpus()
_INDEX, _AMBIGUOUS = _build_index(GPUS)


def gpu_names() -> list[str]:
    """Preset names, sorted."""
    return sorted(GPUS)


def get_gpu(name: str) -> GPUSpec:
    """The preset for a name, alias or NVML device name; a MemprofUserError if unknown or ambiguous."""
    key = _key(name)
    for candidate in (key, _strip_vendor(key)):
        if candidate in _INDEX:
            return GPUS[_INDEX[candidate]]
        if candidate in _AMBIGUOUS:
            choices = ", ".join(_AMBIGUOUS[candidate])
            raise MemprofUserError(f"ambiguous GPU {name!r}; say which: {choices}")
    raise unknown_name("GPU", name, GPUS)
