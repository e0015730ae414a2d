"""MODEL as `package.module:factory`: a function returning the nn.Module the user trains.

The factory runs under `torch.device("meta")`, so no weight is allocated and a 70B model costs
nothing to build. memprof's estimate needs the architecture (the activation replay follows the
Hugging Face modeling code of each supported family), so the module must be a Hugging Face model of
a supported family whose parameters are those memprof derives for it; the parameter list is
compared tensor by tensor, so an estimate never rests on a model memprof misreads. Anything else
gets an error saying to profile it with `memprof.track` instead.

This is the one path of `memprof estimate` that imports torch (and the user's code).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.families import SUPPORTED_MODEL_TYPES
from memprof.estimators.models import FACTORY_REF, ModelSpec, is_factory_ref, spec_from_config  # noqa: F401


def _resolve(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    added = os.getcwd() not in sys.path
    if added:  # like `python -m`: a module in the current folder can be named
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MemprofUserError(f"model {ref!r}: cannot import module {module_name!r} ({exc})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n)))
            raise MemprofUserError(
                f"model {ref!r}: {module_name} has no {attr!r}; callables there: " + (", ".join(public[:20]) or "none")
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise MemprofUserError(f"model {ref!r}: {attr} ({type(obj).__name__}) is not a function returning an nn.Module")
    return obj


def spec_from_factory(ref: str) -> ModelSpec:
    """The ModelSpec of the module `package.module:factory` returns, checked against its parameters."""
    factory = _resolve(ref)
    import torch

    with torch.device("meta"):
        try:
            model = factory()
        except MemprofUserError:
            raise
        except Exception as exc:  # the user's code failed: say where, without a traceback
            raise MemprofUserError(f"model {ref!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise MemprofUserError(f"model {ref!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    config: Any = getattr(model, "config", None)  # whatever the user's module holds there
    raw = config.to_dict() if hasattr(config, "to_dict") else None
    if not raw or raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        kind = (
            f"model_type {raw.get('model_type')!r}"
            if raw
            else f"a {type(model).__name__} without a Hugging Face config"
        )
        raise MemprofUserError(
            f"model {ref!r} is {kind}; memprof estimates Hugging Face models of the types "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}; measure other modules with memprof.track"
        )
    spec = spec_from_config(raw, name=ref, where=ref, source=f"factory {ref}")
    _check_parameters(ref, spec, model)
    return spec


def _check_parameters(ref: str, spec: ModelSpec, model: Any) -> None:
    theirs = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    ours = [(t.name, tuple(t.shape)) for t in spec.parameter_tensors()]
    if theirs == ours:
        return
    diff = next(((a, b) for a, b in zip(theirs, ours) if a != b), None)
    where = (
        f"first difference: the module has {diff[0][0]} {diff[0][1]}, memprof expects {diff[1][0]} {diff[1][1]}"
        if diff
        else f"the module has {len(theirs)} parameter tensors, memprof expects {len(ours)}"
    )
    raise MemprofUserError(
        f"model {ref!r} is a {type(model).__name__}; memprof models the parameters of {spec.head_class} for "
        f"{spec.model_type} and they differ ({where}); measure it with memprof.track"
    )
