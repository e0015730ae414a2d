"""`memprof.estimate` and `memprof.fit`: the analytic estimator for any MODEL a user can name.

A MODEL is a preset name, a Hugging Face config.json (or a folder holding one), a `ModelSpec`, or
`package.module:factory` (or `path/to/file.py:factory`) — a function returning a Hugging Face model
of a supported family, built on the meta device (memprof/factory.py; the one path that imports
torch). `memprof.estimators` knows the first three and stays torch-free; this module adds the
factory and is what the CLI and the public API call. Any other model is traced on fake tensors by
`memprof.trace` (memprof.tracer, a layer above this one: it runs the profiler's tracker);
`memprof estimate MODULE:FACTORY` picks the analytic path when it can and traces otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from memprof.estimators.estimation import Estimate
from memprof.estimators.estimation import estimate as _estimate
from memprof.estimators.models import ModelSpec, load_model

if TYPE_CHECKING:
    from memprof.estimators.fit import FitResult

__all__ = ["estimate", "fit", "optimizer_rows", "resolve_model"]


def resolve_model(model: str | ModelSpec, **offered: Any) -> ModelSpec:
    """The ModelSpec a MODEL names (a factory reference is built on the meta device and checked;
    offered: batch_size / seq_len for a factory whose signature takes them)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str) and not Path(model.strip()).exists():
        from memprof.factory import is_code_ref, spec_from_factory

        if is_code_ref(model):
            return spec_from_factory(model.strip(), **offered)
    return load_model(model)


def estimate(model: str | ModelSpec, optimizer: str = "adamw", precision: str = "bf16-mixed", **knobs: Any) -> Estimate:
    """Predict the memory of training `model` with `optimizer` at `precision`, per device.

    `knobs` are those of `memprof.estimators.estimation.estimate` (batch_size, seq_len,
    checkpointing, attention, device, gpus, zero, offload, gpu, grad_accumulation, optimizer_impl,
    cuda_version, alloc_conf, and the optimizer's own options). The result's `.record` is the
    `EstimateRecord` every report reads; `.to_dict()` is its JSON.
    """
    offered = {k: knobs.get(k) for k in ("batch_size", "seq_len")}
    return _estimate(resolve_model(model, **offered), optimizer, precision, **knobs)


def fit(
    model: str | ModelSpec,
    gpu: str,
    *,
    headroom: str | int | None = None,
    batch_size: int | None = None,
    seq_len: int | str | None = None,
    **knobs: Any,
) -> FitResult:
    """The largest batch size (or, with seq_len="auto", sequence) of `model` that fits `gpu`.

    headroom: memory to leave free, a share of the usable memory ("5%") or a size ("2GiB"); None:
    `memprof.estimators.fit.DEFAULT_HEADROOM`."""
    from memprof.estimators.fit import DEFAULT_HEADROOM
    from memprof.estimators.fit import fit as _fit

    if headroom is None:
        headroom = DEFAULT_HEADROOM
    return _fit(resolve_model(model), gpu, headroom=headroom, batch_size=batch_size, seq_len=seq_len, **knobs)


def optimizer_rows(model: str | ModelSpec, **knobs: Any) -> list[dict[str, object]]:
    """One plain row per registered optimizer, grouped by family, cheapest first within a family."""
    from memprof.estimators.optimizers import OPTIMIZERS, Family

    spec = resolve_model(model)
    family_order = {family: i for i, family in enumerate(Family)}
    ordered: list[tuple[tuple[int, int, str], dict[str, object]]] = []
    for opt in OPTIMIZERS.values():
        result = _estimate(spec, opt.name, **knobs)
        full_states = result.full_model_states["optimizer_states"]
        ordered.append(
            (
                (family_order[opt.family], full_states, opt.name),
                {
                    "family": opt.family.value,
                    "optimizer": opt.name,
                    "implementation": opt.implementation,
                    "state_bytes_per_param": full_states / result.parameters,
                    "optimizer_states": result.model_states["optimizer_states"],
                    "model_states": result.model_state_bytes,
                    "peak": result.device_total,
                    "fits": result.fits,
                },
            )
        )
    ordered.sort(key=lambda pair: pair[0])
    return [row for _, row in ordered]
