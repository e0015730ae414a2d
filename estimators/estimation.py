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
from .buffers import Buffer
from .timeline import Timeline
from .vocabulary import CATEGORIES, Category

TENSOR_CATEGORIES = (Category.PARAMETERS.value, Category.GRADIENTS.value, Category.OPTIMIZER_STATES.value,
                     Category.ACTIVATIONS.value, Category.TEMPORARY.value)

CHECKPOINTING = ("none", "selective", "full")
ATTENTION = ("auto", "eager", "sdpa", "flash")
DEVICES = ("cuda", "cpu")
OPTIMIZER_IMPLS = ("auto", "single_tensor", "foreach", "fused")
# families whose position embeddings are a learned table (a longer sequence cannot run)
LEARNED_POSITIONS = ("gpt2", "opt", "bert")
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
    grad_accumulation: int = 1
    optimizer_impl: str = "auto"
    alloc_conf: str | None = None   # PYTORCH_CUDA_ALLOC_CONF for the allocator replay
    optimizer_options: tuple[tuple[str, Any], ...] = ()

    def validate(self) -> None:
        _check_int("--batch-size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.seq_len is not None:
            _check_int("--seq-len", self.seq_len, 1, MAX_SEQ_LEN)
        _check_choice("--checkpointing", self.checkpointing, CHECKPOINTING)
        _check_choice("--attention", self.attention, ATTENTION)
        _check_choice("--device", self.device, DEVICES)
        _check_int("--grad-accumulation", self.grad_accumulation, 1, 1 << 16)
        _check_choice("--optimizer-impl", self.optimizer_impl, OPTIMIZER_IMPLS)
        if self.alloc_conf is not None:
            if self.device != "cuda":
                raise MemprofUserError("--alloc-conf configures the CUDA caching allocator; drop it with --device cpu")
            from .allocator.config import parse_alloc_conf
            parse_alloc_conf(self.alloc_conf)


def _check_int(flag: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MemprofUserError(f"{flag} must be a whole number from {low} to {high:,}, got {value!r}")


def _check_choice(flag: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise MemprofUserError(f"invalid {flag} {value!r}; valid: {', '.join(valid)}")


@dataclass
class Estimate:
    """Predicted bytes for one training configuration, per device.

    The peak is the largest moment of the simulated step (`timeline`): model states, the activations
    autograd holds, temporaries (the step's own plus the itemized `buffers`), and on CUDA the context
    and the caching allocator's fragmentation. Components not modelled are None ("absent"), never 0.
    """

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
    attention: str | None = None               # transformers attn_implementation run ("eager", "sdpa", "flash")
    attention_kernel: str | None = None        # the kernel PyTorch picks ("eager", "math", "flash", "efficient")
    optimizer_impl: str | None = None          # "single_tensor" | "foreach" | "fused" | "n/a"
    optimizer_temporaries: int | None = None   # peak scratch bytes inside optimizer.step()
    activations_saved: int | None = None       # bytes autograd holds when the forward ends
    buffers: list[Buffer] = field(default_factory=list)
    timeline: Timeline | None = None
    context: Any = None                        # a ContextEstimate on CUDA
    allocator: Any = None                      # the caching-allocator replay of the step, on CUDA
    allocated_override: int | None = None      # peak allocated with allocator rounding (CUDA)
    warnings: list[str] = field(default_factory=list)

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
    def tensor_bytes_at_peak(self) -> int | None:
        """Live tensor bytes at the peak (the five tensor categories); None while one is absent."""
        values = [self.peak_by_category.get(c) for c in TENSOR_CATEGORIES]
        return None if any(v is None for v in values) else sum(values)

    @property
    def peak_allocated(self) -> int | None:
        """Comparable to max_memory_allocated(): live tensor bytes, with 512-byte rounding on CUDA."""
        if self.allocated_override is not None:
            return self.allocated_override
        return self.tensor_bytes_at_peak

    @property
    def peak_reserved(self) -> int | None:
        """Comparable to max_memory_reserved(): tensors plus what the allocator caches (fragmentation)."""
        tensors, frag = self.tensor_bytes_at_peak, self.peak_by_category.get(Category.FRAGMENTATION.value)
        return None if tensors is None or frag is None else tensors + frag

    @property
    def device_total(self) -> int | None:
        """Comparable to NVML / nvidia-smi for the process: reserved plus the CUDA context."""
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
        temporary = {"optimizer_step": self.optimizer_temporaries,
                     **{b.name: b.nbytes for b in self.buffers}}
        return {
            "model": self.model.name,
            "parameters": self.parameters,
            "settings": {"optimizer": self.optimizer.name, "precision": self.precision.name,
                         "batch_size": s.batch_size, "seq_len": self.seq_len,
                         "checkpointing": s.checkpointing, "attention": self.attention or s.attention,
                         "device": s.device, "gpus": s.gpus, "zero": s.zero, "offload": s.offload,
                         "grad_accumulation": s.grad_accumulation,
                         "attention_kernel": self.attention_kernel, "optimizer_impl": self.optimizer_impl,
                         "alloc_conf": s.alloc_conf},
            "model_states": self.model_states,
            "model_states_unsharded": dict(self.full_model_states),
            "optimizer_state_breakdown": dict(self.optimizer_state_breakdown),
            "cpu_offload": self.placement.cpu,
            "activations_saved": self.activations_saved,
            "temporary_breakdown": temporary,
            "peak": {"phase": self.peak_phase, "allocated": self.peak_allocated,
                     "reserved": self.peak_reserved, "device_total": self.device_total,
                     "by_category": {c: self.peak_by_category.get(c) for c in CATEGORIES}},
            "cuda_context": None if self.context is None else {
                "bytes": self.context.bytes, "low": self.context.low, "high": self.context.high,
                "basis": self.context.basis},
            "allocator": self.allocator,
            "timeline": None if self.timeline is None else [
                {"phase": p.phase, "label": p.label, "by_category": dict(p.by_category)}
                for p in self.timeline],
            "warnings": list(self.warnings),
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
             offload: str = "none", gpu: str | None = None, grad_accumulation: int = 1,
             optimizer_impl: str = "auto", cuda_version: str | None = None,
             alloc_conf: str | None = None, **optimizer_options: Any) -> Estimate:
    """Estimate the memory of training `model` with `optimizer` at `precision`, per device.

    optimizer_impl: "auto" (what torch picks for the device: foreach on CUDA, the single-tensor loop
    on the CPU), "single_tensor", "foreach" or "fused". cuda_version: the CUDA runtime, for the
    context estimate (e.g. "12.4"; default: any). alloc_conf: the PYTORCH_CUDA_ALLOC_CONF the
    allocator replay runs with (e.g. "expandable_segments:True"; default: PyTorch's defaults).
    """
    settings = Settings(optimizer=optimizer, precision=precision, batch_size=batch_size,
                        seq_len=seq_len, checkpointing=checkpointing, attention=attention,
                        device=device, gpus=gpus, zero=zero, offload=offload,
                        grad_accumulation=grad_accumulation, optimizer_impl=optimizer_impl,
                        alloc_conf=alloc_conf,
                        optimizer_options=tuple(sorted(optimizer_options.items())))
    settings.validate()
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    opt = get_optimizer(optimizer)
    prec = get_precision(precision)
    sharding = Sharding(gpus=gpus, zero=zero, offload=offload)
    gpu_spec = None
    if gpu is not None:
        if device != "cuda":
            raise MemprofUserError(f"--gpu {gpu} names a CUDA device but --device is {device!r}; "
                                   "drop --gpu or use --device cuda")
        from .gpus import get_gpu
        gpu_spec = get_gpu(gpu)
    warnings: list[str] = []
    length = _resolve_seq_len(spec, seq_len, warnings)
    if optimizer_impl == "fused" and "fused" in opt.options and "fused" not in optimizer_options:
        # torch's fused kernels also keep `step` on the device: the state follows the implementation
        optimizer_options = {**optimizer_options, "fused": True}

    full, breakdown = model_state_bytes(spec, opt, prec, device, **optimizer_options)
    fp32_grads = spec.num_parameters * 4
    placement = place_model_states(full[Category.PARAMETERS.value], full[Category.GRADIENTS.value],
                                   full[Category.OPTIMIZER_STATES.value], fp32_grads, sharding)
    result = Estimate(model=spec, optimizer=opt, precision=prec, settings=settings, seq_len=length,
                      full_model_states=full, placement=placement,
                      optimizer_state_breakdown=breakdown, gpu=gpu_spec, warnings=warnings)
    _estimate_peak(result, spec, opt, prec, sharding, cuda_version, optimizer_options)
    return result


def _activation_settings(spec: ModelSpec, prec: Precision, settings: Settings, seq_len: int):
    from .activations import ActivationSettings

    implementation = "sdpa" if settings.attention == "auto" else settings.attention
    compute = prec.compute_dtype if prec.autocast else prec.param_dtype
    return ActivationSettings(batch_size=settings.batch_size, seq_len=seq_len, compute_dtype=compute,
                              param_dtype=prec.param_dtype, autocast=prec.autocast,
                              attention=implementation, checkpointing=settings.checkpointing,
                              training=True, device=settings.device, sharded_params=settings.zero == 3)


def _estimate_peak(result: Estimate, spec: ModelSpec, opt: OptimizerSpec, prec: Precision,
                   sharding: Sharding, cuda_version: str | None, optimizer_options: dict) -> None:
    """Fill in the step timeline, its peak by category and the device overheads."""
    from .activations import activation_bytes, attention_kernel
    from .buffers import largest_layer_parameters, training_buffers
    from .optimizers.temporaries import (create_graph_caveat, default_implementation, needs_create_graph,
                                         step_temporary_bytes)
    from .timeline import step_timeline

    s = result.settings
    act = _activation_settings(spec, prec, s, result.seq_len)
    result.attention = act.attention
    result.attention_kernel = attention_kernel(spec, act)
    result.activations_saved = activation_bytes(spec, act)

    placement = result.placement
    impl = (default_implementation(opt, s.device, **optimizer_options) if s.optimizer_impl == "auto"
            else s.optimizer_impl)
    result.optimizer_impl = impl
    caveat = create_graph_caveat(opt, device=s.device, **optimizer_options)
    if caveat:
        result.warnings.append(caveat)
    if sharding.offload == "none":
        # the rank steps its partition of the parameters: temporaries scale with the partition
        temps = step_temporary_bytes(opt, spec.parameter_tensors(), prec.optimizer_dtype, device=s.device,
                                     implementation=impl, **optimizer_options)
        result.optimizer_temporaries = -(-temps // sharding.gpus) if sharding.zero >= 1 else temps
    else:
        result.optimizer_temporaries = 0      # the optimizer steps on the host

    blas: tuple[int, ...] = ()
    if s.device == "cuda":
        from .overheads import blas_workspace_allocations, cuda_context_bytes
        # without a named GPU: the default workspace of every architecture but Hopper/Blackwell
        cc = result.gpu.compute_capability if result.gpu is not None else (8, 0)
        blas = blas_workspace_allocations(cc)
    result.buffers = training_buffers(
        device=s.device, gpus=sharding.gpus, zero=sharding.zero, num_parameters=spec.num_parameters,
        grad_bytes=prec.grad_bytes, param_bytes=prec.param_bytes,
        largest_layer_parameters=largest_layer_parameters(spec), blas_workspaces=blas,
        parameters_offloaded=sharding.offload == "optimizer+parameters")
    buffer_bytes = sum(b.nbytes for b in result.buffers)

    if s.device == "cuda":
        result.context = cuda_context_bytes(result.gpu, cuda_version)
        sim = _allocator_replay(spec, opt, prec, act, result, blas, optimizer_options)
        timeline = sim.run.timeline      # the replay ran the step timeline; its byte totals are ours
    else:
        sim = None
        timeline = step_timeline(spec, act, param_bytes=placement.parameters, grad_bytes=placement.gradients,
                                 grad_dtype=prec.grad_dtype, optimizer_state_bytes=placement.optimizer_states,
                                 optimizer_temporaries_bytes=result.optimizer_temporaries,
                                 grad_accumulation=s.grad_accumulation, create_graph=needs_create_graph(opt))
    # the buffers live all step (the replay allocates the BLAS workspace itself, outside the timeline)
    for point in timeline:
        point.by_category[Category.TEMPORARY.value] += buffer_bytes
    result.timeline = timeline
    peak = timeline.peak
    result.peak_phase = peak.phase
    by_category: dict[str, int | None] = dict(peak.by_category)
    if sim is None:
        by_category[Category.CUDA_CONTEXT.value] = 0      # no CUDA context, no caching allocator
        by_category[Category.FRAGMENTATION.value] = 0
    else:
        by_category[Category.CUDA_CONTEXT.value] = result.context.bytes
        # buffers the replay leaves out (one large tensor each) are allocated as they are
        unsimulated = sum(b.nbytes for b in result.buffers if b.name != "cublas_workspace")
        result.allocator = sim.to_dict()
        result.allocated_override = sim.peak_allocated + unsimulated
        by_category[Category.FRAGMENTATION.value] = max(0, sim.peak_reserved - sim.peak_requested)
    result.peak_by_category = by_category


def _allocator_replay(spec: ModelSpec, opt: OptimizerSpec, prec: Precision, act, result: Estimate,
                      blas: tuple[int, ...], optimizer_options: dict):
    """The step through the caching-allocator simulator: rounding, segments, what stays cached."""
    from .allocator.training import simulate_training_step, states_per_parameter
    from .optimizers.temporaries import needs_create_graph

    s, placement = result.settings, result.placement
    if placement.optimizer_states == result.full_model_states[Category.OPTIMIZER_STATES.value]:
        params = spec.parameter_tensors()
        states = states_per_parameter(params, opt.state_tensors(params, prec.optimizer_dtype, **optimizer_options),
                                      master_bytes_per_element=prec.master_bytes, device="cuda")
    else:
        # ZeRO / FSDP keep a rank's partition of the states as flat buffers: one allocation
        params = spec.parameter_tensors()
        states = [(placement.optimizer_states,) if placement.optimizer_states else ()] + [()] * (len(params) - 1)
        result.warnings.append("the allocator replay lays out the sharded states as one flat buffer and the "
                               "parameters and gradients tensor by tensor; ZeRO/FSDP flat buffers and "
                               "communication buckets make reserved memory differ: treat it as approximate")
    return simulate_training_step(
        spec, act, param_bytes=placement.parameters, grad_bytes=placement.gradients, grad_dtype=prec.grad_dtype,
        optimizer_states=states, optimizer_temporaries=result.optimizer_temporaries,
        grad_accumulation=s.grad_accumulation, states_at_creation=opt.states_at_init or prec.master_weights,
        workspaces=blas, alloc_conf=s.alloc_conf, create_graph=needs_create_graph(opt))


def _resolve_seq_len(spec: ModelSpec, seq_len: int | None, warnings: list[str]) -> int:
    """Tokens per sample: given, or the model's context capped at DEFAULT_MAX_SEQ_LEN.

    A vision transformer's sequence is fixed by its image and patch sizes (patches + the class token).
    A sequence longer than the model's positions is an error for learned absolute position
    embeddings (the lookup would fail) and a warning for rotary ones (it runs, quality degrades).
    """
    if spec.model_type == "vit":
        tokens = spec.num_patches + 1
        if seq_len is not None and seq_len != tokens:
            raise MemprofUserError(f"{spec.name} sees {tokens} tokens per image ({spec.num_patches} patches "
                                   f"+ class token); drop --seq-len or pass {tokens}")
        return tokens
    if seq_len is None:
        return min(spec.max_positions, DEFAULT_MAX_SEQ_LEN)
    if seq_len > spec.max_positions:
        if spec.model_type in LEARNED_POSITIONS:
            raise MemprofUserError(f"--seq-len {seq_len} exceeds the {spec.max_positions} learned positions of "
                                   f"{spec.name}; use --seq-len {spec.max_positions} or less")
        warnings.append(f"--seq-len {seq_len} is longer than the {spec.max_positions} positions {spec.name} "
                        "was trained with (rotary embeddings run, but quality may degrade)")
    return seq_len
