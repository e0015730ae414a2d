"""`memprof.Workload`: one training step of the user's own code, as the tracer runs it.

    def workload(batch_size=8, seq_len=256):
        model = MyGPT(GPTConfig())
        batch = torch.randint(0, 50257, (batch_size, seq_len))
        return memprof.Workload(model, {"idx": batch, "targets": batch}, loss=lambda out, inputs: out[1])

The tracer (memprof/tracer/) calls such a factory on fake tensors and runs exactly

    out = model(**inputs)            # model(*inputs) for a tuple/list, model(inputs) for a tensor
    loss = loss_fn(out, inputs)      # default: out.loss / out["loss"], else `out` when it is a scalar
    loss.backward()
    optimizer.step()                 # default: memprof's registry name, with the real implementation
    optimizer.zero_grad(set_to_none=True)

This module is torch-free (the tracer checks the types of what a Workload holds): `inputs` is a dict,
a tuple or list, or a tensor; `loss` is `callable(output, inputs) -> scalar tensor`; `optimizer` is
`callable(params) -> torch.optim.Optimizer` over the parameters that require grad. A mapping with the
same keys is accepted wherever a Workload is (`Workload.from_value`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from memprof.estimators.errors import MemprofUserError

__all__ = ["Workload"]

_KEYS = ("model", "inputs", "loss", "optimizer")


@dataclass(frozen=True)
class Workload:
    """What one training step needs: the model, its inputs, and optionally the loss and optimizer."""

    model: Any  # a torch.nn.Module
    inputs: Any  # dict -> model(**inputs); tuple/list -> model(*inputs); a tensor -> model(inputs)
    loss: Callable[[Any, Any], Any] | None = None  # (output, inputs) -> a scalar tensor
    optimizer: Callable[[Any], Any] | None = None  # (params that require grad) -> torch.optim.Optimizer

    def __post_init__(self) -> None:
        if self.model is None:
            raise MemprofUserError("Workload: model is None; pass the torch.nn.Module the step trains")
        if self.inputs is None:
            raise MemprofUserError(
                "Workload: inputs is None; pass what the model is called with: a dict (model(**inputs)), "
                "a tuple or list (model(*inputs)) or a tensor (model(inputs))"
            )
        for name in ("loss", "optimizer"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                what = "(output, inputs) -> scalar tensor" if name == "loss" else "(params) -> torch.optim.Optimizer"
                raise MemprofUserError(
                    f"Workload: {name} must be a function {what} or None, got {type(value).__name__}"
                )

    @classmethod
    def from_value(cls, value: Any, where: str = "the factory") -> Workload:
        """A Workload as given, or built from a mapping with the keys model, inputs, loss, optimizer."""
        if isinstance(value, Workload):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(str(k) for k in value if k not in _KEYS)
            if unknown:
                raise MemprofUserError(
                    f"{where} returned a mapping with unknown keys {', '.join(unknown)}; "
                    f"a workload has {', '.join(_KEYS)}"
                )
            missing = [k for k in ("model", "inputs") if k not in value]
            if missing:
                raise MemprofUserError(
                    f"{where} returned a mapping without {' and '.join(missing)}; a workload needs model and inputs "
                    "(and optionally loss, optimizer)"
                )
            return cls(**{f.name: value.get(f.name) for f in fields(cls)})
        raise MemprofUserError(
            f"{where} returned a {type(value).__name__}; return a memprof.Workload(model, inputs, loss=..., "
            "optimizer=...), a mapping with those keys, or a Hugging Face model"
        )
