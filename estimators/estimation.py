"""The analytic estimate: from a model, an optimizer and the training knobs to an `EstimateRecord`.

`estimate()` validates the knobs, asks each part for its figure — the optimizer spec for states and
step scratch, the model family for activations, the parallel engine for placement and buffers, the
overheads for the CUDA context, the allocator simulator for reserved memory — and builds the result
once. The result (`Estimate`) is the record plus the specs it was computed from; everything
downstream reads `Estimate.record` (docs/architecture.md, "The flow"). Components that are not
modelled are None ("absent"), never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .dtypes import dtype_bytes
from .errors import ParameterError
from .models import ModelSpec, load_model
from .optimizers import (
    OptimizerSpec,
    create_graph_caveat,
    default_implementation,
    get_optimizer,
    needs_create_graph,
    step_temporary_bytes,
)
from .optimizers.population import gradient_free, population_of
from .parallel import Buffer, EngineBuffers, ModelStateBytes, ParallelStrategy, Placement, strategy_for
from .precision import Precision, get_precision
from .records import (
    ContextFigure,
    EstimateLabels,
    EstimateRecord,
    EstimateSettings,
    GpuVerdict,
    ModelStates,
    Peak,
    TimelinePoint,
)
from .tensors import ParamTensor
from .vocabulary import ATTENTION, CATEGORIES, CHECKPOINTING, DEVICES, TENSOR_CATEGORIES, Category

if TYPE_CHECKING:
    from .activations import ActivationSettings
    from .allocator.training import TrainingSimulation
    from .gpus import GPUSpec
    from .overheads import ContextEstimate
    from .timeline import Timeline

__all__ = [
    "ATTENTION",
    "CHECKPOINTING",
    "DEFAULT_MAX_SEQ_LEN",
    "DEVICES",
    "MAX_BATCH_SIZE",
    "MAX_SEQ_LEN",
    "OPTIMIZER_IMPLS",
    "Estimate",
    "Settings",
    "estimate",
    "model_state_bytes",
]

OPTIMIZER_IMPLS = ("auto", "single_tensor", "foreach", "fused")
# families whose position embeddings are a learned table (a longer sequence cannot run)
LEARNED_POSITIONS = ("gpt2", "opt", "bert")
DEFAULT_MAX_SEQ_LEN = 2048  # default seq_len: the model's context, capped here
MAX_BATCH_SIZE = 1 << 20
MAX_SEQ_LEN = 1 << 24
MAX_GRAD_ACCUMULATION = 1 << 16


@dataclass(frozen=True)
class Settings:
    """The knobs of one estimate (the estimate JSON's `settings`, before resolution)."""

    optimizer: str = "adamw"
    precision: str = "bf16-mixed"
    batch_size: int = 1
    seq_len: int | None = None  # None: the model's context length, capped at DEFAULT_MAX_SEQ_LEN
    checkpointing: str = "none"
    attention: str = "auto"
    device: str = "cuda"
    gpus: int = 1
    zero: int = 0
    offload: str = "none"
    grad_accumulation: int = 1
    optimizer_impl: str = "auto"
    alloc_conf: str | None = None  # PYTORCH_CUDA_ALLOC_CONF for the allocator replay
    optimizer_options: tuple[tuple[str, Any], ...] = ()

    def validate(self) -> None:
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.seq_len is not None:
            _check_int("seq_len", self.seq_len, 1, MAX_SEQ_LEN)
        _check_choice("checkpointing", self.checkpointing, CHECKPOINTING)
        _check_choice("attention", self.attention, ATTENTION)
        _check_choice("device", self.device, DEVICES)
        _check_int("grad_accumulation", self.grad_accumulation, 1, MAX_GRAD_ACCUMULATION)
        _check_choice("optimizer_impl", self.optimizer_impl, OPTIMIZER_IMPLS)
        if self.alloc_conf is not None:
            if self.device != "cuda":
                raise ParameterError(
                    "{alloc_conf} configures the CUDA caching allocator; drop it with {device} cpu",
                    "alloc_conf",
                    "device",
                )
            from .allocator.config import parse_alloc_conf

            parse_alloc_conf(self.alloc_conf)


def _check_int(param: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterError(f"{{{param}}} must be a whole number from {low} to {high:,}, got {value!r}", param)


def _check_choice(param: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ParameterError(f"invalid {{{param}}} {value!r}; valid: {', '.join(valid)}", param)


@dataclass(frozen=True)
class Estimate:
    """The analytic estimator's result: the `EstimateRecord` and the specs it was computed from.

    Built once by `estimate()`. The record is what rendering, fit, comparison and reports read; the
    specs (model, optimizer, precision, parallel engine) and the step timeline are kept for callers
    that ask how a figure came about.
    """

    record: EstimateRecord
    model: ModelSpec
    optimizer: OptimizerSpec
    precision: Precision
    settings: Settings
    strategy: ParallelStrategy
    placement: Placement  # what one device (and its host) holds
    full_model_states: Mapping[str, int]  # whole model, before sharding
    buffers: tuple[Buffer, ...] = ()
    timeline: Timeline | None = None
    context: ContextEstimate | None = None  # on CUDA
    gpu: GPUSpec | None = None
    optimizer_temporaries: int | None = None  # peak scratch bytes inside optimizer.step()

    def to_dict(self) -> dict[str, Any]:
        """The estimate JSON (docs/architecture.md)."""
        return self.record.to_dict()

    # The record's figures, under the names callers have used since the first release.
    @property
    def seq_len(self) -> int:
        assert self.record.settings.seq_len is not None
        return self.record.settings.seq_len

    @property
    def parameters(self) -> int:
        return self.model.num_parameters

    @property
    def model_states(self) -> dict[str, int]:
        return {k: v for k, v in self.record.model_states.to_dict().items() if v is not None}

    @property
    def model_state_bytes(self) -> int:
        return sum(self.model_states.values())

    @property
    def optimizer_state_breakdown(self) -> Mapping[str, int]:
        return self.record.optimizer_state_breakdown

    @property
    def peak_phase(self) -> str | None:
        return self.record.peak.phase

    @property
    def peak_by_category(self) -> Mapping[str, int | None]:
        return self.record.peak.by_category

    @property
    def tensor_bytes_at_peak(self) -> int | None:
        return self.record.peak.tensor_bytes

    @property
    def peak_allocated(self) -> int | None:
        """Comparable to max_memory_allocated(): live tensor bytes, with allocator rounding on CUDA."""
        return self.record.peak.allocated

    @property
    def peak_reserved(self) -> int | None:
        """Comparable to max_memory_reserved(): tensors plus what the allocator caches (fragmentation)."""
        return self.record.peak.reserved

    @property
    def device_total(self) -> int | None:
        """Comparable to NVML / nvidia-smi for the process: reserved plus the CUDA context."""
        return self.record.peak.device_total

    @property
    def fits(self) -> bool | None:
        return self.record.fits

    @property
    def usable_gpu_memory(self) -> int | None:
        return None if self.record.gpu is None else self.record.gpu.usable

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.record.warnings

    @property
    def activations_saved(self) -> int | None:
        return self.record.activations_saved

    @property
    def attention(self) -> str | None:
        return self.record.settings.attention

    @property
    def attention_kernel(self) -> str | None:
        return self.record.settings.attention_kernel

    @property
    def optimizer_impl(self) -> str | None:
        return self.record.settings.optimizer_impl

    @property
    def allocator(self) -> Mapping[str, Any] | None:
        return self.record.allocator


def model_state_bytes(
    model: Any, optimizer: OptimizerSpec, precision: Precision, device: str = "cuda", **optimizer_options: Any
) -> tuple[dict[str, int], dict[str, int]]:
    """Full-model (unsharded) bytes of parameters, gradients and optimizer states on `device`, exact.

    `model` is anything with `parameter_tensors()`. Summed tensor by tensor: a tensor's own dtype
    (quantized or frozen weights) or else the precision's parameter dtype; gradients and optimizer
    states only for trainable tensors. Returns (by category, optimizer states by state key). The
    fp32 master copy of the master-weights schemes is an optimizer state (key "master_weights"), as
    in the ZeRO paper's 12 bytes. On CUDA, scalars torch keeps on the host (Adam's `step` unless
    capturable/fused) are left out.
    """
    tensors: tuple[ParamTensor, ...] = tuple(model.parameter_tensors())
    trainable = [t for t in tensors if t.trainable]
    parameters = sum(t.numel * (precision.param_bytes if t.dtype is None else dtype_bytes(t.dtype)) for t in tensors)
    trainable_numel = sum(t.numel for t in trainable)
    breakdown: dict[str, int] = {}
    for state in optimizer.state_tensors(trainable, precision.optimizer_dtype, **optimizer_options):
        if device == "cuda" and getattr(state, "host", False):
            continue
        breakdown[state.key] = breakdown.get(state.key, 0) + state.nbytes
    if precision.master_weights:
        breakdown["master_weights"] = trainable_numel * precision.master_bytes
    no_grads = gradient_free(optimizer)  # population methods run no backward
    by_category = {
        Category.PARAMETERS.value: parameters,
        Category.GRADIENTS.value: 0 if no_grads else trainable_numel * precision.grad_bytes,
        Category.OPTIMIZER_STATES.value: sum(breakdown.values()),
    }
    return by_category, breakdown


def estimate(
    model: str | ModelSpec,
    optimizer: str = "adamw",
    precision: str = "bf16-mixed",
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    checkpointing: str = "none",
    attention: str = "auto",
    device: str = "cuda",
    gpus: int = 1,
    zero: int = 0,
    offload: str = "none",
    gpu: str | None = None,
    grad_accumulation: int = 1,
    optimizer_impl: str = "auto",
    cuda_version: str | None = None,
    alloc_conf: str | None = None,
    **optimizer_options: Any,
) -> Estimate:
    """Estimate the memory of training `model` with `optimizer` at `precision`, per device.

    optimizer_impl: "auto" (what torch picks for the device: foreach on CUDA, the single-tensor loop
    on the CPU), "single_tensor", "foreach" or "fused". cuda_version: the CUDA runtime, for the
    context estimate (e.g. "12.4"; default: any). alloc_conf: the PYTORCH_CUDA_ALLOC_CONF the
    allocator replay runs with (e.g. "expandable_segments:True"; default: PyTorch's defaults).
    """
    settings = Settings(
        optimizer=optimizer,
        precision=precision,
        batch_size=batch_size,
        seq_len=seq_len,
        checkpointing=checkpointing,
        attention=attention,
        device=device,
        gpus=gpus,
        zero=zero,
        offload=offload,
        grad_accumulation=grad_accumulation,
        optimizer_impl=optimizer_impl,
        alloc_conf=alloc_conf,
        optimizer_options=tuple(sorted(optimizer_options.items())),
    )
    settings.validate()
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    opt = get_optimizer(optimizer)
    prec = get_precision(precision)
    strategy = strategy_for(gpus, zero, offload)
    gpu_spec = None
    if gpu is not None:
        if device != "cuda":
            raise ParameterError(
                f"gpu={gpu!r} names a CUDA device but {{device}} is {device!r}; drop {{gpu}} or use {{device}} cuda",
                "device",
                "gpu",
            )
        from .gpus import get_gpu

        gpu_spec = get_gpu(gpu)
    warnings: list[str] = []
    length = _resolve_seq_len(spec, seq_len, warnings)
    if optimizer_impl == "fused" and "fused" in opt.options and "fused" not in optimizer_options:
        # torch's fused kernels also keep `step` on the device: the state follows the implementation
        optimizer_options = {**optimizer_options, "fused": True}

    full, breakdown = model_state_bytes(spec, opt, prec, device, **optimizer_options)
    fp32_grads = 0 if gradient_free(opt) else sum(t.numel for t in spec.parameter_tensors() if t.trainable) * 4
    placement = strategy.place(
        ModelStateBytes(
            full[Category.PARAMETERS.value],
            full[Category.GRADIENTS.value],
            full[Category.OPTIMIZER_STATES.value],
            fp32_grads,
        )
    )
    return _StepEstimator(
        spec, opt, prec, settings, strategy, placement, full, breakdown, length, gpu_spec, warnings
    ).build(cuda_version, optimizer_options)


def _activation_settings(
    spec: ModelSpec,
    prec: Precision,
    settings: Settings,
    seq_len: int,
    strategy: ParallelStrategy | None = None,
    gpu: GPUSpec | None = None,
) -> ActivationSettings:
    from .activations import ActivationSettings

    if strategy is None:
        strategy = strategy_for(settings.gpus, settings.zero, settings.offload)
    implementation = "sdpa" if settings.attention == "auto" else settings.attention
    compute = prec.compute_dtype if prec.autocast else prec.param_dtype
    return ActivationSettings(
        batch_size=settings.batch_size,
        seq_len=seq_len,
        compute_dtype=compute,
        param_dtype=prec.param_dtype,
        autocast=prec.autocast,
        attention=implementation,
        checkpointing=settings.checkpointing,
        training=True,
        device=settings.device,
        sharded_params=strategy.gathers_parameters_per_layer,
        compute_capability=None if gpu is None or settings.device != "cuda" else gpu.compute_capability,
    )


@dataclass
class _StepEstimator:
    """The step of one estimate: activations, temporaries, engine buffers, timeline and peak."""

    spec: ModelSpec
    opt: OptimizerSpec
    prec: Precision
    settings: Settings
    strategy: ParallelStrategy
    placement: Placement
    full: dict[str, int]
    breakdown: dict[str, int]
    seq_len: int
    gpu: GPUSpec | None
    warnings: list[str] = field(default_factory=list)

    def build(self, cuda_version: str | None, optimizer_options: Mapping[str, Any]) -> Estimate:
        from .activations import activation_bytes, attention_kernel
        from .timeline import PEAK_ITEMS, step_timeline

        s, spec, prec, strategy = self.settings, self.spec, self.prec, self.strategy
        act = _activation_settings(spec, prec, s, self.seq_len, strategy, self.gpu)
        if self.gpu is not None:
            from .kernels import check_request

            verdict = check_request(self.gpu, prec.name, s.attention)
            if verdict.level == "warning":
                self.warnings.append(verdict.message)
        kernel = attention_kernel(spec, act)
        backward = not gradient_free(self.opt)  # population methods evaluate under torch.no_grad
        saved = activation_bytes(spec, act) if backward else 0
        impl = (
            default_implementation(self.opt, s.device, **optimizer_options)
            if s.optimizer_impl == "auto"
            else s.optimizer_impl
        )
        caveat = create_graph_caveat(self.opt, device=s.device, **optimizer_options)
        if caveat:
            self.warnings.append(caveat)
        if strategy.optimizer_on_host:
            step_scratch = 0  # the optimizer steps on the host
        else:
            whole = step_temporary_bytes(
                self.opt,
                [t for t in spec.parameter_tensors() if t.trainable],
                prec.optimizer_dtype,
                device=s.device,
                implementation=impl,
                **optimizer_options,
            )
            step_scratch = strategy.step_temporaries(whole)

        blas: tuple[int, ...] = ()
        if s.device == "cuda":
            from .overheads import blas_workspace_allocations

            # without a named GPU: the default workspace of every architecture but Hopper/Blackwell
            blas = blas_workspace_allocations(self.gpu.compute_capability if self.gpu is not None else (8, 0))
        buffers = self._buffers(blas)
        buffer_bytes = sum(b.nbytes for b in buffers)

        context: ContextEstimate | None = None
        sim: TrainingSimulation | None = None
        if s.device == "cuda":
            from .overheads import cuda_context_bytes

            context = cuda_context_bytes(self.gpu, cuda_version)
            sim = self._allocator_replay(act, step_scratch, blas, optimizer_options)
            replayed = sim.run.timeline  # the replay ran the step timeline; its byte totals are ours
            assert replayed is not None  # compose_run leaves it None only for event lists it did not build
            timeline = replayed
        else:
            timeline = step_timeline(
                spec,
                act,
                param_bytes=self.placement.parameters,
                grad_bytes=self.placement.gradients,
                grad_dtype=prec.grad_dtype,
                optimizer_state_bytes=self.placement.optimizer_states,
                optimizer_temporaries_bytes=step_scratch,
                grad_accumulation=s.grad_accumulation,
                create_graph=needs_create_graph(self.opt),
                backward=backward,
            )
        # the buffers live all step (the replay allocates the BLAS workspace itself, outside the timeline)
        for point in timeline:
            point.by_category[Category.TEMPORARY.value] += buffer_bytes
        peak_point = timeline.peak
        by_category: dict[str, int | None] = dict(peak_point.by_category)
        tensor_bytes = sum(by_category[c] or 0 for c in TENSOR_CATEGORIES)
        allocator: dict[str, Any] | None = None
        if sim is None:
            by_category[Category.CUDA_CONTEXT.value] = 0  # no CUDA context, no caching allocator
            by_category[Category.FRAGMENTATION.value] = 0
            allocated = tensor_bytes
        else:
            assert context is not None
            by_category[Category.CUDA_CONTEXT.value] = context.bytes
            by_category[Category.FRAGMENTATION.value] = max(0, sim.peak_reserved - sim.peak_requested)
            allocator = sim.to_dict()
            # buffers the replay leaves out (one large tensor each) are allocated as they are
            allocated = sim.peak_allocated + sum(b.nbytes for b in buffers if b.name != "cublas_workspace")
        reserved = tensor_bytes + (by_category[Category.FRAGMENTATION.value] or 0)
        # what the temporary category holds at the peak, named: the largest tensors (the timeline's)
        # and the buffers that live all step
        at_peak = dict(timeline.peak_temporaries)
        for b in buffers:
            at_peak[b.name] = at_peak.get(b.name, 0) + b.nbytes
        at_peak = dict(sorted(at_peak.items(), key=lambda kv: -kv[1])[:PEAK_ITEMS])
        device_total = reserved + (by_category[Category.CUDA_CONTEXT.value] or 0)

        record = EstimateRecord(
            model=spec.name,
            parameters=spec.num_parameters,
            settings=EstimateSettings(
                optimizer=self.opt.name,
                precision=prec.name,
                batch_size=s.batch_size,
                seq_len=self.seq_len,
                checkpointing=s.checkpointing,
                attention=act.attention,
                device=s.device,
                gpus=s.gpus,
                zero=s.zero,
                offload=s.offload,
                grad_accumulation=s.grad_accumulation,
                attention_kernel=kernel,
                optimizer_impl=impl,
                alloc_conf=s.alloc_conf,
                population=population_of(self.opt.resolve_options(optimizer_options)) if not backward else None,
            ),
            model_states=ModelStates(
                self.placement.parameters, self.placement.gradients, self.placement.optimizer_states
            ),
            model_states_unsharded=ModelStates(**self.full),
            optimizer_state_breakdown=self.breakdown,
            cpu_offload=self.placement.cpu,
            activations_saved=saved,
            temporary_breakdown={
                "optimizer_step": step_scratch,
                **{b.name: b.nbytes for b in buffers},
                **{k: v for k, v in at_peak.items() if k not in ("optimizer step scratch",)},
            },
            temporary_at_peak=at_peak,
            peak=Peak(
                phase=peak_point.phase,
                allocated=allocated,
                reserved=reserved,
                device_total=device_total,
                by_category={c: by_category.get(c) for c in CATEGORIES},
            ),
            cuda_context=None
            if context is None
            else ContextFigure(context.bytes, context.low, context.high, context.basis),
            allocator=allocator,
            timeline=tuple(TimelinePoint(p.phase, p.label, dict(p.by_category)) for p in timeline),
            warnings=tuple(self.warnings),
            gpu=self._verdict(device_total),
            labels=EstimateLabels(
                optimizer_implementation=self.opt.implementation,
                optimizer_family=self.opt.family.value,
                precision_description=prec.description,
                param_dtype=prec.param_dtype,
                grad_dtype=prec.grad_dtype,
            ),
        )
        return Estimate(
            record=record,
            model=spec,
            optimizer=self.opt,
            precision=prec,
            settings=s,
            strategy=strategy,
            placement=self.placement,
            full_model_states=MappingProxyType(dict(self.full)),
            buffers=tuple(buffers),
            timeline=timeline,
            context=context,
            gpu=self.gpu,
            optimizer_temporaries=step_scratch,
        )

    def _buffers(self, blas: tuple[int, ...]) -> list[Buffer]:
        """The itemized temporary buffers of one rank, largest first: the cuBLAS workspace and the engine's."""
        from .parallel import largest_layer_parameters

        out: list[Buffer] = []
        if blas:
            out.append(
                Buffer(
                    "cublas_workspace",
                    sum(blas),
                    "cuBLAS/cuBLASLt workspace, allocated through the caching allocator on first matmul",
                )
            )
        out += self.strategy.buffers(
            EngineBuffers(
                num_parameters=self.spec.num_parameters,
                grad_bytes=self.prec.grad_bytes,
                param_bytes=self.prec.param_bytes,
                largest_layer_parameters=largest_layer_parameters(self.spec.parameter_tensors()),
            )
        )
        return sorted(out, key=lambda b: -b.nbytes)

    def _verdict(self, device_total: int) -> GpuVerdict | None:
        """Whether the peak fits the named GPU, against what CUDA lets a process use.

        That is `torch.cuda.get_device_properties().total_memory` where the preset records it;
        otherwise the driver total (an upper bound, stated in the preset's notes).
        """
        if self.gpu is None:
            return None
        usable = self.gpu.torch_total_memory or self.gpu.memory_bytes
        return GpuVerdict(self.gpu.name, self.gpu.memory_bytes, usable, device_total <= usable)

    def _allocator_replay(
        self, act: ActivationSettings, step_scratch: int, blas: tuple[int, ...], optimizer_options: Mapping[str, Any]
    ) -> TrainingSimulation:
        """The step through the caching-allocator simulator: rounding, segments, what stays cached."""
        from .allocator.training import simulate_training_step, states_per_parameter

        s, placement, prec = self.settings, self.placement, self.prec
        params = self.spec.parameter_tensors()
        states: list[Any]
        if not self.strategy.states_as_flat_buffer:
            trainable = [t for t in params if t.trainable]
            states = states_per_parameter(
                trainable,
                self.opt.state_tensors(trainable, prec.optimizer_dtype, **optimizer_options),
                master_bytes_per_element=prec.master_bytes,
                device="cuda",
            )
        else:
            # ZeRO / FSDP keep a rank's partition of the states as flat buffers: one allocation
            states = [(placement.optimizer_states,) if placement.optimizer_states else ()] + [()] * (len(params) - 1)
            self.warnings.append(
                "the allocator replay lays out the sharded states as one flat buffer and the "
                "parameters and gradients tensor by tensor; ZeRO/FSDP flat buffers and "
                "communication buckets make reserved memory differ: treat it as approximate"
            )
        if gradient_free(self.opt):
            return self._forward_only_replay(act, states, step_scratch, blas)
        return simulate_training_step(
            self.spec,
            act,
            param_bytes=placement.parameters,
            grad_bytes=placement.gradients,
            grad_dtype=prec.grad_dtype,
            optimizer_states=states,
            optimizer_temporaries=step_scratch,
            grad_accumulation=s.grad_accumulation,
            states_at_creation=self.opt.states_at_init or prec.master_weights,
            workspaces=blas,
            alloc_conf=s.alloc_conf,
            create_graph=needs_create_graph(self.opt),
        )

    def _forward_only_replay(
        self, act: ActivationSettings, states: list[Any], step_scratch: int, blas: tuple[int, ...]
    ) -> TrainingSimulation:
        """The allocator replay of a gradient-free step (population methods): the step timeline's
        forward under torch.no_grad, no backward, wrapped in the same program as a training step
        (allocator.training.training_events, which always replays a backward)."""
        from .activations import build_trace
        from .allocator.training import compose_run, replay_run, spread
        from .timeline import step_timeline

        params = self.spec.parameter_tensors()
        numels = [p.numel for p in params]
        rows = [tuple(n for n in row if n) for row in states]
        events: list[Any] = []
        phases: list[str | None] = []
        timeline = step_timeline(
            self.spec,
            act,
            param_bytes=self.placement.parameters,
            grad_bytes=0,
            grad_dtype=self.prec.grad_dtype,
            optimizer_state_bytes=sum(map(sum, rows)),
            optimizer_temporaries_bytes=step_scratch,
            grad_accumulation=self.settings.grad_accumulation,
            events=events,
            event_phases=phases,
            backward=False,
        )
        run = compose_run(
            [p.name for p in params],
            spread(self.placement.parameters, numels),
            events,
            phases,
            optimizer_states=rows,
            optimizer_temporaries=spread(step_scratch, numels),
            buffers=dict(build_trace(self.spec, act).buffers),
            states_at_creation=True,  # the population exists before the first generation
            workspaces=blas,
        )
        run.timeline = timeline
        return replay_run(run, self.settings.alloc_conf)


def _resolve_seq_len(spec: ModelSpec, seq_len: int | None, warnings: list[str]) -> int:
    """Tokens per sample: given, or the model's context capped at DEFAULT_MAX_SEQ_LEN.

    A vision transformer's sequence is fixed by its image and patch sizes (patches + the class token).
    A sequence longer than the model's positions is an error for learned absolute position
    embeddings (the lookup would fail) and a warning for rotary ones (it runs, quality degrades).
    """
    if spec.model_type == "vit":
        assert spec.num_patches is not None  # a ViT's config always gives its patches
        tokens = spec.num_patches + 1
        if seq_len is not None and seq_len != tokens:
            raise ParameterError(
                f"{spec.name} sees {tokens} tokens per image ({spec.num_patches} patches "
                f"+ class token); drop {{seq_len}} or pass {tokens}",
                "seq_len",
            )
        return tokens
    max_positions = spec.max_positions
    assert max_positions is not None  # every text family has a position limit
    if seq_len is None:
        return min(max_positions, DEFAULT_MAX_SEQ_LEN)
    if seq_len > max_positions:
        if spec.model_type in LEARNED_POSITIONS:
            raise ParameterError(
                f"{{seq_len}} {seq_len} exceeds the {max_positions} learned positions of "
                f"{spec.name}; use {{seq_len}} {max_positions} or less",
                "seq_len",
            )
        warnings.append(
            f"seq_len={seq_len} is longer than the {max_positions} positions {spec.name} "
            "was trained with (rotary embeddings run, but quality may degrade)"
        )
    return seq_len
