"""`memprof.trace`: an estimate of any model, from its own training step traced on fake tensors.

    def workload(batch_size=8, seq_len=1024):          # called by memprof on fake tensors
        model = GPT(GPTConfig())
        x = torch.randint(0, 50304, (batch_size, seq_len))
        return memprof.Workload(model, (x, x), loss=lambda out, inputs: out[1])

    memprof.trace(workload, optimizer="adamw", precision="bf16-mixed", device="cuda").record

The record is the `EstimateRecord` of the analytic estimator (docs/architecture.md), built from the
traced step (memprof.tracer.run): model states and the optimizer's states by key, exact to the byte;
the peak of live tensor bytes with its phase and categories; the timeline; and on `device="cuda"`
the step's allocation events replayed through the caching-allocator simulator (reserved memory,
fragmentation) plus the CUDA context from measured figures, as the analytic estimate adds them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from memprof.estimators.errors import MemprofUserError, ParameterError, UserCodeError, unknown_name
from memprof.estimators.precision import get_precision
from memprof.estimators.records import EstimateRecord
from memprof.estimators.records.estimate import (
    ContextFigure,
    EstimateLabels,
    EstimateSettings,
    GpuVerdict,
    ModelStates,
    Peak,
    TimelinePoint,
)
from memprof.estimators.vocabulary import CATEGORIES, DEVICES, TENSOR_CATEGORIES, Category, Phase
from memprof.factory import NotAnalytic, is_code_ref, resolve_factory
from memprof.tracer.run import StepTrace, trace_step
from memprof.workload import Workload

__all__ = ["Trace", "estimate_or_trace", "trace", "trace_preset", "traced_optimizer_rows"]

TRACED = (
    "traced: the training step ran on fake tensors (memprof.tracer); model states are exact, the peak is the step's own"
)
CUDA_FROM_CPU = (
    "device cuda, traced on the CPU (fake CUDA tensors need a CUDA build of torch): allocator rounding, "
    "fragmentation (a replay of the traced allocations), the CUDA context, the optimizer's foreach default, "
    "its step counters in host memory, the SDPA kernel CUDA picks (memprof.estimators.kernels) and dropout's "
    "fused kernel (a bool mask, memprof.tracer.rules) are modelled, and a traced *-mixed step runs CUDA "
    "autocast's op lists (memprof.tracer.cuda_autocast); not accounted for: other kernels that keep other "
    "tensors or temporaries on CUDA than on the CPU"
)
# knobs of `memprof estimate` a traced step takes from the user's own code instead
_NOT_TRACED = {
    "checkpointing": "none",
    "attention": "auto",
    "gpus": 1,
    "zero": 0,
    "offload": "none",
    "grad_accumulation": 1,
    "pp": 1,  # pipeline parallelism (estimators.parallel): one device runs the whole traced step
    "pp_schedule": "1f1b",
    "microbatches": 1,
    "virtual_stages": 1,
}


@dataclass(frozen=True)
class Trace:
    """A traced estimate: the `EstimateRecord` (as `memprof.estimate` returns one) and the raw trace."""

    record: EstimateRecord
    step: StepTrace

    def to_dict(self) -> dict[str, Any]:
        """The estimate JSON (docs/architecture.md)."""
        return self.record.to_dict()


def _check_knobs(knobs: dict[str, Any]) -> None:
    for name, default in _NOT_TRACED.items():
        value = knobs.pop(name, default)
        if value is not None and value != default:
            raise ParameterError(
                f"{{{name}}} {value} is not applied to a traced step (it runs the workload's own code, on one "
                f"device); set it in the model code (e.g. gradient checkpointing) or drop {{{name}}}",
                name,
            )
    if knobs:
        raise MemprofUserError(f"trace() got unexpected arguments: {', '.join(sorted(knobs))}")


def trace(
    workload: Callable[..., Any] | str,
    optimizer: str = "adamw",
    precision: str = "bf16-mixed",
    *,
    device: str = "cuda",
    batch_size: int | None = None,
    seq_len: int | None = None,
    gpu: str | None = None,
    alloc_conf: str | None = None,
    optimizer_impl: str = "auto",
    cuda_version: str | None = None,
    name: str | None = None,
    registry_optimizer: bool = False,
    keep_output: bool = True,
    zero_grad: str = "set-to-none",
    **knobs: Any,
) -> Trace:
    """Estimate the memory of one training step of the user's own code by tracing it on fake tensors.

    workload: a function (or "module:function", "path/to/file.py:function") that builds the step and
    returns a `memprof.Workload` (or a mapping with its keys) or a Hugging Face model (memprof then makes
    token inputs and labels); it is called inside FakeTensorMode with the `batch_size=` / `seq_len=` its
    signature accepts, so nothing is allocated. optimizer: a registry name, run with its real
    implementation over the parameters that require grad, unless the Workload brings its own.
    precision: 32-true, 16-mixed, bf16-mixed (forward and loss under autocast), 16-true, bf16-true
    (model and floating inputs cast). device: "cuda" adds the allocator replay and the CUDA context.
    keep_output: False deletes the model output before backward (`loss = f(model(x)); loss.backward()`);
    zero_grad: "set-to-none" (the gradients are freed after each step) or "zeros" (kept, zeroed: they
    exist from the forward on).
    """
    from memprof.estimators.estimation import ZERO_GRAD

    if not isinstance(keep_output, bool):
        raise ParameterError(f"{{keep_output}} must be true or false, got {keep_output!r}", "keep_output")
    if zero_grad not in ZERO_GRAD:
        raise unknown_name("zero_grad", str(zero_grad), ZERO_GRAD)
    if isinstance(workload, Workload):
        raise MemprofUserError(
            "trace() takes the function that builds the Workload, not a Workload: memprof calls it on fake "
            "tensors, so nothing is allocated (a Workload built outside holds real tensors)"
        )
    if device not in DEVICES:
        raise unknown_name("device", str(device), DEVICES)
    for param, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ParameterError(f"{{{param}}} must be a whole number >= 1, got {value!r}", param)
    if alloc_conf is not None and device != "cuda":
        raise ParameterError(
            "{alloc_conf} configures the CUDA caching allocator; drop it with {device} cpu", "alloc_conf", "device"
        )
    _check_knobs(knobs)
    prec = get_precision(precision)
    gpu_spec = None
    if gpu is not None:
        from memprof.estimators.gpus import get_gpu

        gpu_spec = get_gpu(gpu)
    if isinstance(workload, str):
        ref = workload.strip()
        if not is_code_ref(ref):
            raise MemprofUserError(
                f"model {ref!r} is not MODULE:FACTORY; name a function as package.module:function or "
                "path/to/file.py:function"
            )
        factory = resolve_factory(ref)
    elif callable(workload):
        factory = workload
        ref = f"{getattr(workload, '__module__', '?')}:{getattr(workload, '__qualname__', repr(workload))}"
    else:
        raise MemprofUserError(
            f"trace() takes a function returning a memprof.Workload (or its name), got {type(workload).__name__}"
        )
    step = trace_step(
        factory,
        ref,
        optimizer=optimizer,
        precision=prec,
        device=device,
        optimizer_impl=optimizer_impl,
        batch_size=batch_size,
        seq_len=seq_len,
        gpu=gpu_spec,
        registry_optimizer=registry_optimizer,
        keep_output=keep_output,
        zeros=zero_grad == "zeros",
    )
    record = _record(
        step,
        name=name or ref,
        optimizer=optimizer if "optimizer: custom" not in step.notes else "custom",
        precision=prec,
        device=device,
        gpu=gpu_spec,
        alloc_conf=alloc_conf,
        cuda_version=cuda_version,
    )
    return Trace(record, step)


def trace_preset(model: str, optimizer: str = "adamw", precision: str = "bf16-mixed", **kw: Any) -> Trace:
    """Trace a preset or config.json: its Hugging Face model built from the config at full size, on
    fake tensors, with token inputs and labels (`memprof estimate PRESET --trace`); `attention` picks
    transformers' attn_implementation, `checkpointing="full"` its gradient checkpointing."""
    from memprof.estimators.families import FAMILIES
    from memprof.estimators.models import load_model

    spec = load_model(model)
    attention = kw.pop("attention", "auto")
    checkpointing = kw.pop("checkpointing", "none")
    if checkpointing not in ("none", "full"):
        raise ParameterError(
            f"{{checkpointing}} {checkpointing} is memprof's own recomputation policy; a traced Hugging Face "
            "model runs transformers' (none or full)",
            "checkpointing",
        )

    def build() -> Any:
        import transformers

        skip_init: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        try:  # fake tensors hold no values: skip transformers' weight initialisation (a second or two)
            from transformers.initialization import no_init_weights

            skip_init = no_init_weights()
        except ImportError:  # transformers < 5
            pass
        config = dict(spec.config)
        model_type = config.pop("model_type")
        # a preset's torch_dtype (the checkpoint's storage dtype) would make from_config build the model in
        # half precision; the precision knob decides what is trained, as in the analytic estimate
        config.pop("torch_dtype", None)
        config.pop("dtype", None)
        cfg = transformers.AutoConfig.for_model(model_type, **config)
        cfg._attn_implementation = (
            FAMILIES[spec.model_type].default_attention if attention == "auto" else attention
        )  # transformers' own default: sdpa where the model supports it (not Gemma 2)
        head = {
            "causal-lm": transformers.AutoModelForCausalLM,
            "masked-lm": transformers.AutoModelForMaskedLM,
            "image-classification": transformers.AutoModelForImageClassification,
            "seq2seq-lm": transformers.AutoModelForSeq2SeqLM,  # t5: input_ids and labels of seq_len each
        }[spec.task]
        with skip_init:
            try:
                model = head.from_config(cfg)
            except ValueError as exc:  # e.g. Gemma 2: no SDPA path in transformers; "auto" is its default, eager
                if attention != "auto" or "attention implementation" not in str(exc):
                    raise
                cfg._attn_implementation = "eager"
                model = head.from_config(cfg)
        model.tie_weights()  # skipped with the initialisation; ties the head to the embeddings as from_config does
        if checkpointing == "full":
            model.gradient_checkpointing_enable()
        return model

    build.__qualname__ = spec.name
    return trace(build, optimizer, precision, name=spec.name, **kw)


def estimate_or_trace(model: str, optimizer: str = "adamw", precision: str = "bf16-mixed", **knobs: Any) -> Any:
    """`memprof estimate MODEL` for MODULE:FACTORY: the analytic estimate when the factory returns a
    Hugging Face model of a supported family (exact and fast), the traced one otherwise; the record's
    warnings say which ran. Presets and config.json files are estimated analytically."""
    from memprof.predict import estimate

    if not is_code_ref(model.strip()):
        return estimate(model, optimizer, precision, **knobs)
    try:
        result = estimate(model, optimizer, precision, **knobs)
    except (NotAnalytic, UserCodeError) as exc:
        # UserCodeError: the factory failed on the meta device (e.g. it reads a value); the trace runs
        # it on fake tensors and says what, if anything, is wrong there
        traced = trace(model, optimizer, precision, **knobs)
        if isinstance(exc, NotAnalytic):  # not a supported Hugging Face family: tracing is the path
            return traced
        why = f"the factory could not be built on the meta device ({exc}); traced on fake tensors instead"
        return replace(traced, record=replace(traced.record, warnings=(*traced.record.warnings, why)))
    note = "analytic: a Hugging Face model of a supported family, estimated from its architecture (--trace traces it)"
    return replace(result, record=replace(result.record, warnings=(*result.record.warnings, note)))


# ------------------------------------------------------------------------------ the record


def _record(
    step: StepTrace,
    *,
    name: str,
    optimizer: str,
    precision: Any,
    device: str,
    gpu: Any,
    alloc_conf: str | None,
    cuda_version: str | None,
) -> EstimateRecord:
    warnings_ = [TRACED, *(n for n in step.notes if not n.startswith("optimizer: "))]
    by_category: dict[str, int | None] = {c: step.peak_by_category.get(c, 0) for c in TENSOR_CATEGORIES}
    timeline = [
        TimelinePoint(
            p["phase"] or Phase.FORWARD.value,
            f"{p['phase'] or 'before the step'} (allocation {p['seq']})",
            dict(p["by_category"]),
        )
        for p in step.timeline
    ]
    temporary_breakdown: dict[str, int | None] = {"optimizer_step": step.step_scratch}
    context = None
    allocator = None
    if device == "cuda":
        from memprof.estimators.allocator.simulator import simulate
        from memprof.estimators.allocator.timeline import device_events
        from memprof.estimators.overheads import blas_workspace_allocations, cuda_context_bytes

        warnings_.append(CUDA_FROM_CPU)
        blas = blas_workspace_allocations(gpu.compute_capability if gpu is not None else (8, 0))
        events: list[tuple] = [("alloc", f"cublas_workspace_{i}", n, 0) for i, n in enumerate(blas)]
        events += device_events(step.events, "meta")
        sim = simulate(events, alloc_conf)
        blas_bytes = sum(blas)
        temporary_breakdown["cublas_workspace"] = blas_bytes
        by_category[Category.TEMPORARY.value] = (by_category[Category.TEMPORARY.value] or 0) + blas_bytes
        timeline = [
            TimelinePoint(
                p.phase,
                p.label,
                {**p.by_category, Category.TEMPORARY.value: p.by_category[Category.TEMPORARY.value] + blas_bytes},
            )
            for p in timeline
        ]
        ctx = cuda_context_bytes(gpu, cuda_version)
        context = ContextFigure(ctx.bytes, ctx.low, ctx.high, ctx.basis)
        fragmentation = max(0, sim.peak_reserved - sim.peak_requested)
        by_category[Category.FRAGMENTATION.value] = fragmentation
        by_category[Category.CUDA_CONTEXT.value] = ctx.bytes
        allocated = sim.peak_allocated
        allocator = {**sim.to_dict(), "source": "trace"}
    else:
        by_category[Category.FRAGMENTATION.value] = 0
        by_category[Category.CUDA_CONTEXT.value] = 0
        allocated = step.peak_allocated
    tensor_bytes = sum(by_category[c] or 0 for c in TENSOR_CATEGORIES)
    reserved = tensor_bytes + (by_category[Category.FRAGMENTATION.value] or 0)
    device_total = reserved + (by_category[Category.CUDA_CONTEXT.value] or 0)
    verdict = None
    if gpu is not None:
        usable = gpu.torch_total_memory or gpu.memory_bytes
        verdict = GpuVerdict(gpu.name, gpu.memory_bytes, usable, device_total <= usable)
    family = None
    if optimizer != "custom":
        from memprof.estimators.optimizers import OPTIMIZERS

        spec = OPTIMIZERS.get(optimizer)
        family = spec.family.value if spec is not None else None
    implementation = f"{step.optimizer_class} (torch {torch.__version__.split('+')[0]})"
    states = ModelStates(
        step.model_states["parameters"], step.model_states["gradients"], step.model_states["optimizer_states"]
    )
    return EstimateRecord(
        model=name,
        parameters=step.parameters,
        settings=EstimateSettings(
            optimizer=optimizer,
            precision=precision.name,
            batch_size=step.batch_size,
            seq_len=step.seq_len,
            checkpointing=step.checkpointing,  # None: whatever the model's own code does; the trace follows it
            attention=step.attention,
            attention_kernel=step.attention_kernel,
            device=device,
            optimizer_impl=step.optimizer_impl,
            alloc_conf=alloc_conf,
        ),
        model_states=states,
        model_states_unsharded=states,
        optimizer_state_breakdown=step.optimizer_state_breakdown,
        cpu_offload=0,
        activations_saved=step.activations_saved,
        temporary_breakdown=temporary_breakdown,
        peak=Peak(
            phase=step.peak_phase,
            allocated=allocated,
            reserved=reserved,
            device_total=device_total,
            by_category={c: by_category.get(c) for c in CATEGORIES},
        ),
        cuda_context=context,
        allocator=allocator,
        timeline=tuple(timeline),
        warnings=tuple(warnings_),
        gpu=verdict,
        labels=EstimateLabels(
            optimizer_implementation=implementation,
            optimizer_family=family,
            precision_description=precision.description,
            param_dtype=step.param_dtype,
            grad_dtype=step.param_dtype,
        ),
    )


def traced_optimizer_rows(model: str, **knobs: Any) -> tuple[list[dict[str, object]], EstimateRecord | None]:
    """`memprof optimizers MODULE:FACTORY` for a workload memprof traces: the workload's step traced once
    per registry optimizer (its real implementation, in place of any optimizer the workload brings), in
    the rows of `memprof.predict.optimizer_rows` (grouped by family, cheapest first) plus `note`. An
    optimizer the tracer cannot run (a closure, create_graph, analytic only, a package not installed, a
    value read) keeps its row with no figures and the tracer's reason. Returns the rows and one traced
    record (the settings every row assumes)."""
    from memprof.estimators.optimizers import OPTIMIZERS, Family

    family_order = {family: i for i, family in enumerate(Family)}
    traced_rows: list[tuple[tuple[int, int, str], dict[str, object]]] = []
    failed: list[tuple[tuple[int, str], dict[str, object]]] = []
    assumptions: EstimateRecord | None = None
    first: Exception | None = None
    for opt in OPTIMIZERS.values():
        try:
            record = trace(model, opt.name, registry_optimizer=True, **dict(knobs)).record
        except (MemprofUserError, UserCodeError) as exc:
            first = first or exc
            failed.append(
                (
                    (family_order[opt.family], opt.name),
                    {
                        "family": opt.family.value,
                        "optimizer": opt.name,
                        "implementation": opt.implementation,
                        "state_bytes_per_param": None,
                        "optimizer_states": None,
                        "model_states": None,
                        "peak": None,
                        "fits": None,
                        "note": f"not traced: {exc}",
                    },
                )
            )
            continue
        assumptions = assumptions or record
        states = record.model_states
        n = record.parameters
        traced_rows.append(
            (
                (family_order[opt.family], int(states.optimizer_states or 0), opt.name),
                {
                    "family": opt.family.value,
                    "optimizer": opt.name,
                    "implementation": record.labels.optimizer_implementation if record.labels else opt.implementation,
                    "state_bytes_per_param": (states.optimizer_states or 0) / n if n else None,
                    "optimizer_states": states.optimizer_states,
                    "model_states": (states.parameters or 0) + (states.gradients or 0) + (states.optimizer_states or 0),
                    "peak": record.peak.device_total,
                    "fits": record.gpu.fits if record.gpu is not None else None,
                    "note": "traced",
                },
            )
        )
    if not traced_rows and first is not None:
        raise first  # the workload itself fails (its factory, its loss): one line, as `memprof estimate` says it
    traced_rows.sort(key=lambda pair: pair[0])
    failed.sort(key=lambda pair: pair[0])
    return [row for _, row in traced_rows] + [row for _, row in failed], assumptions
