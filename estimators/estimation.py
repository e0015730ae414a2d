"""The estimate: from a model, an optimizer and the training knobs to bytes by category.

Plain data in, plain data out (`Estimate.to_dict()` is DESIGN.md's JSON contract); rendering lives in
`memprof.commands`. Components that are not modelled yet are reported as None ("absent"), never as 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import MemprofUserError
from .models import ModelSpec, load_model
from .optimizers import OptimizerSpec, get_optimizer
from .precision import Precision, get_precision
from .sharding import Placement, Sharding, place_model_states
from .vocabulary import CATEGORIES, Category

CHECKPOINTING = ("none", "selective", "full")
ATTENTION = ("auto", "eager", "sdpa", "flash")
DEVICES = ("cuda", "cpu")
DEFAULT_MAX_SEQ_LEN = 2048      # default --seq-len: the model's context, capped here
MAX_BATCH_SIZE = 1 << 20
MAX_SEQ_LEN = 1 << 24


@dataclass(frozen=True)
class Settings:
    """The knobs of one estimate (DESIGN.md `settings`)."""

    optimizer: str = "adamw"
    precision: str = "bf16-mixed"
    batch_size: int = 1
    seq_len: int | None = None      # None: the model's context length, capped at DEFAULT_MAX_SEQ_LEN
    checkpointing: str = "none"
    attention: str = "auto"
    device: str = "cuda"
    gpus: int = 1
    zero: int = 0
    offload: str = "none"
    optimizer_options: tuple[tuple[str, Any], ...] = ()

    def validate(self) -> None:
        _check_int("--batch-size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.seq_len is not None:
            _check_int("--seq-len", self.seq_len, 1, MAX_SEQ_LEN)
        _check_choice("--checkpointing", self.checkpointing, CHECKPOINTING)
        _check_choice("--attention", self.attention, ATTENTION)
        _check_choice("--device", self.device, DEVICES)


def _check_int(flag: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MemprofUserError(f"{flag} must be a whole number from {low} to {high:,}, got {value!r}")


def _check_choice(flag: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise MemprofUserError(f"invalid {flag} {value!r}; valid: {', '.join(valid)}")


@dataclass
class Estimate:
    """Predicted bytes for one training configuration, per device."""

    model: ModelSpec
    optimizer: OptimizerSpec
    precision: Precision
    settings: Settings
    seq_len: int
    full_model_states: dict[str, int]          # whole model, before sharding
    placement: Placement                       # what one device (and its host) holds
    optimizer_state_breakdown: dict[str, int]  # by state key ("exp_avg", "step", "master_weights", ...)
    peak_phase: str | None = None
    peak_by_category: dict[str, int | None] = field(default_factory=dict)
    gpu: Any = None                            # a GPUSpec when one was named

    @property
    def parameters(self) -> int:
        return self.model.num_parameters

    @property
    def model_states(self) -> dict[str, int]:
        return {Category.PARAMETERS.value: self.placement.parameters,
                Category.GRADIENTS.value: self.placement.gradients,
                Category.OPTIMIZER_STATES.value: self.placement.optimizer_states}

    @property
    def model_state_bytes(self) -> int:
        return sum(self.model_states.values())

    @property
    def peak_allocated(self) -> int | None:
        """Peak of live tensor bytes; None while a tensor category is not modelled."""
        tensor_categories = (Category.PARAMETERS, Category.GRADIENTS, Category.OPTIMIZER_STATES,
                             Category.ACTIVATIONS, Category.TEMPORARY)
        values = [self.peak_by_category.get(c.value) for c in tensor_categories]
        return None if any(v is None for v in values) else sum(values)

    @property
    def peak_reserved(self) -> int | None:
        allocated, frag = self.peak_allocated, self.peak_by_category.get(Category.FRAGMENTATION.value)
        return None if allocated is None or frag is None else allocated + frag

    @property
    def device_total(self) -> int | None:
        reserved, ctx = self.peak_reserved, self.peak_by_category.get(Category.CUDA_CONTEXT.value)
        return None if reserved is None or ctx is None else reserved + ctx

    @property
    def fits(self) -> bool | None:
        """Whether the peak fits the named GPU; None without a GPU or without a complete peak.

        While the peak is incomplete, a configuration whose model states alone exceed the GPU is
        known not to fit, so that answer is given.
        """
        if self.gpu is None:
            return None
        if self.device_total is not None:
            return self.device_total <= self.usable_gpu_memory
        if self.model_state_bytes > self.usable_gpu_memory:
            return False
        return None

    @property
    def usable_gpu_memory(self) -> int | None:
        """What CUDA lets a process use: the driver total less the driver's own reservation.

        That is `torch.cuda.get_device_properties().total_memory` where the preset records it;
        otherwise the driver total (an upper bound, stated in the preset's notes).
        """
        if self.gpu is None:
            return None
        return self.gpu.torch_total_memory or self.gpu.memory_bytes

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "model": self.model.name,
            "parameters": self.parameters,
            "settings": {"optimizer": self.optimizer.name, "precision": self.precision.name,
                         "batch_size": s.batch_size, "seq_len": self.seq_len,
                         "checkpointing": s.checkpointing, "attention": s.attention,
                         "device": s.device, "gpus": s.gpus, "zero": s.zero, "offload": s.offload},
            "model_states": self.model_states,
            "model_states_unsharded": dict(self.full_model_states),
            "optimizer_state_breakdown": dict(self.optimizer_state_breakdown),
            "cpu_offload": self.placement.cpu,
            "peak": {"phase": self.peak_phase, "allocated": self.peak_allocated,
                     "reserved": self.peak_reserved, "device_total": self.device_total,
                     "by_category": {c: self.peak_by_category.get(c) for c in CATEGORIES}},
            "gpu": None if self.gpu is None else {
                "name": self.gpu.name, "memory": self.gpu.memory_bytes,
                "usable": self.usable_gpu_memory, "fits": self.fits},
        }


def model_state_bytes(model: ModelSpec, optimizer: OptimizerSpec, precision: Precision,
                      device: str = "cuda", **optimizer_options: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Full-model (unsharded) bytes of parameters, gradients and optimizer states on `device`, exact.

    Returns (by category, optimizer states by state key). The fp32 master copy of the master-weights
    schemes is an optimizer state (key "master_weights"), as in the ZeRO paper's 12 bytes. On CUDA,
    scalars torch keeps on the host (Adam's `step` unless capturable/fused) are left out.
    """
    tensors = model.parameter_tensors()
    numel = sum(t.numel for t in tensors)
    breakdown: dict[str, int] = {}
    for state in optimizer.state_tensors(tensors, precision.optimizer_dtype, **optimizer_options):
        if device == "cuda" and getattr(state, "host", False):
            continue
        breakdown[state.key] = breakdown.get(state.key, 0) + state.nbytes
    if precision.master_weights:
        breakdown["master_weights"] = numel * precision.master_bytes
    by_category = {Category.PARAMETERS.value: numel * precision.param_bytes,
                   Category.GRADIENTS.value: numel * precision.grad_bytes,
                   Category.OPTIMIZER_STATES.value: sum(breakdown.values())}
    return by_category, breakdown


def estimate(model: str | ModelSpec, optimizer: str = "adamw", precision: str = "bf16-mixed", *,
             batch_size: int = 1, seq_len: int | None = None, checkpointing: str = "none",
             attention: str = "auto", device: str = "cuda", gpus: int = 1, zero: int = 0,
             offload: str = "none", gpu: str | None = None, **optimizer_options: Any) -> Estimate:
    """Estimate the memory of training `model` with `optimizer` at `precision`, per device."""
    settings = Settings(optimizer=optimizer, precision=precision, batch_size=batch_size,
                        seq_len=seq_len, checkpointing=checkpointing, attention=attention,
                        device=device, gpus=gpus, zero=zero, offload=offload,
                        optimizer_options=tuple(sorted(optimizer_options.items())))
    settings.validate()
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    opt = get_optimizer(optimizer)
    prec = get_precision(precision)
    sharding = Sharding(gpus=gpus, zero=zero, offload=offload)
    gpu_spec = None
    if gpu is not None:
        from .gpus import get_gpu
        gpu_spec = get_gpu(gpu)
    length = _resolve_seq_len(spec, seq_len)

    full, breakdown = model_state_bytes(spec, opt, prec, device, **optimizer_options)
    fp32_grads = spec.num_parameters * 4
    placement = place_model_states(full[Category.PARAMETERS.value], full[Category.GRADIENTS.value],
                                   full[Category.OPTIMIZER_STATES.value], fp32_grads, sharding)
    result = Estimate(model=spec, optimizer=opt, precision=prec, settings=settings, seq_len=length,
                      full_model_states=full, placement=placement,
                      optimizer_state_breakdown=breakdown, gpu=gpu_spec)
    result.peak_by_category = {c: None for c in CATEGORIES}
    return result


def _resolve_seq_len(spec: ModelSpec, seq_len: int | None) -> int:
    """Tokens per sample: given, or the model's context capped at DEFAULT_MAX_SEQ_LEN.

    A vision transformer's sequence is fixed by its image and patch sizes (patches + the class token).
    """
    if spec.model_type == "vit":
        tokens = spec.num_patches + 1
        if seq_len is not None and seq_len != tokens:
            raise MemprofUserError(f"{spec.name} sees {tokens} tokens per image ({spec.num_patches} patches "
                                   f"+ class token); drop --seq-len or pass {tokens}")
        return tokens
    if seq_len is None:
        return min(spec.max_positions, DEFAULT_MAX_SEQ_LEN)
    return seq_len
