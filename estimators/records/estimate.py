"""`EstimateRecord`: one predicted training configuration as plain, frozen, typed data.

This is the estimate JSON contract of docs/architecture.md ("`memprof estimate --format json`") as a
type: `to_dict()` is that JSON, `from_dict()` reads it back (checking its shape), and the two
round-trip exactly. The analytic estimator (`memprof.estimators.estimation.estimate`) builds one, a
traced estimate builds the same record, and everything downstream — rendering, fit verdicts,
comparison with a profile, reports — reads only this record.

Sizes are integer bytes. None means "not predicted" (absent), never 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..errors import RecordError
from ..vocabulary import MODEL_STATE_CATEGORIES, TENSOR_CATEGORIES

__all__ = [
    "ContextFigure",
    "EstimateLabels",
    "EstimateRecord",
    "EstimateSettings",
    "GpuVerdict",
    "ModelStates",
    "Peak",
    "TimelinePoint",
]

JSON = Any  # a value json.dumps accepts


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _json_copy(value: JSON) -> JSON:
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class EstimateSettings:
    """The knobs the estimate ran with, as the JSON's `settings` (attention: what actually runs)."""

    optimizer: str | None
    precision: str | None
    batch_size: int | None
    seq_len: int | None
    checkpointing: str | None = "none"
    attention: str | None = None
    device: str | None = "cuda"
    gpus: int = 1
    zero: int = 0
    offload: str = "none"
    grad_accumulation: int = 1
    attention_kernel: str | None = None
    optimizer_impl: str | None = None
    alloc_conf: str | None = None
    population: int | None = None  # population optimizers (ga, pso): members; in the JSON only when set
    # the training loop's own choices (docs/architecture.md): the loop keeps the model output through
    # backward (`out = model(**batch)`) or only the loss; zero_grad frees gradients or zeroes them
    keep_output: bool = True
    zero_grad: str = "set-to-none"
    head: str | None = None  # the task head estimated ("causal-lm", "seq-cls", ...)
    # LoRA (peft) on a frozen base model, optionally quantized (bitsandbytes); in the JSON only with LoRA:
    # the rank, the targets as asked ("q_proj,v_proj", "all-linear"; "default": peft's default for
    # the model type), how many modules they wrap, the dropout, the base weights' storage
    lora_rank: int | None = None
    lora_targets: str | None = None
    lora_modules: int | None = None
    lora_dropout: float | None = None
    quantize: str | None = None  # "int8" | "nf4" | "fp4"; null: unquantized
    double_quant: bool | None = None
    # the CUDA stack the context was estimated for (null on the CPU): the CUDA runtime given
    # ("12.4"; null: any) and the module loading that results ("lazy" | "eager")
    cuda_version: str | None = None
    cuda_module_loading: str | None = None
    # the parallel engine ("ddp", "fsdp", "deepspeed"; null: one device) and FSDP2's wrapping unit
    # ("block" | "model", only with engine fsdp): in the JSON only when several ranks run an engine
    engine: str | None = None
    fsdp_unit: str | None = None
    # an encoder-decoder's (t5) decoder length, seq_len unless told; in the JSON only for those models
    target_len: int | None = None
    # pipeline parallelism (parallel.pipeline), in the JSON only with a pipeline: the stages, the
    # schedule ("gpipe" | "1f1b" | "interleaved-1f1b"), micro-batches per step, virtual stages per rank
    # and the stage whose figures the record gives (the one asked for, or the stage with the largest peak)
    pp: int | None = None
    pp_schedule: str | None = None
    microbatches: int | None = None
    virtual_stages: int | None = None
    pp_stage: int | None = None
    # tensor-parallel ranks (parallel.tensor; the record is one rank's), in the JSON only above 1
    tp: int | None = None


@dataclass(frozen=True)
class ModelStates:
    """Parameters, gradients and optimizer states in bytes (None: not predicted)."""

    parameters: int | None
    gradients: int | None
    optimizer_states: int | None

    @property
    def total(self) -> int | None:
        values = (self.parameters, self.gradients, self.optimizer_states)
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    def to_dict(self) -> dict[str, int | None]:
        return {c: getattr(self, c) for c in MODEL_STATE_CATEGORIES}


@dataclass(frozen=True)
class Peak:
    """The largest moment of the step: its phase, the three totals and what is live by category."""

    phase: str | None = None
    allocated: int | None = None  # comparable to torch.cuda.max_memory_allocated()
    reserved: int | None = None  # max_memory_reserved()
    device_total: int | None = None  # what NVML / nvidia-smi shows for the process
    by_category: Mapping[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_category", _frozen(self.by_category))

    @classmethod
    def unknown(cls) -> Peak:
        """A peak that was not predicted: no phase, no totals, no categories."""
        return cls()

    @property
    def tensor_bytes(self) -> int | None:
        """Live tensor bytes at the peak (the five tensor categories); None while one is absent."""
        values = [self.by_category.get(c) for c in TENSOR_CATEGORIES]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)


@dataclass(frozen=True)
class ContextFigure:
    """The CUDA context estimate: bytes, its plausible range and where the figure comes from."""

    bytes: int
    low: int
    high: int
    basis: str


@dataclass(frozen=True)
class TimelinePoint:
    """Live bytes by category at one moment of the simulated step."""

    phase: str
    label: str
    by_category: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_category", _frozen(self.by_category))


@dataclass(frozen=True)
class GpuVerdict:
    """The named GPU, what a process can use of it, and whether the peak fits (None: unknown)."""

    name: str
    memory: int
    usable: int
    fits: bool | None


@dataclass(frozen=True)
class EstimateLabels:
    """What a person reading the estimate needs to know about its inputs (rendered, not computed on)."""

    optimizer_implementation: str | None = None  # "torch.optim.AdamW (torch 2.13.0)"
    optimizer_family: str | None = None  # "first-order adaptive"
    precision_description: str | None = None
    param_dtype: str | None = None
    grad_dtype: str | None = None


@dataclass(frozen=True)
class EstimateRecord:
    """One predicted training configuration, per device (docs/architecture.md, the estimate JSON)."""

    model: str | None
    parameters: int | None
    settings: EstimateSettings
    model_states: ModelStates  # what one device holds
    model_states_unsharded: ModelStates | None = None  # the whole model, before sharding / offload
    optimizer_state_breakdown: Mapping[str, int] = field(default_factory=dict)  # whole model, by state key
    cpu_offload: int | None = None  # host RAM one rank needs for offloaded states
    # host RAM one node needs: cpu_offload x the ranks on a node (min(gpus, gpus_per_node)); in the
    # JSON only when something is offloaded
    cpu_offload_per_node: int | None = None
    activations_saved: int | None = None  # bytes autograd holds when the forward ends
    temporary_breakdown: Mapping[str, int | None] = field(default_factory=dict)
    # the largest tensors of the temporary category live at the peak moment, largest first
    temporary_at_peak: Mapping[str, int] = field(default_factory=dict)
    peak: Peak = field(default_factory=Peak)
    cuda_context: ContextFigure | None = None
    allocator: Mapping[str, JSON] | None = None  # the caching-allocator replay's summary (CUDA)
    timeline: tuple[TimelinePoint, ...] | None = None
    warnings: tuple[str, ...] = ()
    gpu: GpuVerdict | None = None
    labels: EstimateLabels = field(default_factory=EstimateLabels)

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer_state_breakdown", _frozen(self.optimizer_state_breakdown))
        object.__setattr__(self, "temporary_breakdown", _frozen(self.temporary_breakdown))
        object.__setattr__(self, "temporary_at_peak", _frozen(self.temporary_at_peak))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        if self.allocator is not None:
            object.__setattr__(self, "allocator", _frozen(_json_copy(dict(self.allocator))))

    # -- derived ---------------------------------------------------------------------------------
    @property
    def fits(self) -> bool | None:
        return None if self.gpu is None else self.gpu.fits

    @property
    def peak_allocated(self) -> int | None:
        """Comparable to torch.cuda.max_memory_allocated() (on the CPU: the peak of live tensor bytes)."""
        return self.peak.allocated

    @property
    def peak_reserved(self) -> int | None:
        """Comparable to torch.cuda.max_memory_reserved(): tensors plus what the allocator caches."""
        return self.peak.reserved

    @property
    def device_total(self) -> int | None:
        """Comparable to what NVML / nvidia-smi shows for the process: reserved plus the CUDA context."""
        return self.peak.device_total

    def without_peak(self) -> EstimateRecord:
        """The same record with the peak (and what only the peak explains) left unpredicted."""
        return replace(self, peak=Peak.unknown(), timeline=None, allocator=None)

    def without_optimizer(self) -> EstimateRecord:
        """The same record for an unknown optimizer: its states and the peak are not predicted."""
        states = replace(self.model_states, optimizer_states=None)
        return replace(
            self.without_peak(),
            model_states=states,
            optimizer_state_breakdown={},
            settings=replace(self.settings, optimizer=None),
        )

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, JSON]:
        """The estimate JSON (docs/architecture.md); a fresh, independent dict on each call."""
        s = self.settings
        return {
            "model": self.model,
            "parameters": self.parameters,
            "settings": {
                "optimizer": s.optimizer,
                "precision": s.precision,
                "batch_size": s.batch_size,
                "seq_len": s.seq_len,
                "checkpointing": s.checkpointing,
                "attention": s.attention,
                "device": s.device,
                "gpus": s.gpus,
                "zero": s.zero,
                "offload": s.offload,
                "grad_accumulation": s.grad_accumulation,
                "attention_kernel": s.attention_kernel,
                "optimizer_impl": s.optimizer_impl,
                "alloc_conf": s.alloc_conf,
                **({} if s.population is None else {"population": s.population}),
                "keep_output": s.keep_output,
                "zero_grad": s.zero_grad,
                **({} if s.head is None else {"head": s.head}),
                **(
                    {}
                    if s.lora_rank is None
                    else {
                        "lora_rank": s.lora_rank,
                        "lora_targets": s.lora_targets,
                        "lora_modules": s.lora_modules,
                        "lora_dropout": s.lora_dropout,
                        "quantize": s.quantize,
                        "double_quant": s.double_quant,
                    }
                ),
                "cuda_version": s.cuda_version,
                "cuda_module_loading": s.cuda_module_loading,
                **({} if s.engine is None else {"engine": s.engine}),
                **({} if s.fsdp_unit is None else {"fsdp_unit": s.fsdp_unit}),
                **({} if s.target_len is None else {"target_len": s.target_len}),
                **{k: getattr(s, k) for k in _PARALLEL_SETTINGS if getattr(s, k) is not None},
            },
            "model_states": self.model_states.to_dict(),
            "model_states_unsharded": None
            if self.model_states_unsharded is None
            else self.model_states_unsharded.to_dict(),
            "optimizer_state_breakdown": dict(self.optimizer_state_breakdown),
            "cpu_offload": self.cpu_offload,
            **({} if self.cpu_offload_per_node is None else {"cpu_offload_per_node": self.cpu_offload_per_node}),
            "activations_saved": self.activations_saved,
            "temporary_breakdown": dict(self.temporary_breakdown),
            "temporary_at_peak": dict(self.temporary_at_peak),
            "peak": {
                "phase": self.peak.phase,
                "allocated": self.peak.allocated,
                "reserved": self.peak.reserved,
                "device_total": self.peak.device_total,
                "by_category": dict(self.peak.by_category),
            },
            "cuda_context": None
            if self.cuda_context is None
            else {
                "bytes": self.cuda_context.bytes,
                "low": self.cuda_context.low,
                "high": self.cuda_context.high,
                "basis": self.cuda_context.basis,
            },
            "allocator": None if self.allocator is None else _json_copy(dict(self.allocator)),
            "timeline": None
            if self.timeline is None
            else [{"phase": p.phase, "label": p.label, "by_category": dict(p.by_category)} for p in self.timeline],
            "warnings": list(self.warnings),
            "gpu": None
            if self.gpu is None
            else {"name": self.gpu.name, "memory": self.gpu.memory, "usable": self.gpu.usable, "fits": self.gpu.fits},
            "labels": {
                "optimizer_implementation": self.labels.optimizer_implementation,
                "optimizer_family": self.labels.optimizer_family,
                "precision_description": self.labels.precision_description,
                "param_dtype": self.labels.param_dtype,
                "grad_dtype": self.labels.grad_dtype,
            },
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "estimate") -> EstimateRecord:
        """Read an estimate JSON (as `to_dict()` writes it); a wrong shape raises RecordError.

        Records written before a key existed read with that key absent (None / empty), so older
        estimate files still load; `model_states` and `peak` are required.
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"{where} is not a memprof estimate: expected a JSON object, got {type(data).__name__}")
        reader = _Reader(data, where)
        settings = reader.optional_mapping("settings") or {}
        peak = reader.mapping("peak")
        peak_reader = _Reader(peak, f"{where}: peak")
        context = reader.optional_mapping("cuda_context")
        gpu = reader.optional_mapping("gpu")
        timeline = data.get("timeline")
        if timeline is not None and not isinstance(timeline, list):
            raise RecordError(f"{where}: 'timeline' must be a list, got {type(timeline).__name__}")
        labels = reader.optional_mapping("labels") or {}
        return cls(
            model=reader.optional(str, "model"),
            parameters=reader.optional(int, "parameters"),
            settings=_settings(settings, f"{where}: settings"),
            model_states=_model_states(reader.mapping("model_states"), f"{where}: model_states"),
            model_states_unsharded=None
            if (unsharded := reader.optional_mapping("model_states_unsharded")) is None
            else _model_states(unsharded, f"{where}: model_states_unsharded"),
            optimizer_state_breakdown=_int_map(data.get("optimizer_state_breakdown") or {}, f"{where}: breakdown"),
            cpu_offload=reader.optional(int, "cpu_offload"),
            cpu_offload_per_node=reader.optional(int, "cpu_offload_per_node"),
            activations_saved=reader.optional(int, "activations_saved"),
            temporary_breakdown=_int_map(data.get("temporary_breakdown") or {}, f"{where}: temporaries", True),
            temporary_at_peak=_int_map(data.get("temporary_at_peak") or {}, f"{where}: temporary_at_peak"),
            peak=Peak(
                phase=peak_reader.optional(str, "phase"),
                allocated=peak_reader.optional(int, "allocated"),
                reserved=peak_reader.optional(int, "reserved"),
                device_total=peak_reader.optional(int, "device_total"),
                by_category=_int_map(peak.get("by_category") or {}, f"{where}: peak.by_category", True),
            ),
            cuda_context=None if context is None else _context(context, f"{where}: cuda_context"),
            allocator=reader.optional_mapping("allocator"),
            timeline=None
            if timeline is None
            else tuple(_timeline_point(p, f"{where}: timeline[{i}]") for i, p in enumerate(timeline)),
            warnings=tuple(_str_list(data.get("warnings") or [], f"{where}: warnings")),
            gpu=None if gpu is None else _gpu(gpu, f"{where}: gpu"),
            labels=EstimateLabels(**{k: _Reader(labels, f"{where}: labels").optional(str, k) for k in _LABEL_KEYS}),
        )


_LABEL_KEYS = tuple(EstimateLabels.__dataclass_fields__)
_SETTING_TYPES: dict[str, type] = {
    "optimizer": str,
    "precision": str,
    "batch_size": int,
    "seq_len": int,
    "checkpointing": str,
    "attention": str,
    "device": str,
    "gpus": int,
    "zero": int,
    "offload": str,
    "grad_accumulation": int,
    "attention_kernel": str,
    "optimizer_impl": str,
    "alloc_conf": str,
    "population": int,
    "keep_output": bool,
    "zero_grad": str,
    "head": str,
    "lora_rank": int,
    "lora_targets": str,
    "lora_modules": int,
    "lora_dropout": float,
    "quantize": str,
    "double_quant": bool,
    "cuda_version": str,
    "cuda_module_loading": str,
    "engine": str,
    "fsdp_unit": str,
    "target_len": int,
    "pp": int,
    "pp_schedule": str,
    "microbatches": int,
    "virtual_stages": int,
    "pp_stage": int,
    "tp": int,
}
# pipeline and tensor parallelism: settings in the JSON only when used
_PARALLEL_SETTINGS = ("pp", "pp_schedule", "microbatches", "virtual_stages", "pp_stage", "tp")


class _Reader:
    """Typed access to one JSON object, with errors that say which field of which record is wrong."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def _check(self, kind: type, key: str, value: Any) -> Any:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise RecordError(f"{self.where}: {key!r} must be {_KIND_NAMES[kind]}, got {value!r}")
        return value

    def optional(self, kind: type, key: str) -> Any:
        value = self.data.get(key)
        return None if value is None else self._check(kind, key, value)

    def required(self, kind: type, key: str) -> Any:
        if self.data.get(key) is None:
            raise RecordError(f"{self.where}: missing {key!r}")
        return self._check(kind, key, self.data[key])

    def mapping(self, key: str) -> Mapping[str, Any]:
        """A required JSON object."""
        value = self.data.get(key)
        if not isinstance(value, Mapping):
            raise RecordError(f"{self.where}: {key!r} must be an object, got {value!r}")
        return value

    def optional_mapping(self, key: str) -> Mapping[str, Any] | None:
        """A JSON object, or None when the key is absent or null."""
        return None if self.data.get(key) is None else self.mapping(key)


_KIND_NAMES: dict[type, str] = {int: "an integer", str: "a string", bool: "true or false", float: "a number"}


def _settings(data: Mapping[str, Any], where: str) -> EstimateSettings:
    reader = _Reader(data, where)
    values = {key: reader.optional(kind, key) for key, kind in _SETTING_TYPES.items() if key in data}
    # a key the file does not have is not known, not the estimator's default
    base = EstimateSettings(
        optimizer=None, precision=None, batch_size=None, seq_len=None, checkpointing=None, device=None
    )
    for key in ("keep_output", "zero_grad"):  # null: the estimator's default loop, as before the key existed
        if values.get(key, False) is None:
            del values[key]
    return replace(base, **values)


def _context(data: Mapping[str, Any], where: str) -> ContextFigure:
    r = _Reader(data, where)
    return ContextFigure(
        r.required(int, "bytes"), r.required(int, "low"), r.required(int, "high"), r.required(str, "basis")
    )


def _gpu(data: Mapping[str, Any], where: str) -> GpuVerdict:
    r = _Reader(data, where)
    return GpuVerdict(
        r.required(str, "name"), r.required(int, "memory"), r.required(int, "usable"), r.optional(bool, "fits")
    )


def _model_states(data: Mapping[str, Any], where: str) -> ModelStates:
    reader = _Reader(data, where)
    return ModelStates(**{c: reader.optional(int, c) for c in MODEL_STATE_CATEGORIES})


def _int_map(data: Any, where: str, nullable: bool = False) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise RecordError(f"{where} must be an object, got {data!r}")
    reader = _Reader(data, where)
    return {k: reader.optional(int, k) if nullable else reader.required(int, k) for k in data}


def _str_list(data: Any, where: str) -> list[str]:
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise RecordError(f"{where} must be a list of strings, got {data!r}")
    return data


def _timeline_point(data: Any, where: str) -> TimelinePoint:
    if not isinstance(data, Mapping):
        raise RecordError(f"{where} must be an object, got {data!r}")
    reader = _Reader(data, where)
    return TimelinePoint(
        phase=reader.required(str, "phase"),
        label=reader.required(str, "label"),
        by_category=_int_map(data.get("by_category") or {}, f"{where}.by_category"),
    )
