"""Every optimizer of `torch.optim` in torch 2.13.0, in registry order.

Each is defined (states and step scratch together) in the module of its group:
- torch_sgd.py: sgd, sgd-momentum, asgd
- torch_adagrad.py: adagrad, adadelta, rmsprop, rprop
- torch_adam.py: adam, adamw, adamax, nadam, radam, sparse-adam
- torch_matrix.py: adafactor, muon
- torch_lbfgs.py: lbfgs
What they share: _torch.py (states) and _scratch.py (step scratch).
"""

from __future__ import annotations

from . import torch_adagrad, torch_adam, torch_lbfgs, torch_matrix, torch_sgd
from ._spec import OptimizerSpec

_BY_NAME = {
    spec.name: spec
    for module in (torch_sgd, torch_adagrad, torch_adam, torch_matrix, torch_lbfgs)
    for spec in module.SPECS
}

# the registry's order (OPTIMIZERS, `memprof presets optimizers`, ties between entries of one class)
ORDER = (
    "sgd",
    "sgd-momentum",
    "adam",
    "adamw",
    "adagrad",
    "adadelta",
    "adamax",
    "asgd",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sparse-adam",
    "adafactor",
    "muon",
    "lbfgs",
)
assert set(ORDER) == set(_BY_NAME) and len(ORDER) == len(_BY_NAME), "torch_optim.ORDER must list every entry once"

SPECS: list[OptimizerSpec] = [_BY_NAME[name] for name in ORDER]
