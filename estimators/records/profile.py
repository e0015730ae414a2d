"""`ProfileRecord`: what one profiled region measured, as plain, frozen, typed data.

This is the profile JSON (schema `memprof.profile/1`, docs/architecture.md "Profile") as a type:
`to_dict()` is that JSON, `from_dict()` reads it back and is the one check of its shape (the
profiler's `Profile.load`, the comparison and the allocator's profile replay all read through it),
and the two round-trip exactly. Pure Python: reading, saving and comparing a profile need no torch.

Keys of the JSON (sizes are integer bytes; None means "not measured here", never a guess):
    schema, memprof_version, mode ("attribution" | "stats"), device, complete
    settings      model, model_class, parameters, param_dtypes, optimizer, optimizer_class,
                  optimizer_defaults, input_shapes, autocast_dtype, forward_calls,
                  backward_calls, optimizer_steps; hf_config (the model's config.to_dict() or
                  None), attn_implementation, gradient_checkpointing, parameter_tensors
                  ([name, shape] of the trainable parameters); optimizers (when several);
                  output_kept (bool: the model output's largest tensor was alive when the first
                  backward after a step began), zero_grad ("set-to-none" | "zeros": whether the
                  trainable parameters already had gradients then); absent when not seen;
                  adapter (a peft LoRA model, memprof.profiler.adapters): type, base_model, ranks,
                  dropouts, targets (wrapped module names), quantize, double_quant, quantized,
                  unquantized_parameters; absent without one
    model_states  parameters, gradients, optimizer_states (largest seen in the region)
    optimizer_state_breakdown   bytes per state key ("exp_avg", "step", ...)
    peak          phase, allocated, reserved, device_total, by_category (the 7 categories),
                  detail (sub-buckets of `temporary`: inputs, buffers), note (stats mode: why
                  there is no attribution)
    phases        {phase: {calls, time_s, peak: {allocated, by_category}, created_bytes, cuda}}
                  created_bytes: bytes allocated in the phase by category at creation (all
                  devices; e.g. activations recomputed by checkpointing under backward)
    cuda, nvml    {"available": bool, "reason": str | None, ...figures}
    environment   torch, python, platform, device_name, driver, cuda_version
    timeline      (attribution mode; None otherwise) live bytes of `device` through the region, as
                  [{seq, phase, allocated, by_category (the 5 tensor categories)}] in order: a
                  sample at each phase change and every N allocations/frees (N doubling so that
                  at most ~1024 points are kept), with the exact overall and per-phase peaks
                  merged in; seq orders points among the allocation events
    duration_s    seconds the region lasted
    rank, world_size  (in a torch.distributed process group only) this process's rank and the
                  group's size; every byte of the profile is what this rank holds (a DTensor counts
                  its local shard)
    error         None, or {type, message, phase, module, live_by_category, ...}
    devices       (attribution mode only) {device: {peak_allocated, peak_phase, by_category}} for
                  every device tensors lived on; `peak` describes `device` only
    events, event_phases   (only in a file saved with events=True) the allocation timeline:
                  events[i] = ["alloc", storage_id, nbytes, device] | ["free", storage_id];
                  event_phases[i] = the phase current at that event (None before the first forward)

`settings`, `phases`, `cuda`, `nvml`, `environment` and `error` are free-form measurements, kept as
read-only mappings; what memprof computes on (model states, the peak by category, the settings'
model and parameter count, the timeline, the devices, the events) is typed, and the parts of
`settings` and `phases` that the comparison reads (dtypes, input shapes, parameter tensors, optimizer
class and defaults, call counts, each phase's peak) are checked for their type when read. Every
integer is a signed 64-bit one (MAX_INT): a bigger "byte count" is not a measurement. Keys a later version
adds at the top level are kept in `extra`, so a record reads and writes back unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

from ..errors import RecordError
from ..files import loads_json, read_input
from ..vocabulary import MODEL_STATE_CATEGORIES
from .estimate import ModelStates

__all__ = [
    "EVENT_KEYS",
    "PROFILE_SCHEMA",
    "REQUIRED_PARTS",
    "AllocEvent",
    "DevicePeak",
    "FreeEvent",
    "ProfileEvent",
    "ProfilePeak",
    "ProfilePoint",
    "ProfileRecord",
    "ProfileSettings",
    "check_profile_schema",
    "model_states_from_dict",
    "read_events",
    "read_profile",
]

PROFILE_SCHEMA = "memprof.profile/1"
REQUIRED_PARTS = ("settings", "model_states", "peak", "phases")
EVENT_KEYS = ("events", "event_phases")

JSON = Any  # a value json.dumps accepts
AllocEvent: TypeAlias = tuple[Literal["alloc"], int | str, int, str]  # ("alloc", storage id, bytes, device)
FreeEvent: TypeAlias = tuple[Literal["free"], int | str]  # ("free", storage id)
ProfileEvent: TypeAlias = AllocEvent | FreeEvent


def _unavailable() -> Mapping[str, JSON]:
    return {"available": False, "reason": None}


def _json_copy(value: JSON) -> JSON:
    return json.loads(json.dumps(value))


def _frozen_json(mapping: Mapping[str, JSON]) -> Mapping[str, JSON]:
    """A read-only, independent copy of a JSON object."""
    return MappingProxyType(_json_copy(dict(mapping)))


# -- reading JSON, with errors that name the field --------------------------------------------------

_KIND_NAMES: dict[type, str] = {
    int: "an integer (64-bit)",
    str: "a string",
    bool: "true or false",
    float: "a number",
}


# The largest byte count or integer a profile may hold: a signed 64-bit integer, what torch's
# counters, NumPy and pandas hold (a bigger one is not a measurement).
MAX_INT = (1 << 63) - 1


def _is(kind: type, value: Any) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and -MAX_INT <= value <= MAX_INT
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT <= value <= MAX_INT
    return isinstance(value, kind)


class _Fields:
    """Typed access to one JSON object of a profile; a wrong type raises RecordError naming the field."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def _wrong(self, key: str, expected: str, value: Any) -> RecordError:
        return RecordError(f"{self.where}: {key!r} must be {expected}, got {value!r}")

    def optional(self, kind: type, key: str) -> Any:
        value = self.data.get(key)
        if value is not None and not _is(kind, value):
            raise self._wrong(key, _KIND_NAMES[kind], value)
        return value

    def required(self, kind: type, key: str) -> Any:
        value = self.data.get(key)
        if value is None:
            raise RecordError(f"{self.where}: missing {key!r}")
        if not _is(kind, value):
            raise self._wrong(key, _KIND_NAMES[kind], value)
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key)
        if not isinstance(value, Mapping):
            raise self._wrong(key, "an object", value)
        return value

    def optional_mapping(self, key: str) -> Mapping[str, Any] | None:
        return None if self.data.get(key) is None else self.mapping(key)

    def int_map(self, key: str, nullable: bool = False) -> dict[str, int | None]:
        """An object of byte counts (None allowed when `nullable`); absent or null reads as empty."""
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self._wrong(key, "an object of byte counts", value)
        out: dict[str, int | None] = {}
        for name, n in value.items():
            if not (n is None and nullable) and not _is(int, n):
                raise RecordError(f"{self.where}: '{key}.{name}' must be an integer, got {n!r}")
            out[str(name)] = n
        return out


def _ints(values: Mapping[str, int | None]) -> dict[str, int]:
    """The non-nullable byte counts `_Fields.int_map` read (its check guarantees no None)."""
    return {k: v for k, v in values.items() if v is not None}


# -- the parts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileSettings:
    """What the profiler observed of the run (the JSON's `settings`): free-form, in the order recorded.

    `values` is the whole object, read-only; the fields memprof computes on are typed properties,
    checked when the record is read.
    """

    values: Mapping[str, JSON] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _frozen_json(self.values))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "profile: settings") -> ProfileSettings:
        fields = _Fields(data, where)
        for key in _SETTINGS_STRINGS:
            fields.optional(str, key)
        for key in _SETTINGS_COUNTS:
            fields.optional(int, key)
        fields.optional(bool, "gradient_checkpointing")
        fields.optional(bool, "output_kept")
        fields.optional(str, "zero_grad")
        for key in ("hf_config", "optimizer_defaults"):
            fields.optional_mapping(key)
        fields.int_map("param_dtypes")
        _check_list(data, "input_shapes", where, _is_shape_or_null, "a shape (a list of integers) or null")
        _check_list(data, "parameter_tensors", where, _is_named_shape, "a [name, shape] pair")
        _check_list(data, "optimizers", where, _is_optimizer_entry, "an optimizer object")
        _check_adapter(data.get("adapter"), where)
        return cls(data)

    @property
    def model(self) -> str | None:
        """The profiled model's class name (None: no model was seen)."""
        value = self.values.get("model")
        return value if isinstance(value, str) else None

    @property
    def parameters(self) -> int | None:
        """All parameters of the model, trainable or not."""
        value = self.values.get("parameters")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def get(self, key: str, default: JSON = None) -> JSON:
        return self.values.get(key, default)

    def to_dict(self) -> dict[str, JSON]:
        out: dict[str, JSON] = _json_copy(dict(self.values))
        return out


# the settings memprof reads (memprof.comparison.observed), by type; others are kept unchecked
_SETTINGS_STRINGS = ("model", "model_class", "optimizer", "optimizer_class", "autocast_dtype", "attn_implementation")
_SETTINGS_COUNTS = (
    "parameters",
    "trainable_parameters",
    "forward_calls",
    "backward_calls",
    "optimizer_steps",
    "warmup_steps",
)


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(_is(int, d) and d >= 0 for d in value)


def _is_shape_or_null(value: Any) -> bool:
    return value is None or _is_shape(value)


def _is_named_shape(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and _is_shape(value[1])


def _is_optimizer_entry(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and all(value.get(k) is None or isinstance(value[k], str) for k in ("optimizer", "optimizer_class"))
        and (value.get("optimizer_defaults") is None or isinstance(value["optimizer_defaults"], Mapping))
    )


def _check_adapter(value: Any, where: str) -> None:
    """RecordError unless `settings.adapter` (memprof.profiler.adapters) is absent, null or well-formed."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise RecordError(f"{where}: 'adapter' must be an object, got {str(value)[:60]}")
    fields = _Fields(value, f"{where}: adapter")
    for key in ("type", "base_model", "quantize"):
        fields.optional(str, key)
    fields.optional(bool, "double_quant")
    for key in ("quantized", "unquantized_parameters"):
        fields.optional(int, key)
    checks: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
        ("ranks", lambda v: _is(int, v) and v > 0, "a positive integer"),
        ("dropouts", lambda v: _is(float, v), "a number"),
        ("targets", lambda v: isinstance(v, str), "a module name"),
    )
    for key, check, item in checks:
        _check_list(value, key, f"{where}: adapter", check, item)


def _check_list(data: Mapping[str, Any], key: str, where: str, check: Callable[[Any], bool], item: str) -> None:
    """RecordError unless data[key] is absent, null or a list of items passing `check`."""
    value = data.get(key)
    if value is None:
        return
    if not isinstance(value, list):
        raise RecordError(f"{where}: {key!r} must be a list, got {str(value)[:60]}")
    for i, entry in enumerate(value):
        if not check(entry):
            raise RecordError(f"{where}: '{key}[{i}]' must be {item}, got {str(entry)[:60]}")


def model_states_from_dict(data: Mapping[str, Any], where: str = "profile: model_states") -> ModelStates:
    """The `model_states` object (bytes of parameters, gradients, optimizer states; None: not measured)."""
    fields = _Fields(data, where)
    return ModelStates(**{c: fields.optional(int, c) for c in MODEL_STATE_CATEGORIES})


@dataclass(frozen=True)
class ProfilePeak:
    """The measured peak of `device`: its phase, the totals and what was live by category."""

    phase: str | None = None
    allocated: int | None = None  # the peak of live tensor bytes; on CUDA max_memory_allocated()
    reserved: int | None = None  # max_memory_reserved() (CUDA)
    device_total: int | None = None  # the 7 categories summed, when all were measured (CUDA)
    by_category: Mapping[str, int | None] = field(default_factory=dict)
    detail: Mapping[str, int] = field(default_factory=dict)  # sub-buckets: inputs, buffers, ...
    note: str | None = None  # stats mode: why no category is attributed

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_category", MappingProxyType(dict(self.by_category)))
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "profile: peak") -> ProfilePeak:
        fields = _Fields(data, where)
        return cls(
            phase=fields.optional(str, "phase"),
            allocated=fields.optional(int, "allocated"),
            reserved=fields.optional(int, "reserved"),
            device_total=fields.optional(int, "device_total"),
            by_category=fields.int_map("by_category", nullable=True),
            detail=_ints(fields.int_map("detail")),
            note=fields.optional(str, "note"),
        )

    def to_dict(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {
            "phase": self.phase,
            "allocated": self.allocated,
            "reserved": self.reserved,
            "device_total": self.device_total,
            "by_category": dict(self.by_category),
            "detail": dict(self.detail),
        }
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class ProfilePoint:
    """Live bytes of the profiled device at one moment; `seq` orders it among the allocation events."""

    seq: int
    phase: str | None
    allocated: int
    by_category: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_category", MappingProxyType(dict(self.by_category)))

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ProfilePoint:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where} must be an object, got {data!r}")
        fields = _Fields(data, where)
        return cls(
            seq=fields.required(int, "seq"),
            phase=fields.optional(str, "phase"),
            allocated=fields.required(int, "allocated"),
            by_category=_ints(fields.int_map("by_category")),
        )

    def to_dict(self) -> dict[str, JSON]:
        return {
            "seq": self.seq,
            "phase": self.phase,
            "allocated": self.allocated,
            "by_category": dict(self.by_category),
        }


@dataclass(frozen=True)
class DevicePeak:
    """The peak of one device tensors lived on (attribution mode)."""

    peak_allocated: int
    peak_phase: str | None
    by_category: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_category", MappingProxyType(dict(self.by_category)))

    @classmethod
    def from_dict(cls, data: Any, where: str) -> DevicePeak:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where} must be an object, got {data!r}")
        fields = _Fields(data, where)
        return cls(
            peak_allocated=fields.required(int, "peak_allocated"),
            peak_phase=fields.optional(str, "peak_phase"),
            by_category=_ints(fields.int_map("by_category")),
        )

    def to_dict(self) -> dict[str, JSON]:
        return {
            "peak_allocated": self.peak_allocated,
            "peak_phase": self.peak_phase,
            "by_category": dict(self.by_category),
        }


# -- the record --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRecord:
    """What one profiled region measured (docs/architecture.md, "Profile"); see the module docstring."""

    settings: ProfileSettings
    model_states: ModelStates
    peak: ProfilePeak
    phases: Mapping[str, JSON]  # {phase: {calls, time_s, peak, created_bytes, cuda} | None}
    memprof_version: str | None = None
    mode: str | None = None
    device: str | None = None
    complete: bool = False
    optimizer_state_breakdown: Mapping[str, int] = field(default_factory=dict)
    cuda: Mapping[str, JSON] = field(default_factory=_unavailable)
    nvml: Mapping[str, JSON] = field(default_factory=_unavailable)
    environment: Mapping[str, JSON] = field(default_factory=dict)
    timeline: tuple[ProfilePoint, ...] | None = None
    duration_s: float | None = None
    error: Mapping[str, JSON] | None = None
    devices: Mapping[str, DevicePeak] | None = None  # absent in stats mode
    extra: Mapping[str, JSON] = field(default_factory=dict)  # top-level keys this version does not know
    events: tuple[ProfileEvent, ...] | None = None  # only in a file saved with events=True
    event_phases: tuple[str | None, ...] | None = None
    rank: int | None = None  # in a process group: this process's rank (null: not distributed)
    world_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("phases", "cuda", "nvml", "environment", "extra"):
            object.__setattr__(self, name, _frozen_json(getattr(self, name)))
        if self.error is not None:
            object.__setattr__(self, "error", _frozen_json(self.error))
        object.__setattr__(self, "optimizer_state_breakdown", MappingProxyType(dict(self.optimizer_state_breakdown)))
        if self.devices is not None:
            object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))
        if self.timeline is not None:
            object.__setattr__(self, "timeline", tuple(self.timeline))

    # -- derived ---------------------------------------------------------------------------------
    @property
    def model(self) -> str | None:
        """The profiled model's class name (`settings.model`)."""
        return self.settings.model

    @property
    def parameters(self) -> int | None:
        """The profiled model's parameter count (`settings.parameters`)."""
        return self.settings.parameters

    def without_events(self) -> ProfileRecord:
        """The same record without its allocation timeline (what `Profile.to_dict()` holds)."""
        return replace(self, events=None, event_phases=None)

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, JSON]:
        """The profile JSON; a fresh, independent dict on each call, keys in the profiler's order."""
        out: dict[str, JSON] = {
            "schema": PROFILE_SCHEMA,
            "memprof_version": self.memprof_version,
            "mode": self.mode,
            "device": self.device,
            "complete": self.complete,
            "settings": self.settings.to_dict(),
            "model_states": self.model_states.to_dict(),
            "optimizer_state_breakdown": dict(self.optimizer_state_breakdown),
            "peak": self.peak.to_dict(),
            "phases": _json_copy(dict(self.phases)),
            "cuda": _json_copy(dict(self.cuda)),
            "nvml": _json_copy(dict(self.nvml)),
            "environment": _json_copy(dict(self.environment)),
            "timeline": None if self.timeline is None else [p.to_dict() for p in self.timeline],
            "duration_s": self.duration_s,
            "error": None if self.error is None else _json_copy(dict(self.error)),
        }
        if self.devices is not None:
            out["devices"] = {name: d.to_dict() for name, d in self.devices.items()}
        if self.rank is not None:
            out["rank"], out["world_size"] = self.rank, self.world_size
        out.update(_json_copy(dict(self.extra)))
        if self.events is not None:
            out["events"] = [list(e) for e in self.events]
        if self.event_phases is not None:
            out["event_phases"] = list(self.event_phases)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "profile") -> ProfileRecord:
        """Read a profile JSON (as `to_dict()` writes it); anything else raises RecordError.

        Checked in this order: the schema tag, the allocation events (when present), the parts every
        profile has (settings, model_states, peak, phases), then the type of each field. `where`
        names the profile in the messages (e.g. the file's path).
        """
        data = check_profile_schema(data, where=where)
        events, event_phases = read_events(data.get("events"), data.get("event_phases"), where=where)
        missing = [k for k in REQUIRED_PARTS if not isinstance(data.get(k), Mapping)]
        if missing:
            raise RecordError(f"{where} is a corrupt memprof profile: missing {', '.join(missing)}")
        fields = _Fields(data, where)
        cuda, nvml = fields.optional_mapping("cuda"), fields.optional_mapping("nvml")
        timeline = data.get("timeline")
        if timeline is not None and not isinstance(timeline, list):
            raise RecordError(f"{where}: 'timeline' must be a list, got {type(timeline).__name__}")
        devices = fields.optional_mapping("devices")
        return cls(
            settings=ProfileSettings.from_dict(data["settings"], f"{where}: settings"),
            model_states=model_states_from_dict(data["model_states"], f"{where}: model_states"),
            peak=ProfilePeak.from_dict(data["peak"], f"{where}: peak"),
            phases=_phases(data["phases"], f"{where}: phases"),
            memprof_version=fields.optional(str, "memprof_version"),
            mode=fields.optional(str, "mode"),
            device=fields.optional(str, "device"),
            complete=bool(fields.optional(bool, "complete")),
            optimizer_state_breakdown=_ints(fields.int_map("optimizer_state_breakdown")),
            cuda=_unavailable() if cuda is None else cuda,
            nvml=_unavailable() if nvml is None else nvml,
            environment=fields.optional_mapping("environment") or {},
            timeline=None
            if timeline is None
            else tuple(ProfilePoint.from_dict(p, f"{where}: timeline[{i}]") for i, p in enumerate(timeline)),
            duration_s=fields.optional(float, "duration_s"),
            rank=fields.optional(int, "rank"),
            world_size=fields.optional(int, "world_size"),
            error=fields.optional_mapping("error"),
            devices=None
            if devices is None
            else {str(name): DevicePeak.from_dict(d, f"{where}: devices[{name!r}]") for name, d in devices.items()},
            extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
            events=events,
            event_phases=event_phases,
        )


_KNOWN_KEYS = frozenset(
    (
        "schema",
        *(f for f in ProfileRecord.__dataclass_fields__ if f != "extra"),
    )
)


def _phases(data: Mapping[str, Any], where: str) -> Mapping[str, JSON]:
    """The `phases` object: {phase: {calls, time_s, peak: {allocated, by_category}, created_bytes,
    cuda} | None}, each part of its type when present."""
    for phase, info in data.items():
        if info is None:
            continue
        if not isinstance(info, Mapping):
            raise RecordError(f"{where}: {phase!r} must be an object or null, got {str(info)[:60]}")
        fields = _Fields(info, f"{where}: {phase}")
        fields.optional(int, "calls")
        fields.optional(float, "time_s")
        fields.int_map("created_bytes", nullable=True)
        fields.optional_mapping("cuda")
        peak = fields.optional_mapping("peak")
        if peak is not None:
            ProfilePeak.from_dict(peak, f"{where}: {phase}: peak")
    return data


# -- the stages of the check (ProfileRecord.from_dict runs them in order) ------------------------------


def check_profile_schema(data: Any, *, where: str = "profile") -> Mapping[str, Any]:
    """`data` if it is a JSON object tagged `memprof.profile/1`, else RecordError."""
    if not isinstance(data, Mapping) or data.get("schema") != PROFILE_SCHEMA:
        found = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
        raise RecordError(f"{where} is not a memprof profile: schema is {found!r}, expected {PROFILE_SCHEMA!r}")
    return data


def read_events(
    events: Any, event_phases: Any = None, *, where: str = "profile"
) -> tuple[tuple[ProfileEvent, ...] | None, tuple[str | None, ...] | None]:
    """The `events` and `event_phases` of a profile JSON as tuples (None: not saved), checked."""
    if events is None:
        if event_phases is not None:
            raise RecordError(f"{where} is a corrupt memprof profile: 'event_phases' without 'events'")
        return None, None
    if not isinstance(events, list):
        raise RecordError(f"{where} is a corrupt memprof profile: 'events' is not a list")
    read = tuple(_event(e, i, where) for i, e in enumerate(events))
    if event_phases is None:
        return read, None
    if (
        not isinstance(event_phases, list)
        or len(event_phases) != len(read)
        or not all(p is None or isinstance(p, str) for p in event_phases)
    ):
        raise RecordError(
            f"{where} is a corrupt memprof profile: 'event_phases' must list one phase name (or null) per event"
        )
    return read, tuple(event_phases)


def _event(entry: Any, index: int, where: str) -> ProfileEvent:
    if isinstance(entry, (list, tuple)) and entry:
        kind = entry[0]
        if (
            kind == "alloc"
            and len(entry) == 4
            and _is_count(entry[2])
            and _is_id(entry[1])
            and isinstance(entry[3], str)
        ):
            return ("alloc", entry[1], entry[2], entry[3])
        if kind == "free" and len(entry) == 2 and _is_id(entry[1]):
            return ("free", entry[1])
    raise RecordError(
        f"{where} is a corrupt memprof profile: event {index} is {str(entry)[:60]}, "
        f'expected ["alloc", id, bytes, device] or ["free", id]'
    )


def _is_count(value: Any) -> bool:
    return _is(int, value) and value >= 0


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


# -- files ---------------------------------------------------------------------------------------------


def read_profile(path: str | os.PathLike[str]) -> ProfileRecord:
    """Read a saved profile (`Profile.save` writes one); anything that is not one raises RecordError."""
    path = Path(path)
    try:
        data = loads_json(read_input(path))
    except FileNotFoundError:
        raise RecordError(f"profile file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise RecordError(f"{str(path)!r} is a directory, not a memprof profile") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{str(path)!r} is not a memprof profile (not readable JSON: {exc})") from None
    return ProfileRecord.from_dict(data, where=repr(str(path)))
