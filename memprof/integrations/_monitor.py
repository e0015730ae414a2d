"""What the training-framework callbacks share: the estimate of a live model, the profiled steps,
predicted against measured, and the rule that a memory tool never stops a training run.

A `Monitor` is framework-neutral; memprof.integrations.transformers and .lightning feed it the
model, the optimizer and the knobs they read from their framework, and publish its metrics through
the framework's own logging. Every public method is wrapped by `guarded`: an exception inside
becomes a `MemprofCallbackWarning` and the run goes on.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from memprof.estimators.errors import MemprofUserError, ParameterError
from memprof.estimators.units import format_bytes

__all__ = ["MemprofCallbackWarning", "Monitor", "guarded", "model_spec", "registry_of", "set_impl"]

logger = logging.getLogger("memprof")
F = TypeVar("F", bound=Callable[..., Any])


class MemprofCallbackWarning(RuntimeWarning):
    """Something memprof could not do inside a training callback; the run goes on."""


def warn(message: str) -> None:
    warnings.warn(f"memprof: {message}", MemprofCallbackWarning, stacklevel=3)


def guarded(fn: F) -> F:
    """Run a callback hook; any exception becomes a MemprofCallbackWarning (never stops training)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # a memory tool must never stop a training run
            warn(f"{fn.__name__} failed and was skipped ({type(exc).__name__}: {exc})")
            return None

    return wrapper  # type: ignore[return-value]


def _ensure_handler() -> None:
    """Show memprof's INFO lines when the application configured no logging for them."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("memprof: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# ------------------------------------------------------------------------------- the live model


def model_spec(model: Any) -> tuple[Any, str | None]:
    """(ModelSpec, None) for a Hugging Face model of a family memprof models whose parameters are
    exactly memprof's; (None, why the peak is not predicted) otherwise."""
    from memprof.estimators.families import FAMILIES, SUPPORTED_MODEL_TYPES
    from memprof.estimators.models import ModelSpec

    name = type(model).__name__
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    if not callable(to_dict):
        return None, f"{name} has no Hugging Face config: the peak is not predicted"
    cfg = dict(to_dict())
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        return None, (
            f"model_type {model_type!r} ({name}) is not modelled (supported: {', '.join(SUPPORTED_MODEL_TYPES)}): "
            "the peak is not predicted"
        )
    from memprof.estimators.heads import family_heads, head_from_architectures

    # the head is the live class's (a from_config model's config names no architectures)
    found = head_from_architectures([name])
    head = found[0] if found else FAMILIES[model_type].task
    if head not in family_heads(FAMILIES[model_type]):
        listed = ", ".join(family_heads(FAMILIES[model_type]))
        return None, f"{name}: head {head} is not modelled for {model_type} ({listed}): the peak is not predicted"
    try:
        spec = ModelSpec(name, model_type, cfg, head)
    except MemprofUserError as exc:
        return None, f"the config of {name} is not usable ({exc}): the peak is not predicted"
    expected = [(t.name, tuple(t.shape)) for t in spec.parameter_tensors()]
    actual = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    if expected != actual:
        extra = sorted(set(actual) - set(expected))[:3]
        return None, (
            f"{name} has {len(actual)} parameter tensors, memprof's {FAMILIES[model_type].head_class} of its config "
            f"{len(expected)} (first differences: {extra or 'order or shapes'}): the peak is not predicted"
        )
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        return None, (
            f"{len(frozen)} of {name}'s parameters are frozen (e.g. {frozen[0]}); memprof predicts full fine-tuning: "
            "the peak is not predicted"
        )
    return spec, None


def param_dtype(model: Any) -> str:
    """The dtype of most parameter elements ("float32", "bfloat16", ...)."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        key = str(p.dtype).removeprefix("torch.")
        counts[key] = counts.get(key, 0) + p.numel()
    return max(counts, key=lambda k: counts[k]) if counts else "float32"


def registry_of(optimizer: Any) -> tuple[str | None, dict[str, Any]]:
    """The registry entry of a live optimizer (unwrapping accelerate's / Lightning's wrappers)."""
    from memprof.comparison.observed import _changed_options, registry_optimizer
    from memprof.estimators.optimizers import get_optimizer

    inner = getattr(optimizer, "optimizer", optimizer)
    cls = type(inner)
    defaults = dict(getattr(inner, "defaults", {}) or {})
    name = registry_optimizer(f"{cls.__module__}.{cls.__qualname__}", defaults)
    if name is None:
        return None, {}
    return name, _changed_options(get_optimizer(name), defaults)


def set_impl(optimizer: Any, knobs: dict[str, Any]) -> None:
    """torch's implementation as the optimizer was built (fused / foreach), not as `optim` says."""
    defaults = getattr(optimizer, "defaults", None) or {}
    knobs.pop("optimizer_impl", None)
    knobs.pop("fused", None)
    if defaults.get("fused"):
        knobs["optimizer_impl"] = "fused"
    elif defaults.get("foreach") is not None and "foreach" in defaults:
        knobs["optimizer_impl"] = "foreach" if defaults["foreach"] else "single_tensor"


def galore_params(model: Any, optimizer: Any) -> tuple[str, ...]:
    """Names of the parameters in the optimizer's GaLore group (the one with a `rank`)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    return tuple(names[id(p)] for g in inner.param_groups if "rank" in g for p in g["params"] if id(p) in names)


def embedding_weights(model: Any) -> tuple[str, ...]:
    """Names of the trainable nn.Embedding weights, as named_parameters() lists them (a tied weight
    once): the Trainer overrides their bitsandbytes states to 32 bits (transformers 5.24,
    trainer.py, create_optimizer: `manager.register_module_override(module, "weight", {"optim_bits": 32})`
    for every nn.Embedding of the model)."""
    import torch

    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return tuple(n for n, p in model.named_parameters() if id(p) in embedded and p.requires_grad)


def input_shape(args: tuple, kwargs: Mapping[str, Any]) -> tuple[int, int | None] | None:
    """(batch, sequence) of a model call: input_ids / inputs_embeds / pixel_values / the first tensor."""
    for key in ("input_ids", "inputs_embeds", "pixel_values"):
        t = kwargs.get(key)
        if t is not None and hasattr(t, "shape"):
            shape = tuple(t.shape)
            return int(shape[0]), (None if key == "pixel_values" or len(shape) < 2 else int(shape[1]))
    for t in (*args, *kwargs.values()):
        if hasattr(t, "shape") and len(t.shape) >= 1:
            return int(t.shape[0]), int(t.shape[1]) if len(t.shape) >= 2 else None
    return None


# ------------------------------------------------------------------------------------ the monitor


class Monitor:
    """One training run: the estimate, the profiled steps and the comparisons.

    knobs: `memprof.estimate` keywords (optimizer, precision, batch_size, ...); seq_len may come
    later (`set_shape`). Results: `estimate` (the latest Estimate), `results` (one dict per profiled
    step: predicted and measured peak, the error, the saved path)."""

    def __init__(
        self,
        *,
        profile_steps: Iterable[int],
        gpu: str | None,
        out_dir: str | None,
        grads_through_forward: bool = False,
    ) -> None:
        steps = sorted({int(s) for s in profile_steps})
        if any(s < 1 for s in steps):
            raise ParameterError(f"{{profile_steps}} are 1-based optimizer steps (>= 1), got {steps}", "profile_steps")
        self.profile_steps = steps
        self.gpu = gpu
        self.out_dir = out_dir
        # Lightning's zero_grad runs after the next step's forward: the previous step's gradients
        # are alive through it (from the second optimizer step on)
        self.grads_through_forward = grads_through_forward
        self.spec: Any = None
        self.knobs: dict[str, Any] = {}
        self.provenance: dict[str, str] = {}
        self.not_predicted: str | None = None
        self.estimate: Any = None
        self.results: list[dict[str, Any]] = []
        self.messages: list[str] = []
        self._session: Any = None
        self._run: Any = None
        self._step: int | None = None
        _ensure_handler()

    # -- the estimate ------------------------------------------------------------------------
    def note(self, message: str) -> None:
        self.messages.append(message)
        warn(message)

    def setup(self, model: Any, knobs: Mapping[str, Any], provenance: Mapping[str, str]) -> None:
        self.spec, self.not_predicted = model_spec(model)
        self.knobs = dict(knobs)
        self.provenance = dict(provenance)
        if self.not_predicted:
            self.note(self.not_predicted)

    def predict(self, batch_size: int | None = None, seq_len: int | None = None, *, announce: bool = True) -> Any:
        """The estimate at this batch and sequence (the knobs' when None); logs it with the verdict."""
        from memprof.predict import estimate

        if self.spec is None or self.knobs.get("optimizer") is None:
            return None
        knobs = dict(self.knobs)
        if batch_size is not None:
            knobs["batch_size"] = batch_size
        if seq_len is not None:
            knobs["seq_len"] = seq_len
        if knobs.get("device") == "cuda":
            gpu = self.gpu or _cuda_preset()
            if gpu is not None:
                knobs["gpu"] = gpu
        est = estimate(self.spec, **knobs)
        if announce:
            self.estimate = est
            self._announce(est, knobs)
        return est

    def peak_of(self, rec: Any) -> tuple[int | None, str | None]:
        """(peak allocated, phase) of an estimate record, for this training loop: with
        `grads_through_forward`, each forward moment also holds the previous step's gradients."""
        peak, phase = rec.peak.allocated, rec.peak.phase
        if not self.grads_through_forward or peak is None:
            return peak, phase
        grads = rec.model_states.gradients or 0
        for point in rec.timeline:
            if point.phase != "forward":
                continue
            cats = dict(point.by_category)
            live = sum(v for k, v in cats.items() if k not in ("cuda_context", "fragmentation") and v)
            live += max(grads - (cats.get("gradients") or 0), 0)
            if live > peak:
                peak, phase = live, "forward"
        return peak, phase

    def _announce(self, est: Any, knobs: Mapping[str, Any]) -> None:
        rec = est.record
        shape = f"batch {knobs['batch_size']} x seq {rec.settings.seq_len}"
        if knobs.get("grad_accumulation", 1) > 1:
            shape += f" x {knobs['grad_accumulation']} micro-batches"
        allocated, phase = self.peak_of(rec)
        figure = rec.peak.device_total if knobs.get("device") == "cuda" else allocated
        if knobs.get("device") == "cuda" and figure is not None and allocated is not None:
            figure += allocated - (rec.peak.allocated or 0)
        logger.info(
            "predicted peak %s at %s (%s, %s, %s, checkpointing %s, %s; %s)",
            format_bytes(figure) if figure is not None else "not predicted",
            phase,
            rec.settings.optimizer,
            rec.settings.precision,
            shape,
            rec.settings.checkpointing,
            rec.settings.attention,
            knobs.get("device"),
        )
        verdict = self.verdict(rec)
        if verdict is not None:
            fits, text = verdict
            if fits is False:
                self.note(f"will not fit: {text}")
            else:
                logger.info(text)

    def verdict(self, rec: Any) -> tuple[bool | None, str] | None:
        """(fits, sentence) for the device; None on the CPU (no device limit)."""
        if rec.settings.device != "cuda" or rec.peak.device_total is None:
            return None
        if rec.gpu is not None:
            fits = rec.gpu.fits
            word = "fits" if fits else "does not fit"
            return fits, (
                f"{word} {rec.gpu.name} ({format_bytes(rec.gpu.usable)} usable): predicted peak "
                f"{format_bytes(rec.peak.device_total)}"
            )
        total = _cuda_total()
        if total is None:
            return None
        fits = rec.peak.device_total <= total
        word = "fits" if fits else "does not fit"
        return fits, f"{word} this GPU ({format_bytes(total)}): predicted peak {format_bytes(rec.peak.device_total)}"

    # -- profiled steps ----------------------------------------------------------------------
    def wants(self, step: int) -> bool:
        return step in self.profile_steps

    def begin_step(self, step: int, model: Any, optimizer: Any) -> None:
        """Start profiling optimizer step `step` (1-based) under memprof.track."""
        from memprof.profiler.api import track

        self.close()
        inner = getattr(optimizer, "optimizer", optimizer)
        self._session = track(model, inner, events=False)
        self._run = self._session.__enter__()
        self._step = step

    def close(self) -> None:
        """End a profiling session left open (a step that raised)."""
        if self._session is not None:
            session, self._session = self._session, None
            session.__exit__(None, None, None)

    def end_step(self) -> dict[str, Any] | None:
        """Stop profiling; compare with the estimate at the measured shape; save; the result row."""
        if self._session is None:
            return None
        self.close()
        run, step = self._run, self._step
        rec = run.record
        result: dict[str, Any] = {"step": step, "measured_peak": rec.peak.allocated, "measured_phase": rec.peak.phase}
        self._follow_loop(rec.settings.values)
        shapes = [s for s in (rec.settings.values.get("input_shapes") or []) if s]
        est = None
        if shapes and self.spec is not None:
            shape = max(shapes, key=lambda s: s[0] * (s[1] if len(s) > 1 else 1))
            seq = int(shape[1]) if len(shape) > 1 and self.spec.model_type != "vit" else None
            est = self.predict(int(shape[0]), seq, announce=self.estimate is None)
        if est is None:
            est = self.estimate
        predicted, predicted_phase = self.peak_of(est.record) if est is not None else (None, None)
        result.update(predicted_peak=predicted, predicted_phase=predicted_phase)
        measured = result["measured_peak"]
        if predicted is not None and measured:
            result["error_pct"] = round(100.0 * (predicted - measured) / measured, 3)
            logger.info(
                "step %d: predicted peak %s (%s), measured %s (%s): %+.2f%%",
                step,
                format_bytes(predicted),
                result["predicted_phase"],
                format_bytes(measured),
                result["measured_phase"],
                result["error_pct"],
            )
        else:
            result["error_pct"] = None
            logger.info(
                "step %d: measured peak %s (%s); %s",
                step,
                format_bytes(measured) if measured is not None else "none",
                result["measured_phase"],
                self.not_predicted or "no prediction",
            )
        result["profile"] = self._save(run, est, step)
        self.results.append(result)
        return result

    def _follow_loop(self, settings: Mapping[str, Any]) -> None:
        """Predict with the loop the profiled step ran (the profiler's settings.output_kept and
        settings.zero_grad), saying so when it is not the one assumed before step 1."""
        observed = {"keep_output": settings.get("output_kept"), "zero_grad": settings.get("zero_grad")}
        for knob, value in observed.items():
            if value is None or self.knobs.get(knob, {"keep_output": True, "zero_grad": "set-to-none"}[knob]) == value:
                continue
            self.knobs[knob] = value
            self.provenance[knob] = "the profiled step"
            self.note(f"the profiled step ran with {knob}={value!r}: predicted with it from now on")

    def _save(self, run: Any, est: Any, step: int | None) -> str | None:
        if not self.out_dir:
            return None
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            path = run.save(os.path.join(self.out_dir, f"step-{step}.json"))
            if est is not None:
                import json

                with open(os.path.join(self.out_dir, f"step-{step}.estimate.json"), "w", encoding="utf-8") as fh:
                    json.dump(est.record.to_dict(), fh, indent=1)
            return str(path)
        except (OSError, MemprofUserError) as exc:
            self.note(f"could not save the profile of step {step} under {self.out_dir!r} ({exc})")
            return None

    def metrics(self, result: Mapping[str, Any]) -> dict[str, float]:
        """The numbers a logger (wandb, TensorBoard, ...) takes: bytes and the error in percent."""
        out: dict[str, float] = {}
        if result.get("predicted_peak") is not None:
            out["memprof/predicted_peak_bytes"] = float(result["predicted_peak"])
        if result.get("measured_peak") is not None:
            out["memprof/measured_peak_bytes"] = float(result["measured_peak"])
        if result.get("error_pct") is not None:
            out["memprof/peak_error_pct"] = float(result["error_pct"])
        return out


def _cuda_preset() -> str | None:
    """memprof's GPU preset for the current CUDA device (by its NVML / torch name), if it has one."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from memprof.estimators.gpus import get_gpu

        return get_gpu(torch.cuda.get_device_name(torch.cuda.current_device())).name
    except Exception:
        return None


def _cuda_total() -> int | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    except Exception:
        return None
