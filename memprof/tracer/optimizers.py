"""The real implementation behind each registry optimizer name, and how to build it.

Shared by the validation matrix (memprof.validate trains tiny models with them) and the tracer (a
traced step runs the real optimizer on fake tensors). Imports of the implementations happen when an
optimizer is built, so reading this table costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NOT_RUN", "REAL_OPTIMIZERS", "RealOptimizer", "build_optimizers", "implementation_of"]


@dataclass(frozen=True)
class RealOptimizer:
    """How to build and drive the real implementation behind a registry entry."""

    module: str  # "torch.optim", "pytorch_optimizer", ...
    cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments
    estimate_options: dict[str, Any] = field(default_factory=dict)  # the same, in registry terms
    warm_steps: int = 1  # steps until the state has its steady size
    closure: bool = False  # LBFGS
    create_graph: bool = False  # Hutchinson Hessian estimates differentiate the gradient
    train_mode: bool = False  # schedule-free optimizers
    build: Callable[..., list] | None = None  # (params, real) -> optimizers, for several param groups


def _muon(params: list, real: RealOptimizer) -> list:
    """torch.optim.Muon takes 2-D parameters only; an AdamW steps the rest (registry: fallback)."""
    import torch

    two_d = [p for p in params if p.ndim == 2]
    rest = [p for p in params if p.ndim != 2]
    return [torch.optim.Muon(two_d, lr=0.02)] + ([torch.optim.AdamW(rest)] if rest else [])


def _galore(params: list, real: RealOptimizer) -> list:
    """GaLoreAdamW with every 2-D parameter in the GaLore group (the registry's default)."""
    from galore_torch import GaLoreAdamW

    two_d = [p for p in params if p.ndim == 2]
    rest = [p for p in params if p.ndim != 2]
    return [
        GaLoreAdamW(
            [
                {"params": rest},
                {"params": two_d, "rank": 128, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"},
            ]
        )
    ]


_T, _P = "torch.optim", "pytorch_optimizer"
REAL_OPTIMIZERS: dict[str, RealOptimizer] = {
    "sgd": RealOptimizer(_T, "SGD", {"lr": 0.01}),
    "sgd-momentum": RealOptimizer(_T, "SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "adam": RealOptimizer(_T, "Adam"),
    "adamw": RealOptimizer(_T, "AdamW"),
    "adagrad": RealOptimizer(_T, "Adagrad"),
    "adadelta": RealOptimizer(_T, "Adadelta"),
    "adamax": RealOptimizer(_T, "Adamax"),
    "asgd": RealOptimizer(_T, "ASGD"),
    "nadam": RealOptimizer(_T, "NAdam"),
    "radam": RealOptimizer(_T, "RAdam"),
    "rmsprop": RealOptimizer(_T, "RMSprop", {"momentum": 0.9, "centered": True}, {"momentum": 0.9, "centered": True}),
    "rprop": RealOptimizer(_T, "Rprop"),
    "adafactor": RealOptimizer(_T, "Adafactor"),
    "muon": RealOptimizer(_T, "Muon", build=_muon),
    "lbfgs": RealOptimizer(_T, "LBFGS", {"lr": 0.1, "history_size": 3}, {"history_size": 3}, closure=True),
    "lion": RealOptimizer(_P, "Lion"),
    "adabelief": RealOptimizer(_P, "AdaBelief"),
    "diffgrad": RealOptimizer(_P, "DiffGrad"),
    "adamw8bit": RealOptimizer("bitsandbytes.optim", "AdamW8bit"),
    "galore": RealOptimizer("galore_torch", "GaLoreAdamW", build=_galore),
    "shampoo": RealOptimizer(_P, "Shampoo"),
    "soap": RealOptimizer(_P, "SOAP", {"precondition_frequency": 1}, warm_steps=2),
    "sophia": RealOptimizer(_P, "SophiaH", create_graph=True),
    "adahessian": RealOptimizer(_P, "AdaHessian", create_graph=True),
    "prodigy": RealOptimizer("prodigyopt", "Prodigy"),
    "dadapt-adam": RealOptimizer("dadaptation", "DAdaptAdam"),
    "schedulefree-adamw": RealOptimizer("schedulefree", "AdamWScheduleFree", train_mode=True),
}
NOT_RUN = {
    "sparse-adam": "needs sparse gradients (nn.Embedding(sparse=True)); transformers models have dense ones",
    "ga": "analytic only: no implementation to run",
    "pso": "analytic only: no implementation to run",
}


def build_optimizers(name: str, params: list, **overrides: Any) -> list:
    """The real optimizer(s) of registry entry `name` over `params` (keyword overrides for the
    constructor, e.g. foreach=True); optimizers in `train_mode` are put in train mode."""
    real = REAL_OPTIMIZERS[name]
    if real.build is not None:
        opts = real.build(params, real)
    else:
        cls = getattr(importlib.import_module(real.module), real.cls)
        opts = [cls(params, **{**real.kwargs, **overrides})]
    if real.train_mode:
        for o in opts:
            o.train()
    return opts


def implementation_of(name: str) -> str:
    """`module.Class` of the registry entry's real implementation."""
    real = REAL_OPTIMIZERS[name]
    return f"{real.module}.{real.cls}"
