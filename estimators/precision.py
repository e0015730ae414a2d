"""Training precisions, named as the ecosystem names them (Lightning's strings), and what each keeps.

Two families of schemes give the same 16 bytes per parameter for Adam but split them differently:
- torch.autocast ("mixed"): fp32 parameters (4) + fp32 gradients (4) + fp32 optimizer states;
  the forward casts weights to 16 bits on the fly (held by the autocast cache during forward).
- master weights (ZeRO / Megatron / DeepSpeed fp16): 16-bit parameters (2) + 16-bit gradients (2);
  the optimizer keeps an fp32 master copy (4) plus its fp32 states. The ZeRO paper's 2+2+12.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dtypes import dtype_bytes
from .errors import unknown_name


@dataclass(frozen=True)
class Precision:
    name: str
    aliases: tuple[str, ...]
    param_dtype: str  # dtype of the model's parameters on the device
    grad_dtype: str  # dtype of .grad
    optimizer_dtype: str  # dtype of the parameters the optimizer steps (its zeros_like states follow it)
    compute_dtype: str  # dtype the matmuls run in
    autocast: bool  # forward runs under torch.autocast
    master_weights: bool  # optimizer keeps an fp32 copy of the parameters (counted as optimizer state)
    description: str

    @property
    def param_bytes(self) -> int:
        return dtype_bytes(self.param_dtype)

    @property
    def grad_bytes(self) -> int:
        return dtype_bytes(self.grad_dtype)

    @property
    def master_bytes(self) -> int:
        return dtype_bytes(self.optimizer_dtype) if self.master_weights else 0


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision(
            "32-true",
            ("fp32", "32", "float32"),
            "float32",
            "float32",
            "float32",
            "float32",
            False,
            False,
            "fp32 everywhere",
        ),
        Precision(
            "16-mixed",
            ("fp16-mixed", "16", "amp", "fp16-amp"),
            "float32",
            "float32",
            "float32",
            "float16",
            True,
            False,
            "torch.autocast(float16) + GradScaler; fp32 weights, grads, states",
        ),
        Precision(
            "bf16-mixed",
            ("bf16-amp",),
            "float32",
            "float32",
            "float32",
            "bfloat16",
            True,
            False,
            "torch.autocast(bfloat16); fp32 weights, grads, states",
        ),
        Precision(
            "16-true",
            ("fp16-true", "fp16", "float16"),
            "float16",
            "float16",
            "float16",
            "float16",
            False,
            False,
            "model cast to fp16; optimizer states in fp16",
        ),
        Precision(
            "bf16-true",
            ("bf16", "bfloat16"),
            "bfloat16",
            "bfloat16",
            "bfloat16",
            "bfloat16",
            False,
            False,
            "model cast to bf16; optimizer states in bf16",
        ),
        Precision(
            "16-master",
            ("fp16-master", "deepspeed-fp16", "megatron-fp16"),
            "float16",
            "float16",
            "float32",
            "float16",
            False,
            True,
            "fp16 weights and grads, fp32 master weights and states (ZeRO/Megatron/DeepSpeed)",
        ),
        Precision(
            "bf16-master",
            ("deepspeed-bf16", "megatron-bf16"),
            "bfloat16",
            "bfloat16",
            "float32",
            "bfloat16",
            False,
            True,
            "bf16 weights and grads, fp32 master weights and states (ZeRO/Megatron/DeepSpeed bf16)",
        ),
    )
}

_BY_ALIAS: dict[str, str] = {alias: p.name for p in PRECISIONS.values() for alias in (p.name, *p.aliases)}


def get_precision(name: str) -> Precision:
    """The precision named `name` (a Lightning-style name or an alias such as "fp32")."""
    key = name.strip().lower()
    if key not in _BY_ALIAS:
        raise unknown_name("precision", name, _BY_ALIAS)
    return PRECISIONS[_BY_ALIAS[key]]
