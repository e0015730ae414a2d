"""The estimate of what a profile observed: `Profile.compare()` without an estimate in hand.

From the profile's `settings` (memprof.profiler.api records them):
- the model: its Hugging Face config (`hf_config`, model_type) when memprof models that family and
  the config gives the measured parameter count; otherwise its trainable parameter tensors, from
  which only the model states can be predicted (the peak needs the architecture);
- the optimizer: the registry entry whose implementation names the optimizer's class (package and
  class name), with the options that change memory read from its hyperparameters; torch.optim.Muon
  with an AdamW for the other parameters is the registry's "muon". An optimizer memprof does not
  know leaves optimizer states and the peak unpredicted, never an exception;
- precision from the parameter dtypes and the autocast dtype (fp32 + bf16 autocast -> bf16-mixed,
  bf16 parameters -> bf16-true, ...); batch and sequence from the root module's input shapes;
  attention from `config._attn_implementation`; checkpointing "full" when the model reports
  gradient checkpointing (selective recomputation cannot be observed); the profiled device.

Pure Python over the profile's record: no torch needed. The prediction is an `EstimateRecord`: the
estimator's own, with what cannot be predicted left out (`without_peak()`, `without_optimizer()`),
or one holding model states only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from memprof.comparison.frame import as_estimate_record, as_profile_record, comparison_frame
from memprof.estimators.errors import MemprofUserError
from memprof.estimators.families import FAMILIES, SUPPORTED_MODEL_TYPES
from memprof.estimators.models import ModelSpec
from memprof.estimators.records import EstimateRecord, EstimateSettings, ModelStates, Peak
from memprof.estimators.tensors import ParamTensor

__all__ = [
    "Observed",
    "observe",
    "predict",
    "observed_estimate",
    "compare_observed",
    "registry_optimizer",
    "precision_of",
]

ATTENTION_NAMES = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash", "flash": "flash"}
_QUANTIZED_STORAGE = ("uint8", "int8")  # bitsandbytes' Params4bit and Int8Params
_PRECISIONS = {
    ("float32", None): "32-true",
    ("float32", "bfloat16"): "bf16-mixed",
    ("float32", "float16"): "16-mixed",
    ("bfloat16", None): "bf16-true",
    ("bfloat16", "bfloat16"): "bf16-true",
    ("float16", None): "16-true",
    ("float16", "float16"): "16-true",
}


@dataclass
class Observed:
    """The estimate's inputs as far as the profile shows them; `missing` says what it does not."""

    model: ModelSpec | None = None  # None: only `params` are known
    params: tuple[ParamTensor, ...] = ()  # trainable parameters (what the optimizer steps)
    parameters: int | None = None  # all parameters, trainable or not
    optimizer: str | None = None  # registry name
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    attention: str | None = None
    checkpointing: str = "none"
    grad_accumulation: int = 1  # micro-batches (forward + backward) per optimizer step
    device: str = "cpu"
    missing: list[str] = field(default_factory=list)  # why a part of the prediction is absent
    affects: dict[str, str] = field(default_factory=dict)  # message -> "all" | "optimizer" | "peak"
    peak_unknown: bool = False  # something the peak depends on is not modelled
    step_options: dict[str, Any] = field(default_factory=dict)  # change only step() temporaries
    # the loop's choices, as the profiler saw them (settings.output_kept, settings.zero_grad)
    keep_output: bool = True
    zero_grad: str = "set-to-none"
    # peft LoRA, as the profiler saw it (settings.adapter); lora_rank None: full training
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] | None = None
    lora_dropout: float = 0.0
    quantize: str | None = None
    double_quant: bool = False
    notes: list[str] = field(default_factory=list)  # what the prediction took from the run (not missing)

    def miss(self, message: str, affects: str = "peak") -> None:
        """Record why a part of the prediction is absent; `affects` says which rows lack it."""
        self.missing.append(message)
        self.affects[message] = affects

    def why(self, scope: str, category: str) -> str:
        """The reasons a comparison row has no predicted figure."""

        def applies(affects: str) -> bool:
            if affects == "all":
                return True
            if affects == "optimizer":
                return scope == "peak" or category in ("optimizer_states", "total")
            return scope == "peak"

        return "; ".join(m for m in self.missing if applies(self.affects.get(m, "peak"))) or "not modelled"

    def estimate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `estimate()` (model first), for the parts that are known."""
        kw: dict[str, Any] = {
            "optimizer": self.optimizer,
            "precision": self.precision,
            "batch_size": self.batch_size or 1,
            "seq_len": self.seq_len,
            "checkpointing": self.checkpointing,
            "attention": self.attention or "auto",
            "device": self.device,
        }
        if self.grad_accumulation > 1:
            kw["grad_accumulation"] = self.grad_accumulation
        if not self.keep_output:
            kw["keep_output"] = False
        if self.zero_grad != "set-to-none":
            kw["zero_grad"] = self.zero_grad
        if self.lora_rank is not None:
            kw.update(lora_rank=self.lora_rank, lora_targets=self.lora_targets, lora_dropout=self.lora_dropout)
            if self.quantize is not None:
                kw.update(quantize=self.quantize, double_quant=self.double_quant)
        kw.update(self.optimizer_options)
        return kw


# -- optimizer ----------------------------------------------------------------------------------


def _implementation_class(implementation: str) -> tuple[str, str] | None:
    """("torch", "AdamW") from "torch.optim.AdamW (torch 2.13.0)"; None for analytic entries."""
    dotted = implementation.split(" ", 1)[0]
    if "." not in dotted:
        return None
    return dotted.split(".", 1)[0], dotted.rsplit(".", 1)[1]


def registry_optimizer(optimizer_class: str | None, defaults: Mapping[str, Any] | None = None) -> str | None:
    """The registry entry whose implementation is `optimizer_class` ("pkg.module.Class").

    Matched by package and class name ("torch.optim.adamw.AdamW" -> torch.optim.AdamW), else by
    importing the implementation a package exports under another name (galore_torch.GaLoreAdamW
    is galore_torch.adamw.AdamW). When several entries share a class (SGD: sgd, sgd-momentum), the
    one whose default options the hyperparameters `defaults` change least.
    """
    from memprof.estimators.optimizers import OPTIMIZERS

    if not optimizer_class:
        return None
    package, name = optimizer_class.split(".", 1)[0], optimizer_class.rsplit(".", 1)[-1]
    candidates = [s for s in OPTIMIZERS.values() if _implementation_class(s.implementation) == (package, name)]
    if not candidates:
        candidates = [
            s
            for s in OPTIMIZERS.values()
            if (_implementation_class(s.implementation) or ("",))[0] == package
            and _exported_as(s.implementation) == optimizer_class
        ]
    if not candidates:
        return None
    defaults = defaults or {}
    return min(candidates, key=lambda s: len(_changed_options(s, defaults))).name


def _exported_as(implementation: str) -> str | None:
    """ "module.Class" of the class an implementation string names, when its package is installed."""
    import importlib

    dotted = implementation.split(" ", 1)[0]
    module, _, cls = dotted.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), cls)
    except Exception:  # not installed, or it fails to import: no match
        return None
    return f"{obj.__module__}.{obj.__qualname__}"


def _changed_options(spec: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The spec options whose value in the optimizer's hyperparameters differs from the spec's."""
    out = {}
    for k, v in spec.options.items():
        if k in defaults and _option_value(defaults[k], v) != v:
            out[k] = _option_value(defaults[k], v)
    return out


def _option_value(value: Any, default: Any) -> Any:
    if value is None:  # torch's "let torch decide" (fused=None, foreach=None)
        return default
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def _optimizer(settings: Mapping[str, Any], obs: Observed) -> None:
    from memprof.estimators.optimizers import get_optimizer

    entries = settings.get("optimizers") or (
        [
            {
                "optimizer": settings.get("optimizer"),
                "optimizer_class": settings.get("optimizer_class"),
                "optimizer_defaults": settings.get("optimizer_defaults"),
            }
        ]
        if settings.get("optimizer_class")
        else []
    )
    if not entries:
        obs.miss("no optimizer was seen: optimizer states not predicted", "optimizer")
        return
    names = [registry_optimizer(e.get("optimizer_class"), e.get("optimizer_defaults")) for e in entries]
    if len(entries) > 1:
        # torch.optim.Muon steps 2-D parameters only; an AdamW takes the rest (the registry's fallback)
        if names[0] == "muon" and all(n == "adamw" for n in names[1:]):
            names = ["muon"]
            entries = entries[:1]
        else:
            classes = ", ".join(str(e.get("optimizer")) for e in entries)
            obs.miss(f"several optimizers ({classes}): memprof predicts one optimizer per model", "optimizer")
            return
    if names[0] is None:
        obs.miss(
            f"optimizer {entries[0].get('optimizer_class')!r} is not in memprof's registry "
            f"(see `memprof presets optimizers`): no prediction of its states",
            "optimizer",
        )
        return
    spec = get_optimizer(names[0])
    defaults = entries[0].get("optimizer_defaults") or {}
    obs.optimizer = spec.name
    obs.optimizer_options = _changed_options(spec, defaults)
    obs.step_options = _changed_step_options(spec.name, defaults)


def _changed_step_options(name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters that change only the step's temporaries (Adam's weight_decay, maximize)."""
    from memprof.estimators.optimizers import step_option_defaults

    extra = step_option_defaults(name)
    return {k: defaults[k] for k, v in extra.items() if k in defaults and defaults[k] is not None and defaults[k] != v}


# -- precision, shapes, model -------------------------------------------------------------------


def precision_of(param_dtypes: Mapping[str, int], autocast_dtype: str | None, quantized: bool = False) -> str | None:
    """The memprof precision of parameters in `param_dtypes` (dtype -> elements) under autocast.

    quantized: bitsandbytes holds the base weights (uint8 packed 4-bit, int8): the precision is that
    of the floating parameters around them (prepare_model_for_kbit_training casts those to float32)."""
    if quantized:
        param_dtypes = {k: v for k, v in param_dtypes.items() if k not in _QUANTIZED_STORAGE}
    if not param_dtypes:
        return None
    dtype = max(param_dtypes, key=lambda k: param_dtypes[k])  # the dtype of most elements
    return _PRECISIONS.get((dtype, autocast_dtype))


def _shapes(settings: Mapping[str, Any], model_type: str | None, obs: Observed) -> None:
    shapes = [s for s in settings.get("input_shapes") or [] if s]
    if not shapes:
        obs.miss("no model inputs were seen: batch and sequence unknown, peak not predicted")
        return
    shape = max(shapes, key=lambda s: s[0] * (s[1] if len(s) > 1 else 1))
    obs.batch_size = int(shape[0])
    if model_type != "vit":  # a ViT's sequence comes from its image and patch sizes
        obs.seq_len = int(shape[1]) if len(shape) > 1 else 1


def _model(settings: Mapping[str, Any], obs: Observed) -> str | None:
    """Fill obs.model (a ModelSpec) or only obs.params; returns the model_type when known."""
    obs.parameters = settings.get("parameters")
    obs.params = tuple(
        ParamTensor(str(n), tuple(int(d) for d in shape)) for n, shape in settings.get("parameter_tensors") or []
    )
    config = settings.get("hf_config")
    name = settings.get("model") or "model"
    if not isinstance(config, Mapping):
        obs.miss(
            f"{name} has no Hugging Face config: model states predicted from its parameter tensors, peak not predicted"
        )
        return None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        obs.miss(
            f"model_type {model_type!r} is not modelled (supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}): peak not predicted"
        )
        return model_type
    family = FAMILIES[model_type]
    from memprof.estimators.heads import family_heads, head_from_architectures

    adapter = settings.get("adapter")
    if isinstance(adapter, Mapping) and adapter.get("base_model"):
        name = str(adapter["base_model"])  # a PeftModel wraps the class that names the head
    found = head_from_architectures([name])  # the profiled class names its head (GPT2ForSequenceClassification)
    head = found[0] if found and found[0] in family_heads(family) else family.task
    try:
        spec = ModelSpec(name, model_type, dict(config), head)
    except MemprofUserError as exc:
        obs.miss(f"the model's config is not usable ({exc}): peak not predicted")
        return model_type
    trainable = sum(p.numel for p in obs.params) if obs.params else obs.parameters
    if isinstance(adapter, Mapping):
        return _adapted_model(adapter, spec, trainable, obs)
    if spec.num_parameters != obs.parameters or trainable != obs.parameters:
        obs.miss(
            f"{name} has {obs.parameters:,} parameters ({trainable:,} trainable) but memprof's "
            f"{family.head_class} of this config has {spec.num_parameters:,}: model states predicted "
            f"from the parameter tensors, peak not predicted"
        )
        return model_type
    obs.model = spec
    return model_type


def _adapted_model(adapter: Mapping[str, Any], spec: ModelSpec, trainable: int | None, obs: Observed) -> str:
    """obs.model and the LoRA knobs of a peft model (settings.adapter, memprof.profiler.adapters)
    when memprof's adapted model of them has the run's parameters; only the parameter tensors otherwise."""
    from memprof.estimators.adapters import adapt, linear_modules
    from memprof.estimators.precision import get_precision

    ranks, dropouts = list(adapter.get("ranks") or []), list(adapter.get("dropouts") or [0.0])
    quant = adapter.get("quantize")
    why = None
    if adapter.get("type") != "lora" or len(ranks) != 1:
        why = f"an adapter of type {adapter.get('type')!r} with ranks {ranks} (memprof models LoRA with one rank)"
    elif len(dropouts) != 1:
        why = f"LoRA dropouts {dropouts} differ between modules (memprof models one)"
    elif quant == "mixed":
        why = "base layers quantized in several ways (memprof models one --quantize)"
    elif obs.precision is None:
        why = "no precision matches the parameters"
    if why is not None or obs.precision is None:
        obs.miss(f"{why}: model states predicted from the parameter tensors, peak not predicted")
        return spec.model_type
    obs.lora_rank, obs.lora_dropout = int(ranks[0]), float(dropouts[0])
    obs.quantize = quant if isinstance(quant, str) else None
    obs.double_quant = bool(adapter.get("double_quant")) and obs.quantize is not None
    obs.lora_targets = target_names(list(adapter.get("targets") or []), [m.name for m in linear_modules(spec)])
    try:
        adapted = adapt(
            spec,
            get_precision(obs.precision),
            lora_rank=obs.lora_rank,
            lora_targets=obs.lora_targets,
            lora_dropout=obs.lora_dropout,
            quantize=obs.quantize,
            double_quant=obs.double_quant,
        )
    except MemprofUserError as exc:
        obs.lora_rank = None
        obs.miss(f"the run's LoRA cannot be modelled ({exc}): peak not predicted")
        return spec.model_type
    ours = sum(t.numel for t in adapted.parameter_tensors() if t.trainable)
    measured = adapter.get("unquantized_parameters", obs.parameters)
    if adapted.num_parameters != measured or ours != trainable:
        obs.lora_rank = None
        obs.miss(
            f"{spec.name} has {measured:,} parameters ({trainable:,} trainable) but memprof's "
            f"{spec.head_class} with {adapted.adapter.describe() if adapted.adapter else 'LoRA'} has "
            f"{adapted.num_parameters:,} ({ours:,}): model states predicted from the parameter tensors, "
            f"peak not predicted"
        )
        return spec.model_type
    obs.model = spec
    quantized = (
        f" on {obs.quantize}{' + double quant' if obs.double_quant else ''} base weights (bitsandbytes)"
        if obs.quantize
        else ""
    )
    obs.notes.append(
        f"the run trained peft LoRA r={obs.lora_rank} on {len(adapter.get('targets') or [])} modules "
        f"({', '.join(obs.lora_targets)}), dropout {obs.lora_dropout:g}{quantized}: predicted with "
        f"--lora-rank {obs.lora_rank} --lora-targets {','.join(obs.lora_targets)}"
        + (f" --lora-dropout {obs.lora_dropout:g}" if obs.lora_dropout else "")
        + (f" --quantize {obs.quantize}" if obs.quantize else "")
        + (" --double-quant" if obs.double_quant else "")
    )
    return spec.model_type


def target_names(wrapped: list[str], linears: list[str]) -> tuple[str, ...]:
    """The wrapped modules as `--lora-targets` names them: their last name parts when those select
    exactly the wrapped modules among the model's linear modules (peft matches a name to a module
    whose name ends with "." + it), the full names otherwise."""
    order = {m: i for i, m in enumerate(linears)}  # the model's order, not the order peft registers them
    wrapped = sorted(wrapped, key=lambda m: order.get(m, len(order)))
    short: list[str] = []
    for name in wrapped:
        part = name.rsplit(".", 1)[-1]
        if part not in short:
            short.append(part)
    selected = [m for m in linears if any(m == s or m.endswith("." + s) for s in short)]
    return tuple(short) if sorted(selected) == sorted(wrapped) else tuple(wrapped)


def observe(profile: Any) -> Observed:
    """What the profile (a Profile, its record or dict) shows about the run, in the estimate's terms."""
    record = as_profile_record(profile)
    settings = record.settings.values
    obs = Observed(device=str(record.device or "cpu").split(":")[0])
    if settings.get("model") is None:
        obs.miss("no model was seen (pass it to memprof.track): nothing to predict", "all")
        return obs
    adapter = settings.get("adapter")
    quantized = isinstance(adapter, Mapping) and adapter.get("quantize") is not None
    obs.precision = precision_of(settings.get("param_dtypes") or {}, settings.get("autocast_dtype"), quantized)
    model_type = _model(settings, obs)
    config = settings.get("hf_config") or {}
    _optimizer(settings, obs)
    if obs.precision is None:
        obs.miss(
            f"parameters in {settings.get('param_dtypes')} with autocast "
            f"{settings.get('autocast_dtype')}: no memprof precision matches, no prediction",
            "all",
        )
    _shapes(settings, model_type, obs)
    attn = settings.get("attn_implementation") or config.get("_attn_implementation")
    if attn is not None:
        obs.attention = ATTENTION_NAMES.get(attn)
        if obs.attention is None:
            obs.peak_unknown = True
            obs.miss(f"attention {attn!r} is not modelled (eager, sdpa, flash_attention_2): peak not predicted")
    obs.checkpointing = "full" if settings.get("gradient_checkpointing") else "none"
    steps, backwards = settings.get("optimizer_steps") or 0, settings.get("backward_calls") or 0
    # LBFGS runs forward and backward inside step() through its closure: not accumulation
    if steps and backwards > steps and backwards % steps == 0 and obs.optimizer != "lbfgs":
        obs.grad_accumulation = backwards // steps
    _loop(settings, obs)
    return obs


def _loop(settings: Mapping[str, Any], obs: Observed) -> None:
    """The loop's choices the profiler saw at the first backward after a step (settings.output_kept,
    settings.zero_grad); the prediction uses them and says so."""
    kept = settings.get("output_kept")
    if isinstance(kept, bool):
        obs.keep_output = kept
        obs.notes.append(
            "the run kept the model output through backward (`out = model(**batch)`): predicted with keep_output"
            if kept
            else "the run kept only the loss (`loss = model(**batch).loss`; the logits were freed before "
            "backward): predicted with --no-keep-output"
        )
    zero = settings.get("zero_grad")
    if zero in ("set-to-none", "zeros"):
        obs.zero_grad = zero
        if zero == "zeros":
            obs.notes.append(
                "gradients were still allocated when the step's backward began (zero_grad(set_to_none=False)): "
                "predicted with --zero-grad zeros"
            )


# -- the estimate -------------------------------------------------------------------------------


class _Tensors:
    """The parameter tensors of a model memprof has no config for (what model_state_bytes reads)."""

    def __init__(self, params: tuple[ParamTensor, ...]) -> None:
        self._params = params

    def parameter_tensors(self) -> tuple[ParamTensor, ...]:
        return self._params


def _settings(obs: Observed) -> EstimateSettings:
    """The settings of an estimate of `obs` made without the estimator (model states only)."""
    kw = obs.estimate_kwargs()
    return EstimateSettings(
        optimizer=obs.optimizer,
        precision=obs.precision,
        batch_size=kw["batch_size"],
        seq_len=obs.seq_len,
        checkpointing=obs.checkpointing,
        attention=kw["attention"],
        device=obs.device,
        grad_accumulation=obs.grad_accumulation,
    )


def _model_states_only(obs: Observed) -> EstimateRecord | None:
    """An estimate holding model states only (parameters of every tensor, gradients and optimizer
    states of the trainable ones; optimizer states None for an unknown optimizer) and no peak; None
    when the precision is unknown."""
    from memprof.estimators.estimation import model_state_bytes
    from memprof.estimators.optimizers import get_optimizer
    from memprof.estimators.precision import get_precision

    if obs.precision is None or not obs.params:
        return None
    prec = get_precision(obs.precision)
    opt = get_optimizer(obs.optimizer or "sgd")
    try:
        by_cat, breakdown = model_state_bytes(_Tensors(obs.params), opt, prec, obs.device, **obs.optimizer_options)
    except MemprofUserError as exc:
        obs.miss(f"the optimizer's options cannot be modelled: {exc}", "all")
        return None
    known = obs.optimizer is not None
    states = ModelStates(
        parameters=(obs.parameters or 0) * prec.param_bytes,
        gradients=by_cat["gradients"],
        optimizer_states=by_cat["optimizer_states"] if known else None,
    )
    return EstimateRecord(
        model=None,
        parameters=obs.parameters,
        settings=_settings(obs),
        model_states=states,
        optimizer_state_breakdown=breakdown if known else {},
        peak=Peak.unknown(),
    )


def predict(obs: Observed) -> EstimateRecord | None:
    """The estimate of `obs`: a full estimate when the model's architecture is known, model
    states only otherwise (or when the estimator cannot give the rest: its reason is appended to
    `obs.missing`); None when nothing can be predicted (no precision)."""
    from memprof.estimators.estimation import estimate

    if obs.precision is None:
        return None
    if obs.model is None:
        return _model_states_only(obs)
    kwargs = obs.estimate_kwargs()
    kwargs["optimizer"] = obs.optimizer or "sgd"  # parameters and gradients do not depend on it
    try:
        try:
            est = as_estimate_record(estimate(obs.model, **kwargs, **obs.step_options))
        except MemprofUserError:
            if not obs.step_options:
                raise
            est = as_estimate_record(estimate(obs.model, **kwargs))
            obs.miss(
                f"the estimator does not take {obs.step_options}: the step's temporaries "
                f"are predicted for the registry defaults"
            )
    except MemprofUserError as exc:
        obs.miss(f"the estimator cannot predict the peak: {exc}")
        if not obs.params:
            obs.params = tuple(obs.model.parameter_tensors())
            obs.parameters = obs.model.num_parameters
        return _model_states_only(obs)
    if obs.optimizer is None:  # an unknown optimizer: its states and the peak are not predicted
        return est.without_optimizer()
    if obs.batch_size is None or obs.peak_unknown:
        return est.without_peak()
    return est


def observed_estimate(profile: Any) -> tuple[EstimateRecord | None, Observed]:
    """The estimate of what `profile` observed (None when nothing can be predicted)."""
    obs = observe(profile)
    return predict(obs), obs


ANALYTIC = "predictor: analytic (memprof's model of this architecture, from what the profiler observed)"


def _traced(capture: Any, obs: Observed, prof: Any) -> EstimateRecord | None:
    """The tracer's prediction of the captured live step (memprof.tracer.live), or None with the reason
    added to `obs.missing`. The one import of the tracer here: a live Profile holds a StepCapture only in
    the process that ran it, where torch is loaded."""
    from memprof.tracer.live import trace_capture

    try:
        return trace_capture(
            capture,
            device=obs.device,
            optimizer=obs.optimizer or "custom",
            precision=obs.precision,
            name=prof.settings.values.get("model"),
        ).record
    except MemprofUserError as exc:
        obs.miss(f"the step could not be traced: {exc}")
        return None


def compare_observed(profile: Any, capture: Any = None) -> Any:
    """`Profile.compare()`: the comparison frame of a profile against the estimate of what it observed.

    capture: the live step (memprof.profiler.capture.StepCapture) a Profile keeps in the process that
    ran it; when the analytic estimate cannot predict the peak or the optimizer states (a model memprof
    has no family for, an optimizer outside its registry), that step is traced on fake tensors and the
    traced estimate is the prediction. The notes name the predictor that ran."""
    prof = as_profile_record(profile)
    est, obs = observed_estimate(prof)
    predictor = ANALYTIC if est is not None else None
    incomplete = est is None or est.peak.allocated is None or est.model_states.optimizer_states is None
    if incomplete and capture is not None and getattr(capture, "ready", False):
        traced = _traced(capture, obs, prof)
        if traced is not None:
            from memprof.tracer.live import PREDICTOR

            est, predictor = traced, PREDICTOR
            obs.missing.clear()
            obs.notes.clear()  # what the analytic prediction took from the run; the trace ran the run's own step
            obs.notes.extend(traced.warnings[2:])
    elif incomplete and capture is not None and getattr(capture, "reason", None):
        obs.miss(f"the step could not be traced: {capture.reason}")
    frame = comparison_frame(est, prof, missing_prediction=obs.why)
    frame.attrs["predictor"] = predictor
    if predictor is not None:
        obs.notes.insert(0, predictor)
    frame.attrs["observed"] = obs.estimate_kwargs()
    frame.attrs["missing"] = list(obs.missing)
    frame.attrs["notes"] = list(obs.notes)
    return frame
