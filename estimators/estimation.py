"""The analytic estimate: from a model, an optimizer and the training knobs to an `EstimateRecord`.

`estimate()` validates the knobs, asks each part for its figure — the optimizer spec for states and
step scratch, the model family for activations, the parallel engine for placement and buffers, the
overheads for the CUDA context, the allocator simulator for reserved memory — and builds the result
once. The result (`Estimate`) is the record plus the specs it was computed from; everything
downstream reads `Estimate.record` (docs/architecture.md, "The flow"). Components that are not
modelled are None ("absent"), never 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .dtypes import dtype_bytes
from .errors import MemprofUserError, ParameterError
from .families import FAMILIES
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
from .parallel import (
    Buffer,
    EngineBuffers,
    EngineSchedule,
    ModelStateBytes,
    ParallelStrategy,
    Placement,
    strategy_for,
)
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
from .vocabulary import ATTENTION, CATEGORIES, CHECKPOINTING, DEVICES, TENSOR_CATEGORIES, Category, Phase

if TYPE_CHECKING:
    from .activations import ActivationSettings
    from .allocator.training import TrainingSimulation
    from .gpus import GPUSpec
    from .overheads import ContextEstimate
    from .parallel.pipeline import PipelineStage
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
CUDA_MODULE_LOADING = ("lazy", "eager")  # CUDA_MODULE_LOADING's values (CUDA reads LAZY / EAGER)
ZERO_GRAD = ("set-to-none", "zeros")  # timeline.ZERO_GRAD: what zero_grad does between steps
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
    cuda_version: str | None = None  # the CUDA runtime PyTorch was built with ("12.4"): the context
    cuda_module_loading: str | None = None  # CUDA_MODULE_LOADING ("lazy" | "eager"); None: unset
    # the loop's choices (timeline.step_timeline): the output kept through backward, zero_grad's mode
    keep_output: bool = True
    zero_grad: str = "set-to-none"
    engine: str | None = None  # the parallel engine (parallel.ENGINES); None: implied by gpus / zero
    fsdp_unit: str = "block"  # FSDP2's wrapping: fully_shard per block and the root, or the model only
    gpus_per_node: int = 8  # ranks sharing one host's RAM (offloaded states are provisioned per node)
    target_len: int | None = None  # an encoder-decoder's decoder length; None: seq_len
    tp: int = 1  # tensor-parallel ranks (parallel.tensor): the estimate is one rank's

    def validate(self) -> None:
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.seq_len is not None:
            _check_int("seq_len", self.seq_len, 1, MAX_SEQ_LEN)
        if self.target_len is not None:
            _check_int("target_len", self.target_len, 1, MAX_SEQ_LEN)
        _check_choice("checkpointing", self.checkpointing, CHECKPOINTING)
        _check_choice("attention", self.attention, ATTENTION)
        _check_choice("device", self.device, DEVICES)
        _check_int("grad_accumulation", self.grad_accumulation, 1, MAX_GRAD_ACCUMULATION)
        _check_int("gpus_per_node", self.gpus_per_node, 1, 1 << 16)
        _check_choice("optimizer_impl", self.optimizer_impl, OPTIMIZER_IMPLS)
        if not isinstance(self.keep_output, bool):
            raise ParameterError(f"{{keep_output}} must be true or false, got {self.keep_output!r}", "keep_output")
        _check_choice("zero_grad", self.zero_grad, ZERO_GRAD)
        if self.alloc_conf is not None:
            if self.device != "cuda":
                raise ParameterError(
                    "{alloc_conf} configures the CUDA caching allocator; drop it with {device} cpu",
                    "alloc_conf",
                    "device",
                )
            from .allocator.config import parse_alloc_conf

            parse_alloc_conf(self.alloc_conf)
        self._validate_cuda_stack()

    def _validate_cuda_stack(self) -> None:
        for param, value in (("cuda_version", self.cuda_version), ("cuda_module_loading", self.cuda_module_loading)):
            if value is not None and self.device != "cuda":
                raise ParameterError(
                    f"{{{param}}} describes the CUDA stack; drop it with {{device}} cpu", param, "device"
                )
        if self.cuda_version is not None:
            from .cuda import check_cuda_version

            try:
                check_cuda_version(self.cuda_version)
            except MemprofUserError as e:
                raise ParameterError(str(e).replace("CUDA version", "{cuda_version}", 1), "cuda_version") from None
        value = self.cuda_module_loading
        if value is not None and (not isinstance(value, str) or value.strip().lower() not in CUDA_MODULE_LOADING):
            raise ParameterError(
                f"invalid {{cuda_module_loading}} {value!r}; valid: {', '.join(CUDA_MODULE_LOADING)}",
                "cuda_module_loading",
            )


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
    allocator_run: TrainingSimulation | None = None  # the caching-allocator replay (CUDA), for `fit`

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
    # a gradient has its parameter's dtype (LoRA's float32 adapters in a 16-bit model, say)
    grad_bytes = sum(t.numel * (precision.grad_bytes if t.dtype is None else dtype_bytes(t.dtype)) for t in trainable)
    breakdown: dict[str, int] = {}
    for state in optimizer.state_tensors(trainable, state_dtype(trainable, precision), **optimizer_options):
        if device == "cuda" and getattr(state, "host", False):
            continue
        breakdown[state.key] = breakdown.get(state.key, 0) + state.nbytes
    if precision.master_weights:
        breakdown["master_weights"] = trainable_numel * precision.master_bytes
    no_grads = gradient_free(optimizer)  # population methods run no backward
    by_category = {
        Category.PARAMETERS.value: parameters,
        Category.GRADIENTS.value: 0 if no_grads else grad_bytes,
        Category.OPTIMIZER_STATES.value: sum(breakdown.values()),
    }
    return by_category, breakdown


def state_dtype(trainable: Sequence[ParamTensor], precision: Precision) -> str:
    """The dtype optimizer states are kept in: the precision's, or the trainable tensors' own when
    they all have one (LoRA's float32 adapters: torch's states are zeros_like(param))."""
    own = {t.dtype for t in trainable}
    if len(own) == 1:
        (dtype,) = own
        if dtype is not None:
            return dtype
    return precision.optimizer_dtype


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
    cuda_module_loading: str | None = None,
    keep_output: bool = True,
    zero_grad: str = "set-to-none",
    head: str | None = None,
    lora_rank: int | None = None,
    lora_targets: str | Sequence[str] | None = None,
    lora_dropout: float = 0.0,
    quantize: str | None = None,
    double_quant: bool = False,
    parallel: ParallelStrategy | None = None,
    pipeline: PipelineStage | None = None,
    deepspeed: Mapping[str, Any] | None = None,
    pp: int = 1,
    pp_schedule: str = "1f1b",
    microbatches: int = 1,
    virtual_stages: int = 1,
    pp_stage: int | None = None,
    tp: int = 1,
    engine: str | None = None,
    fsdp_unit: str = "block",
    gpus_per_node: int = 8,
    target_len: int | None = None,
    **optimizer_options: Any,
) -> Estimate:
    """Estimate the memory of training `model` with `optimizer` at `precision`, per device.

    optimizer_impl: "auto" (what torch picks for the device: foreach on CUDA, the single-tensor loop
    on the CPU), "single_tensor", "foreach" or "fused". cuda_version: the CUDA runtime, for the
    context estimate (e.g. "12.4"; default: any) and the check that it builds kernels for `gpu`;
    cuda_module_loading: CUDA_MODULE_LOADING, "lazy" or "eager" (default: unset, which PyTorch turns
    into lazy; CUDA older than 11.7 loads eagerly whatever it says). alloc_conf: the PYTORCH_CUDA_ALLOC_CONF the
    allocator replay runs with (e.g. "expandable_segments:True"; default: PyTorch's defaults).
    keep_output: the loop keeps the model output through backward (`out = model(**batch)`, the
    default) or only the loss (`loss = model(**batch).loss`, as the Hugging Face Trainer does): then
    the logits and the key/value cache are freed in the forward. zero_grad: "set-to-none" (torch 2's
    default) or "zeros" (`zero_grad(set_to_none=False)`: gradients stay allocated through the next
    forward and each backward adds into them). head: the task head (estimators/heads.py: causal-lm,
    masked-lm, seq-cls, token-cls, image-cls, seq2seq-lm); None: the one the config's
    `architectures` names, else the preset's or family's own.
    lora_rank / lora_targets / lora_dropout: train LoRA adapters (peft) of that rank on the named
    linear modules (names separated by commas, "all-linear", or None for peft's default for the
    model type) with that dropout, the base model frozen; quantize ("int8", "nf4", "fp4") and
    double_quant: its base linear weights in bitsandbytes' storage, QLoRA (memprof.estimators.adapters).
    engine: "ddp", "fsdp" (FSDP2's fully_shard; zero 2 or 3) or "deepspeed" (ZeRO 1-3); None: DDP for
    several GPUs at zero 0, DeepSpeed for zero 1-3 (estimators/parallel/__init__.py). fsdp_unit:
    "block" (fully_shard per transformer block and on the root, the torchtitan recipe) or "model".
    gpus_per_node: the ranks on one host, whose offloaded states share its RAM (`cpu_offload_per_node`).
    target_len: the decoder's length of an encoder-decoder model (t5; None: seq_len, the encoder's).
    deepspeed: DeepSpeed's zero_optimization settings that size its buffers (reduce_bucket_size,
    allgather_bucket_size, contiguous_gradients, overlap_comm, stage3_*: parallel.deepspeed.DeepSpeedConfig).
    pp, pp_schedule ("gpipe", "1f1b", "interleaved-1f1b"), microbatches, virtual_stages: pipeline
    parallelism over `pp` stages (parallel.pipeline), `batch_size` being the micro-batch, combined with
    the data-parallel knobs (`gpus` ranks per stage); the estimate is stage `pp_stage`'s, or by default
    the stage with the largest peak (the warnings give every stage's). pipeline / parallel: a stage or
    an engine built by the caller. tp: tensor parallelism over `tp` ranks (Megatron's column / row split
    of a Llama-like block, parallel.tensor): the estimate is one rank's.
    """
    if pp != 1 or pp_stage is not None:
        if pipeline is not None:
            raise ParameterError("give {pp} or a pipeline stage, not both", "pp")
        from .parallel.pipeline import PipelineStage as _Stage

        args = dict(locals())
        for name in ("optimizer_options", "pp", "pp_schedule", "microbatches", "virtual_stages", "pp_stage"):
            args.pop(name)
        args.pop("pipeline")
        args.pop("_Stage")
        stages = range(pp) if pp_stage is None else [pp_stage]
        runs = [
            estimate(
                **args,
                **optimizer_options,
                pipeline=_Stage(pp, s, pp_schedule, microbatches, virtual_stages),
            )
            for s in stages
        ]
        worst = max(runs, key=lambda e: e.record.peak.allocated or 0)
        if len(runs) > 1:
            peaks = ", ".join(f"{i}: {e.record.peak.allocated:,} B" for i, e in zip(stages, runs))
            note = (
                f"pipeline: the stage with the largest peak of {pp} ({pp_schedule}, {microbatches} micro-batches); "
                f"stage peaks {peaks}"
            )
            worst = _with_warning(worst, note)
        return worst
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
        cuda_version=cuda_version,
        cuda_module_loading=cuda_module_loading,
        keep_output=keep_output,
        zero_grad=zero_grad,
        engine=engine,
        fsdp_unit=fsdp_unit,
        gpus_per_node=gpus_per_node,
        target_len=target_len,
        tp=tp,
    )
    settings.validate()
    spec = model.with_head(head) if isinstance(model, ModelSpec) else load_model(model, head=head)
    tp_note = None
    if tp != 1:  # one tensor-parallel rank runs a model with 1/tp of the heads and MLP features
        from .parallel.tensor import local_spec

        whole_parameters = spec.num_parameters
        spec = local_spec(spec, tp)
        tp_note = (
            f"tensor parallel: one rank of {tp} (Megatron's column / row split of each block; embeddings, norms "
            f"and head replicated): {spec.num_parameters:,} of the model's {whole_parameters:,} parameters"
        )
    opt = get_optimizer(optimizer)
    prec = get_precision(precision)
    if lora_rank is not None or quantize is not None or lora_targets is not None or lora_dropout or double_quant:
        from .adapters import adapt

        spec = adapt(
            spec,
            prec,
            lora_rank=lora_rank,
            lora_targets=lora_targets,
            lora_dropout=lora_dropout,
            quantize=quantize,
            double_quant=double_quant,
        )
        if zero or offload != "none" or engine not in (None, "ddp") or parallel is not None or pipeline is not None:
            raise ParameterError(
                "LoRA / quantized weights with ZeRO, FSDP, pipelines or CPU offload are not modelled (the "
                "engines' partitions and buckets of frozen and quantized weights); drop {zero} / {offload} "
                "(data parallel with {gpus} works)",
                "zero",
                "offload",
                "gpus",
            )
    # parallel: an engine the caller built with its own options (DeepSpeedZeRO with its ds_config)
    ds = tuple(sorted((deepspeed or {}).items()))  # DeepSpeed's zero_optimization settings
    strategy = strategy_for(gpus, zero, offload, engine, fsdp_unit, ds) if parallel is None else parallel
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
    warnings: list[str] = [] if tp_note is None else [tp_note]
    length = _resolve_seq_len(spec, seq_len, warnings)
    warnings += FAMILIES[spec.model_type].estimate_notes
    if target_len is not None and FAMILIES[spec.model_type].task != "seq2seq-lm":
        raise ParameterError(
            f"{{target_len}} is the decoder's length of an encoder-decoder model (t5); {spec.name} "
            f"({spec.model_type}) has one sequence: use {{seq_len}}",
            "target_len",
            "seq_len",
        )
    if optimizer_impl == "fused" and "fused" in opt.options and "fused" not in optimizer_options:
        # torch's fused kernels also keep `step` on the device: the state follows the implementation
        optimizer_options = {**optimizer_options, "fused": True}

    # pipeline: one stage of a pipeline-parallel run holds its own blocks' states (what its
    # data-parallel engine shards); `model_states_unsharded` is then the stage's
    held: Any = spec
    if pipeline is not None:
        pipeline.validate(spec.num_layers)
        if grad_accumulation != 1:
            raise ParameterError(
                "{grad_accumulation} with {pp}: the pipeline's micro-batches are the accumulation; use {microbatches}",
                "grad_accumulation",
                "pp",
            )
        held = _Tensors(tuple(pipeline.tensors(spec.parameter_tensors(), spec.num_layers)))
    full, breakdown = model_state_bytes(held, opt, prec, device, **optimizer_options)
    fp32_grads = 0 if gradient_free(opt) else sum(t.numel for t in held.parameter_tensors() if t.trainable) * 4
    rank_states = full[Category.OPTIMIZER_STATES.value]
    bind = getattr(strategy, "bind", None)
    if bind is not None:  # an engine that lays the rank out from the model's tensors (DeepSpeed)
        bind(held.parameter_tensors(), prec.param_bytes, prec.grad_bytes)
        rank_states = _flat_partition_states(strategy, held, opt, device, optimizer_options)
        warnings += getattr(strategy, "warnings", [])
    per_rank = None
    local = strategy.local_tensors(held.parameter_tensors())
    if local is not None:  # an engine that shards tensor by tensor (FSDP2): the rank's own tensors, exact
        rank, breakdown = model_state_bytes(_Tensors(local), opt, prec, device, **optimizer_options)
        per_rank = (
            rank[Category.PARAMETERS.value],
            rank[Category.GRADIENTS.value],
            rank[Category.OPTIMIZER_STATES.value],
        )
    placement = strategy.place(
        ModelStateBytes(
            full[Category.PARAMETERS.value],
            full[Category.GRADIENTS.value],
            rank_states,
            fp32_grads,
            per_rank,
        )
    )
    return _StepEstimator(
        spec, opt, prec, settings, strategy, placement, full, breakdown, length, gpu_spec, warnings, pipeline
    ).build(optimizer_options)


def _parallel_settings(pipeline: PipelineStage | None, tp: int) -> dict[str, Any]:
    """The record's pipeline and tensor-parallel settings, only those in use: pp, pp_schedule,
    microbatches, virtual_stages and pp_stage (the stage whose figures these are: the one asked for, or
    the stage with the largest peak) with a pipeline; tp above 1."""
    out: dict[str, Any] = {}
    if pipeline is not None:
        out.update(
            pp=pipeline.stages,
            pp_schedule=pipeline.schedule,
            microbatches=pipeline.microbatches,
            virtual_stages=pipeline.virtual,
            pp_stage=pipeline.stage,
        )
    if tp != 1:
        out["tp"] = tp
    return out


def _engine_name(s: Settings) -> str | None:
    """The engine the settings run (parallel.default_engine when not named); None: one device."""
    from .parallel import default_engine

    return s.engine or default_engine(s.gpus, s.zero)


@dataclass(frozen=True)
class _Tensors:
    """A rank's own parameter tensors, as `model_state_bytes` reads a model."""

    tensors: tuple[ParamTensor, ...]

    def parameter_tensors(self) -> tuple[ParamTensor, ...]:
        return self.tensors


def _with_warning(e: Estimate, note: str) -> Estimate:
    from dataclasses import replace

    return replace(e, record=replace(e.record, warnings=(*e.record.warnings, note)))


def _add_in_flight(timeline: Timeline, stage: PipelineStage, buffers: tuple[int, int]) -> None:
    """A pipeline stage holds the activations of its other micro-batches in flight (parallel.pipeline):
    what one micro-batch holds when its forward ends, added to the replayed micro-batches' moments
    (the first replayed one without gradients, the second with the earlier ones' accumulated); and
    the schedule's buffers (`PipelineStage.schedule_buffers`): receive buffers all step, the last
    stage's kept outputs."""
    end = next((p for p in timeline if p.label.startswith("forward end")), None)
    if end is None:
        return
    held = end.by_category[Category.ACTIVATIONS.value]
    k = stage.in_flight
    # GPipe's later backwards run with fewer forwards left in flight; 1F1B's steady state with k
    later = k - 1 if stage.microbatches > k else k - 2
    persistent, output = buffers
    for point in timeline:
        point.by_category[Category.TEMPORARY.value] += persistent
        if point.phase == Phase.OPTIMIZER_STEP.value:
            point.by_category[Category.TEMPORARY.value] += stage.outputs_kept(2) * output
            continue
        second = "micro-batch 2/" in point.label
        extra = max(0, later) if second else k - 1
        point.by_category[Category.ACTIVATIONS.value] += extra * held
        # the replay frees its own output after the loss: the schedule's copy stays
        point.by_category[Category.TEMPORARY.value] += stage.outputs_kept(2 if second else 1) * output


def _flat_partition_states(
    strategy: ParallelStrategy, spec: ModelSpec, opt: OptimizerSpec, device: str, options: Mapping[str, Any]
) -> int:
    """The optimizer states of a rank that steps one flat fp32 partition (DeepSpeed ZeRO): the
    optimizer's states of that tensor and the partition itself (the master weights)."""
    trainable = [t for t in spec.parameter_tensors() if t.trainable]
    flat: list[ParamTensor] = strategy.optimizer_tensors(trainable)  # type: ignore[attr-defined]
    states = sum(
        st.nbytes
        for st in opt.state_tensors(flat, "float32", **options)
        if not (device == "cuda" and getattr(st, "host", False))
    )
    return states + sum(t.numel for t in flat) * 4


def _param_dtype_label(spec: ModelSpec, dtype: str) -> str:
    """The parameters' dtype as the table shows it: a quantized base reads "nf4 base + float32"."""
    a = spec.adapter
    return dtype if a is None or not a.quantize else f"{a.quantize} base + {dtype}"


def _adapter_settings(spec: ModelSpec) -> dict[str, Any]:
    """The record's LoRA / quantization settings (none for full training)."""
    a = spec.adapter
    if a is None:
        return {}
    return {
        "lora_rank": a.rank,
        "lora_targets": a.requested or "default",
        "lora_modules": len(a.targets),
        "lora_dropout": float(a.dropout),
        "quantize": a.quantize,
        "double_quant": a.double_quant if a.quantize else None,
    }


def _allocator_summary(sim: TrainingSimulation, spec: ModelSpec, act: ActivationSettings) -> dict[str, Any]:
    """What the allocator did at the peak and the reserved range over allocation orders
    (allocator.explain.summarize), its allocations named from the activation trace."""
    from .activations import build_trace
    from .allocator.explain import describe_allocation, summarize

    names: dict[int, str] = {}

    def name(ident: Any) -> str:
        if not names and isinstance(ident, int):  # built at the first step tensor named (a dozen are)
            for op in build_trace(spec, act).ops:  # the estimate's own trace (build_trace caches it)
                for t in op.outputs:
                    names[id(t)] = f"{op.module or op.op}: {t.name} ({op.op})"
        return describe_allocation(ident, names)

    run = sim.run
    return summarize(
        run.events,
        sim.result.config,
        sim.result,
        measured_from=run.measured_from,
        where=run.where,
        name=name,
        capture=sim.capture,
    )


def _cuda_text(cuda_version: str | None) -> str | None:
    """ "12.4" for "12.4", "12.4.1" or "cu124"; None stays None."""
    if cuda_version is None:
        return None
    from .cuda import check_cuda_version

    return check_cuda_version(cuda_version).text


def _module_loading(s: Settings) -> str:
    """ "lazy" or "eager": how CUDA loads kernels in the run (overheads.lazy_loading)."""
    from .overheads import lazy_loading

    return "lazy" if lazy_loading(s.cuda_version, module_loading=s.cuda_module_loading).enabled else "eager"


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
        strategy = strategy_for(settings.gpus, settings.zero, settings.offload, settings.engine, settings.fsdp_unit)
    implementation = FAMILIES[spec.model_type].default_attention if settings.attention == "auto" else settings.attention
    compute = prec.compute_dtype if prec.autocast else prec.param_dtype
    param_dtype, autocast = prec.param_dtype, prec.autocast
    if strategy.compute_without_autocast:
        # FSDP2's MixedPrecisionPolicy: the layers run on weights gathered in the compute dtype
        param_dtype, autocast = compute, False
    return ActivationSettings(
        batch_size=settings.batch_size,
        seq_len=seq_len,
        compute_dtype=compute,
        param_dtype=param_dtype,
        autocast=autocast,
        attention=implementation,
        checkpointing=settings.checkpointing,
        training=True,
        device=settings.device,
        sharded_params=strategy.gathers_parameters_per_layer,
        compute_capability=None if gpu is None or settings.device != "cuda" else gpu.compute_capability,
        target_len=settings.target_len,
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
    pipeline: PipelineStage | None = None

    def build(self, optimizer_options: Mapping[str, Any]) -> Estimate:
        from .activations import activation_bytes, attention_kernel
        from .timeline import PEAK_ITEMS, step_timeline

        s, spec, prec, strategy = self.settings, self.spec, self.prec, self.strategy
        act = _activation_settings(spec, prec, s, self.seq_len, strategy, self.gpu)
        if self.gpu is not None:
            from .kernels import check_request

            verdict = check_request(self.gpu, prec.name, s.attention)
            if verdict.level == "warning":
                self.warnings.append(verdict.message)
            if s.cuda_version is not None:
                from .kernels import check_cuda

                runs = check_cuda(self.gpu, s.cuda_version)
                if runs.level == "error":
                    raise ParameterError(f"{{gpu}} {self.gpu.name}: {runs.message}", "gpu", "cuda_version")
        if s.cuda_version is not None:
            from .cuda import check_cuda_version

            note = check_cuda_version(s.cuda_version).note  # a release newer than memprof's table
            if note:
                self.warnings.append(note)
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
            stepped = [t for t in spec.parameter_tensors() if t.trainable]
            if self.pipeline is not None:
                stepped = self.pipeline.tensors(stepped, spec.num_layers)
            flat = getattr(strategy, "optimizer_tensors", None)
            if flat is not None:  # the optimizer steps the rank's flat partition (DeepSpeed ZeRO)
                stepped = flat(stepped)
            whole = step_temporary_bytes(
                self.opt,
                stepped,
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

            context = cuda_context_bytes(self.gpu, s.cuda_version, module_loading=s.cuda_module_loading)
        # the caching-allocator replay lays out one device's ordinary step; a pipeline stage's schedule
        # and DeepSpeed's flat buffers and buckets are in the byte timeline only
        replayable = self.pipeline is None and getattr(strategy, "gradient_residency", None) is None
        if s.device == "cuda" and not replayable:
            self.warnings.append(
                f"{'pipeline stage' if self.pipeline is not None else strategy.name}: tensor bytes from the step "
                "timeline; no caching-allocator replay (reserved memory and fragmentation not predicted beyond them)"
            )
        if s.device == "cuda" and replayable:
            sim = self._allocator_replay(act, step_scratch, blas, optimizer_options)
            replayed = sim.run.timeline  # the replay ran the step timeline; its byte totals are ours
            assert replayed is not None  # compose_run leaves it None only for event lists it did not build
            timeline = replayed
        else:
            residency = getattr(strategy, "gradient_residency", None)
            timeline = step_timeline(
                spec,
                act,
                param_bytes=self.placement.parameters,
                grad_bytes=self.placement.gradients,
                grad_dtype=prec.grad_dtype,
                optimizer_state_bytes=self.placement.optimizer_states,
                optimizer_temporaries_bytes=step_scratch,
                grad_accumulation=s.grad_accumulation if self.pipeline is None else 1 + self.pipeline.accumulates,
                create_graph=needs_create_graph(self.opt),
                backward=backward,
                keep_output=s.keep_output,
                zero_grad=s.zero_grad,
                gradient_residency=residency() if residency is not None else None,
                engine=self._engine_schedule(),
                **self._pipeline_replay(),
            )
            if self.pipeline is not None:
                from .activations import build_trace

                schedule = self.pipeline.schedule_buffers(build_trace(spec, act), spec.num_layers)
                _add_in_flight(timeline, self.pipeline, schedule)
        # the buffers live all step (the replay allocates the BLAS workspace itself, outside the timeline)
        for point in timeline:
            point.by_category[Category.TEMPORARY.value] += buffer_bytes
        # an engine's buffers that live through one phase (DeepSpeed's reduction bucket in the backward)
        by_phase: dict[str, list[Buffer]] = getattr(strategy, "phase_buffers", dict)()
        for point in timeline:
            point.by_category[Category.TEMPORARY.value] += sum(b.nbytes for b in by_phase.get(point.phase, ()))
        all_step = list(buffers)
        buffers = buffers + list({b.name: b for bs in by_phase.values() for b in bs}.values())
        # buffers the timeline counts elsewhere, named in temporary_breakdown (DeepSpeed's stage 1-2 bucket)
        itemized: list[Buffer] = getattr(strategy, "itemized", list)()
        peak_point = timeline.peak
        by_category: dict[str, int | None] = dict(peak_point.by_category)
        tensor_bytes = sum(by_category[c] or 0 for c in TENSOR_CATEGORIES)
        allocator: dict[str, Any] | None = None
        if sim is None:
            # no caching allocator replayed (the CPU; a pipeline stage on CUDA: tensor bytes only)
            by_category[Category.CUDA_CONTEXT.value] = 0 if context is None else context.bytes
            by_category[Category.FRAGMENTATION.value] = 0
            allocated = tensor_bytes
        else:
            assert context is not None
            by_category[Category.CUDA_CONTEXT.value] = context.bytes
            by_category[Category.FRAGMENTATION.value] = max(0, sim.peak_reserved - sim.peak_requested)
            allocator = sim.to_dict()
            allocator.update(_allocator_summary(sim, spec, act))
            # buffers the replay leaves out (one large tensor each) are allocated as they are
            allocated = sim.peak_allocated + sum(b.nbytes for b in buffers if b.name != "cublas_workspace")
            # an engine's changing buffers are in the timeline, not in the replay's allocations
            allocated = max(allocated, tensor_bytes) if self._engine_schedule() is not None else allocated
        reserved = tensor_bytes + (by_category[Category.FRAGMENTATION.value] or 0)
        # what the temporary category holds at the peak, named: the largest tensors (the timeline's)
        # and the buffers that live all step
        at_peak = dict(timeline.peak_temporaries)
        for b in [*all_step, *by_phase.get(peak_point.phase, ())]:
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
                cuda_version=_cuda_text(s.cuda_version),
                cuda_module_loading=None if context is None else _module_loading(s),
                population=population_of(self.opt.resolve_options(optimizer_options)) if not backward else None,
                keep_output=s.keep_output,
                zero_grad=s.zero_grad,
                head=getattr(spec, "head", None),
                engine=_engine_name(s),
                fsdp_unit=s.fsdp_unit if _engine_name(s) == "fsdp" else None,
                target_len=(s.target_len or self.seq_len) if FAMILIES[spec.model_type].task == "seq2seq-lm" else None,
                **_adapter_settings(spec),
                **_parallel_settings(self.pipeline, s.tp),
            ),
            model_states=ModelStates(
                self.placement.parameters, self.placement.gradients, self.placement.optimizer_states
            ),
            model_states_unsharded=ModelStates(**self.full),
            optimizer_state_breakdown=self.breakdown,
            cpu_offload=self.placement.cpu,
            cpu_offload_per_node=self.placement.cpu * min(s.gpus, s.gpus_per_node) if self.placement.cpu else None,
            activations_saved=saved,
            temporary_breakdown={
                "optimizer_step": step_scratch,
                **{b.name: b.nbytes for b in [*buffers, *itemized]},
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
                param_dtype=_param_dtype_label(spec, prec.param_dtype),
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
            allocator_run=sim,
        )

    def _engine_schedule(self) -> EngineSchedule | None:
        """The engine's buffers through the step (FSDP2's gathers and reductions), or None."""
        from .parallel import largest_layer_parameters

        act = _activation_settings(self.spec, self.prec, self.settings, self.seq_len, self.strategy, self.gpu)
        return self.strategy.schedule(
            self.spec.parameter_tensors(),
            EngineBuffers(
                num_parameters=self.spec.num_parameters,
                grad_bytes=self.prec.grad_bytes,
                param_bytes=self.prec.param_bytes,
                largest_layer_parameters=largest_layer_parameters(self.spec.parameter_tensors()),
                gathered_bytes=dtype_bytes(act.param_dtype),
                reduce_bytes=self.prec.grad_bytes,
                device=self.settings.device,
            ),
        )

    def _pipeline_replay(self) -> dict[str, Any]:
        """A pipeline stage's part of the step: its blocks' forward (replayed for two micro-batches,
        the second with the first's gradients, when the step has more than one)."""
        if self.pipeline is None:
            return {}
        stage, layers = self.pipeline, self.spec.num_layers
        return {"trace_filter": lambda tr: stage.filter_trace(tr, layers)}

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
                # the engines' gradient buckets cover what trains (LoRA: the adapters alone)
                num_parameters=sum(t.numel for t in self.spec.parameter_tensors() if t.trainable),
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
            # an engine that shards tensor by tensor (FSDP2): the states of the rank's own shards
            params = self.strategy.local_tensors(params) or params
            trainable = [t for t in params if t.trainable]
            states = states_per_parameter(
                params,  # one row per tensor; frozen ones (an adapter's base weights) keep no state
                self.opt.state_tensors(trainable, state_dtype(trainable, prec), **optimizer_options),
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
            keep_output=s.keep_output,
            zero_grad=s.zero_grad,
            engine=self._engine_schedule(),
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
