"""Optimizer registry: the state each real optimizer implementation keeps, to the byte, and the
scratch memory its step() allocates on top.

    >>> from memprof.estimators.optimizers import get_optimizer
    >>> from memprof.estimators.tensors import ParamTensor
    >>> get_optimizer("AdamW").state_bytes([ParamTensor("w", (1024, 1024))])
    8388612

Each entry names the implementation (package, class, version) whose source it was read from and is
checked against by tests/test_optimizers.py, except the population methods (analytic only).
`state_bytes` counts every state tensor; `device_state_bytes` leaves out the scalars torch keeps in
host memory (non-capturable `step`), which is what a GPU's optimizer_states category should use.
`step_temporary_bytes` and its companions (`default_implementation`, `implementations`, `exactness`,
`needs_create_graph`, `create_graph_caveat`) read the entry's step model, `OptimizerSpec.step`.

One optimizer, one place: its states and its step scratch are defined together in one module:
- torch.optim (torch_optim.py lists them in registry order): torch_sgd.py (sgd, sgd-momentum, asgd),
  torch_adagrad.py (adagrad, adadelta, rmsprop, rprop), torch_adam.py (adam, adamw, adamax, nadam,
  radam, sparse-adam), torch_matrix.py (adafactor, muon), torch_lbfgs.py (lbfgs)
- adaptive.py: lion, adabelief, diffgrad, adamw8bit, galore
- second_order.py: shampoo, soap, sophia, adahessian
- tuning_free.py: prodigy, dadapt-adam, schedulefree-adamw
- population.py: ga, pso
What they share: _spec.py (OptimizerSpec, state helpers, the one place options are validated),
_scratch.py (step-scratch machinery), _torch.py (torch.optim's state helpers); the registry is
_registry.py, the step-scratch functions _step.py.
"""

from __future__ import annotations

from ._registry import OPTIMIZERS, get_optimizer, optimizer_names, optimizer_table
from ._scratch import IMPLEMENTATIONS, StepScratch
from ._spec import Family, OptimizerSpec, OptimizerStateTensor
from ._step import (
    create_graph_caveat,
    default_implementation,
    exactness,
    implementations,
    needs_create_graph,
    step_option_defaults,
    step_temporary_bytes,
)

__all__ = [
    "Family",
    "OptimizerSpec",
    "OptimizerStateTensor",
    "OPTIMIZERS",
    "get_optimizer",
    "optimizer_names",
    "optimizer_table",
    "StepScratch",
    "IMPLEMENTATIONS",
    "step_temporary_bytes",
    "default_implementation",
    "implementations",
    "exactness",
    "needs_create_graph",
    "create_graph_caveat",
    "step_option_defaults",
]
