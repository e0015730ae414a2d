"""Adapters: training a model through peft's LoRA, on full-precision or bitsandbytes-quantized base weights.

One place for the adapter story. `adapt(spec, precision, ...)` returns the `ModelSpec` with an
`Adapter`: its `parameter_tensors()` become what `peft_model.named_parameters()` holds (base weights
frozen, quantized ones in their bitsandbytes storage with their quantization state, float32
`lora_A` / `lora_B` per wrapped module), so model states and the optimizer registry, which work over
trainable tensors only, follow; and the activation replay (memprof.estimators.autograd) runs each
linear module through `Adapter.linear`: the frozen or quantized base layer, then the LoRA branch.
The families expose nothing new: the linear modules are the ones their replay runs through
`families._trace.linear` (the output layer is not among them, as peft's all-linear leaves it out).

lora.py holds peft's behaviour, quantize.py bitsandbytes' storage and kernels; the recipe they follow:
- LoRA: `get_peft_model(model, LoraConfig(r, target_modules, lora_dropout))`;
- QLoRA / int8 LoRA: `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True,
  bnb_4bit_quant_type=nf4|fp4, bnb_4bit_use_double_quant, bnb_4bit_compute_dtype=<the precision's
  compute dtype>))` or `load_in_8bit=True`, then peft's `prepare_model_for_kbit_training` (freezes
  everything, casts 16-bit float weights to float32) and `get_peft_model`.
Gradient checkpointing (`--checkpointing full`): transformers 5 calls `enable_input_require_grads()`
when it enables checkpointing on a text model (modeling_utils.py, `_activation_checkpointing_enable`),
so the input embeddings' output requires grad and every layer saves as in full training but for the
frozen linears' inputs. prepare_model_for_kbit_training enables reentrant checkpointing unless
told `use_reentrant=False`; the replay recomputes as non-reentrant checkpointing does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from ..errors import ParameterError
from ..families import SUPPORTED_MODEL_TYPES as SUPPORTED
from ..tensors import ParamTensor
from . import lora as _lora
from . import quantize as _quantize
from .lora import ALL_LINEAR, DEFAULT_TARGETS
from .quantize import QUANTIZABLE, QUANTIZE

if TYPE_CHECKING:
    from ..autograd import T, Trace
    from ..families._base import Linear
    from ..models import ModelSpec
    from ..precision import Precision

# families whose experts' frozen computation the replay does not adapt (families/_moe.py saves as in
# full training): LoRA on them is refused rather than estimated without a measurement behind it
MOE_NOT_MODELLED = ("mixtral", "qwen3_moe")

__all__ = ["ALL_LINEAR", "DEFAULT_TARGETS", "QUANTIZABLE", "QUANTIZE", "Adapter", "adapt", "linear_modules"]


@dataclass(frozen=True)
class Adapter:
    """LoRA (rank > 0) on frozen base weights, optionally quantized. Hashable: it is part of the
    ModelSpec the activation replay is cached by."""

    rank: int
    targets: tuple[str, ...]  # full module names peft wraps, in model order
    dropout: float = 0.0
    quantize: str | None = None  # "int8" | "nf4" | "fp4"
    double_quant: bool = False
    quantized: tuple[str, ...] = ()  # full module names bitsandbytes replaced
    compute_dtype: str = "float32"  # bnb_4bit_compute_dtype: the precision's compute dtype
    load_dtype: str = "float32"  # the dtype the weights were loaded in (quantized from)
    requested: str = ""  # the targets as asked ("" for peft's default, "all-linear", names)

    # -- parameters ------------------------------------------------------------------------------
    def model_tensors(self, spec: ModelSpec, base: Sequence[ParamTensor]) -> list[ParamTensor]:
        """`tensors` for `spec`'s base parameters, its linear modules read from the spec without the
        adapter (ModelSpec calls this on its adapter: models.py does not import this package)."""
        return list(self.tensors(base, linear_modules(dataclasses.replace(spec, adapter=None))))

    def tensors(self, base: Sequence[ParamTensor], linears: Sequence[Linear]) -> list[ParamTensor]:
        """`named_parameters()` of the peft model (quantization states included, as bitsandbytes
        keeps them with the weight): base tensors frozen, LoRA tensors after their module's."""
        by_module = {m.name: m for m in linears}
        weights = {m.weight.name: m for m in linears if m.name in self.quantized}
        last_tensor = {}  # module -> its last base tensor (LoRA tensors are registered after it)
        for m in linears:
            last_tensor[(m.bias or m.weight).name] = m.name
        out: list[ParamTensor] = []
        for t in base:
            if t.name in weights and self.quantize is not None:
                out += _quantize.storage(t, self.quantize, self.double_quant)
            else:
                dtype = t.dtype
                if self.quantize is not None and t.name in last_tensor and last_tensor[t.name] in self.quantized:
                    dtype = _quantize.bias_dtype(self.quantize, self.compute_dtype, self.load_dtype)
                out.append(dataclasses.replace(t, dtype=dtype, trainable=False))
            module = last_tensor.get(t.name)
            if module is not None and module in self.targets:
                m = by_module[module]
                a, b = _lora.lora_names(module)
                out.append(ParamTensor(a, (self.rank, m.in_features), _lora.ADAPTER_DTYPE))
                out.append(ParamTensor(b, (m.out_features, self.rank), _lora.ADAPTER_DTYPE))
        return out

    # -- the activation replay ---------------------------------------------------------------------
    def linear(self, tr: Trace, x: T, m: Linear) -> T:
        """x through module `m` as the adapted model runs it (autograd.Trace calls it per linear)."""
        if m.name in self.quantized and self.quantize is not None:
            out = _quantize.quantized_linear(tr, x, m, self.quantize, self.compute_dtype, self.load_dtype)
        else:
            bias = tr.param(m.bias.name, m.bias.numel, m.bias.dtype) if m.bias is not None else None
            out = tr.linear(x, tr.param(m.weight.name, m.weight.numel, m.weight.dtype), m.out_features, bias)
        if m.name in self.targets:
            quantized = self.quantize if m.name in self.quantized else None
            out = _lora.lora_branch(tr, x, m, out, self.rank, self.dropout, quantized)
        return out

    def input_requires_grad(self, tr: Trace) -> bool:
        """Whether the input embeddings' output requires grad: transformers' gradient checkpointing
        calls enable_input_require_grads() (module docstring)."""
        return tr.checkpointing == "full"

    def describe(self) -> str:
        quant = (
            f"{self.quantize}{' + double quant' if self.double_quant else ''} base weights, " if self.quantize else ""
        )
        targets = self.requested or "peft's default targets"
        return f"LoRA r={self.rank} on {len(self.targets)} modules ({targets}), {quant}dropout {self.dropout:g}"


@lru_cache(maxsize=32)
def linear_modules(spec: ModelSpec) -> tuple[Linear, ...]:
    """The linear modules of `spec` in execution order: the ones its family's replay runs through
    `families._trace.linear` (a one-token replay; the output layer is not among them)."""
    from ..activations import ActivationSettings, build_trace

    tr = build_trace(
        dataclasses.replace(spec, adapter=None) if spec.adapter is not None else spec,
        ActivationSettings(1, 1, "float32", "float32", False, "eager", "none", training=False, device="cpu"),
    )
    seen: dict[str, Linear] = {}
    for m in tr.linears:
        seen.setdefault(m.name, m)
    return tuple(seen.values())


def adapt(
    spec: ModelSpec,
    precision: Precision,
    *,
    lora_rank: int | None = None,
    lora_targets: str | Sequence[str] | None = None,
    lora_dropout: float = 0.0,
    quantize: str | None = None,
    double_quant: bool = False,
) -> ModelSpec:
    """`spec` trained through LoRA (and quantized base weights); `spec` itself without a rank."""
    quant = _quantize.check_quantize(quantize, double_quant, spec.model_type)
    if lora_rank is None:
        if quant is not None:
            raise ParameterError(
                f"{{quantize}} {quant} freezes the whole model in {quant} (nothing would train): add "
                "{lora_rank} R to train LoRA adapters on it (QLoRA)",
                "quantize",
                "lora_rank",
            )
        if lora_targets is not None or lora_dropout:
            raise ParameterError(
                "{lora_targets} and {lora_dropout} configure LoRA: add {lora_rank} R",
                "lora_rank",
                "lora_targets",
                "lora_dropout",
            )
        return spec
    if spec.model_type in MOE_NOT_MODELLED:
        raise ParameterError(
            f"LoRA on a mixture-of-experts model ({spec.model_type}) is not modelled yet: what its frozen "
            f"experts keep for backward is not replayed (measured: +10 % on a tiny mixtral); LoRA works for "
            f"{', '.join(t for t in SUPPORTED if t not in MOE_NOT_MODELLED)}",
            "lora_rank",
        )
    if precision.master_weights:
        raise ParameterError(
            f"LoRA with {precision.name} (an engine's fp32 master weights) is not modelled; use bf16-mixed, "
            "16-mixed, bf16-true or 32-true",
            "precision",
        )
    if quant is not None and not (precision.autocast or precision.param_dtype == "float32"):
        raise ParameterError(
            f"prepare_model_for_kbit_training keeps the non-quantized weights in float32, so {{quantize}} "
            f"trains as 32-true, bf16-mixed or 16-mixed (with bnb_4bit_compute_dtype the autocast dtype), "
            f"not {precision.name}",
            "precision",
            "quantize",
        )
    if spec.adapter is not None:
        spec = dataclasses.replace(spec, adapter=None)
    linears = linear_modules(spec)
    requested = _lora.parse_targets(lora_targets)
    targets = _lora.resolve_targets(spec.model_type, linears, requested)
    rank = _lora.check_rank(lora_rank, targets)
    dropout = _lora.check_dropout(lora_dropout)
    compute = precision.compute_dtype if precision.autocast else precision.param_dtype
    adapter = Adapter(
        rank=rank,
        targets=tuple(m.name for m in targets),
        dropout=dropout,
        quantize=quant,
        double_quant=bool(double_quant),
        quantized=tuple(m.name for m in linears) if quant is not None else (),
        compute_dtype=compute,
        load_dtype=precision.param_dtype,
        requested=",".join(requested) if requested else "",
    )
    return dataclasses.replace(spec, adapter=adapter)
