"""What the profiler sees of a peft LoRA model: the profile's `settings.adapter`.

Read off the live modules (peft 0.21.2, bitsandbytes 0.50.2 source, site-packages):
- peft's `LoraLayer` (tuners/lora/layer.py) wraps each target module: `r[adapter]` is the rank,
  `lora_dropout[adapter]` an `nn.Dropout` (its `p`) or `nn.Identity` (p 0), `get_base_layer()` the
  wrapped module (tuners/tuners_utils.py, BaseTunerLayer); a PeftModel names it
  `base_model.model.<name>` and, since peft wraps rather than replaces, the wrapped module's own
  parameters sit under `<name>.base_layer`;
- bitsandbytes' `Linear4bit` (nn/modules.py) keeps its weight as `Params4bit`, whose `quant_type` is
  "nf4" or "fp4" and `compress_statistics` is `bnb_4bit_use_double_quant`; its `quant_state`
  (functional.py, QuantState) holds the unpacked `shape` and `nested` (a second-level state: double
  quantization); `Linear8bitLt` keeps `Int8Params`, one int8 element per weight element.

No peft import: a model is a peft model only if peft is already loaded (sys.modules), so profiling
a model without peft installed costs nothing.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

__all__ = ["adapter_description"]

_PEFT_PREFIX = "base_model.model."


def _module_name(name: str) -> str:
    """The wrapped module's name in the base model (peft's prefix removed)."""
    return name.removeprefix(_PEFT_PREFIX)


def _quantization(base: torch.nn.Module) -> tuple[str | None, bool]:
    """("nf4" | "fp4" | "int8" | None, double quantization) of a LoRA layer's base layer."""
    bnb = sys.modules.get("bitsandbytes.nn")
    if bnb is None:
        return None, False
    if isinstance(base, getattr(bnb, "Linear4bit", ())):
        weight = base.weight
        state = getattr(weight, "quant_state", None)
        quant_type = getattr(state, "quant_type", None) or getattr(weight, "quant_type", None)
        nested = getattr(state, "nested", None)
        if nested is None:
            nested = getattr(weight, "compress_statistics", False)
        return str(quant_type), bool(nested)
    if isinstance(base, getattr(bnb, "Linear8bitLt", ())):
        return "int8", False
    return None, False


def _unquantized_numel(p: torch.Tensor) -> int:
    """A parameter's elements before quantization: a Params4bit packs two 4-bit values per uint8
    element (its quant_state.shape is the weight's own)."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else p.numel()


def adapter_description(model: torch.nn.Module) -> dict[str, Any] | None:
    """The LoRA adapter of a peft model as the profile records it, or None when `model` has none.

    Keys: type ("lora"), base_model (the wrapped model's class name), ranks and dropouts (the
    distinct values seen, sorted: one value is what an estimate can model), targets (the wrapped
    modules' names in the base model, in model order), quantize ("nf4" | "fp4" | "int8" | null: the
    base layers' bitsandbytes storage; "mixed" when they differ), double_quant, quantized (how many
    base layers are quantized), unquantized_parameters (every parameter's elements before packing).
    """
    tuners = sys.modules.get("peft.tuners.lora")
    lora_layer = getattr(tuners, "LoraLayer", None)
    if lora_layer is None:
        return None
    ranks: set[int] = set()
    dropouts: set[float] = set()
    targets: list[str] = []
    quants: set[str | None] = set()
    double = False
    quantized = 0
    for name, module in model.named_modules():
        quant, nested = _quantization(module)  # every bitsandbytes layer, wrapped by LoRA or not
        if quant is not None:
            quants.add(quant)
            quantized += 1
            double = double or nested
        if not isinstance(module, lora_layer):
            continue
        for adapter in getattr(module, "active_adapters", None) or ["default"]:
            if adapter in module.r:
                ranks.add(int(module.r[adapter]))
                drop = module.lora_dropout[adapter] if adapter in module.lora_dropout else None  # noqa: SIM401 (a ModuleDict has no get)
                dropouts.add(float(getattr(drop, "p", 0.0)))
        targets.append(_module_name(name))
    if not targets:
        return None
    base = model
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        base = get_base()
    quant_name = None if not quants else next(iter(quants)) if len(quants) == 1 else "mixed"
    return {
        "type": "lora",
        "base_model": type(base).__name__,
        "ranks": sorted(ranks),
        "dropouts": sorted(dropouts),
        "targets": targets,
        "quantize": quant_name,
        "double_quant": double,
        "quantized": quantized,
        "unquantized_parameters": sum(_unquantized_numel(p) for p in model.parameters()),
    }
