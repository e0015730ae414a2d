"""Plain descriptions of tensors: what a model's parameters and an optimizer's states are made of."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from .dtypes import dtype_bytes


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor of a model, named as in `model.named_parameters()`."""

    name: str
    shape: tuple[int, ...]
    dtype: str | None = None  # torch's name; None: the training precision's parameter dtype
    trainable: bool = True  # False: frozen (requires_grad=False: no gradient, no optimizer state)

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class StateTensor:
    """One tensor an optimizer keeps for a parameter (or globally, with `param` None)."""

    key: str  # the key in optimizer.state[p], e.g. "exp_avg", "step"
    shape: tuple[int, ...]
    dtype: str  # torch's name: "float32", "bfloat16", "uint8", ...
    param: str | None = None  # the parameter it belongs to

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)
