"""MODEL as `package.module:factory` (or `path/to/file.py:factory`): the user's own model code.

The factory runs under `torch.device("meta")`, so no weight is allocated and a 70B model costs
nothing to build. memprof's estimate needs the architecture (the activation replay follows the
Hugging Face modeling code of each supported family), so the module must be a Hugging Face model of
a supported family whose parameters are those memprof derives for it; the parameter list is
compared tensor by tensor, so an estimate never rests on a model memprof misreads. Anything else
raises NotAnalytic, and `memprof estimate` traces it on fake tensors instead (memprof.tracer, which
also uses `resolve_factory` and `call_factory` below to load and call the user's code).

This is the one path of `memprof estimate` that imports torch (and the user's code).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any

from memprof.estimators.errors import MemprofError, MemprofUserError, UserCodeError
from memprof.estimators.families import SUPPORTED_MODEL_TYPES
from memprof.estimators.models import FACTORY_REF, ModelSpec, is_factory_ref, spec_from_config


class NotAnalytic(MemprofUserError):
    """The factory's model is not one the analytic estimator models; the message says why.

    `memprof estimate MODULE:FACTORY` traces such a model instead (memprof.tracer)."""


def is_code_ref(ref: str) -> bool:
    """Whether MODEL reads as `package.module:factory` or `path/to/file.py:factory`."""
    module, sep, attr = ref.strip().rpartition(":")
    if not sep or not module or not attr:
        return False
    if module.endswith(".py"):
        return bool(FACTORY_REF.match(f"x:{attr}"))
    return is_factory_ref(ref.strip())


def _import(module_name: str, ref: str) -> Any:
    if module_name.endswith(".py"):  # a file: imported under its own name, like `python path/to/file.py`
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise MemprofUserError(f"model {ref!r}: no file {module_name!r} (from {os.getcwd()})")
        name = "memprof_user_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise MemprofUserError(f"model {ref!r}: {module_name!r} is not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        folder = os.path.dirname(path)
        added = folder not in sys.path
        if added:  # its neighbours import as they would when the script runs
            sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # SystemExit: a script that parses its arguments on import
            sys.modules.pop(name, None)
            raise UserCodeError(
                f"model {ref!r}: importing {module_name} raised {type(exc).__name__}: {exc}", exc
            ) from None
        finally:
            if added:
                sys.path.remove(folder)
        return module
    added = os.getcwd() not in sys.path
    if added:  # like `python -m`: a module in the current folder can be named
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise MemprofUserError(f"model {ref!r}: cannot import module {module_name!r} ({exc})") from None
    except Exception as exc:  # the module itself raised while importing
        raise UserCodeError(f"model {ref!r}: importing {module_name} raised {type(exc).__name__}: {exc}", exc) from None
    finally:
        if added:
            sys.path.remove(os.getcwd())


def resolve_factory(ref: str) -> Any:
    """The callable `module:factory` (or `file.py:factory`) names."""
    module_name, _, attr = ref.strip().rpartition(":")
    module = _import(module_name, ref)
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


def accepted_kwargs(factory: Any, **offered: Any) -> dict[str, Any]:
    """Those of `offered` (None values dropped) the factory's signature accepts by name."""
    offered = {k: v for k, v in offered.items() if v is not None}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it bare
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in named}


def call_factory(factory: Any, ref: str, **offered: Any) -> Any:
    """Call the user's factory with the `offered` keywords it accepts; its own exceptions become
    UserCodeError (the user's exception type and message, no memprof traceback)."""
    try:
        return factory(**accepted_kwargs(factory, **offered))
    except MemprofError:
        raise
    except Exception as exc:  # the user's code failed: say where, without a traceback
        raise UserCodeError(f"model {ref!r}: the factory raised {type(exc).__name__}: {exc}", exc) from None


def spec_from_factory(ref: str, **offered: Any) -> ModelSpec:
    """The ModelSpec of the module `package.module:factory` returns, checked against its parameters.

    offered: batch_size / seq_len, passed to a factory whose signature accepts them. Raises
    NotAnalytic when the result is not a Hugging Face model memprof models (the tracer's case)."""
    factory = resolve_factory(ref)
    import torch

    with torch.device("meta"):
        model = call_factory(factory, ref, **offered)
    if not isinstance(model, torch.nn.Module):
        raise NotAnalytic(
            f"model {ref!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module; "
            "trace it with memprof.trace (the CLI's estimate does so by itself)"
        )
    config: Any = getattr(model, "config", None)  # whatever the user's module holds there
    raw = config.to_dict() if hasattr(config, "to_dict") else None
    if not raw or raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        kind = (
            f"model_type {raw.get('model_type')!r}"
            if raw
            else f"a {type(model).__name__} without a Hugging Face config"
        )
        raise NotAnalytic(
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
    raise NotAnalytic(
        f"model {ref!r} is a {type(model).__name__}; memprof models the parameters of {spec.head_class} for "
        f"{spec.model_type} and they differ ({where}); measure it with memprof.track"
    )
