"""Model families: one module per Hugging Face modeling file, and the registry `FAMILIES`.

A family module describes its models once (see `_base`): how a config.json is read, a description
record (`Dims` subclass) read out of the normalized config, module descriptors named as in the model,
and from those the two things the estimators need, `tensors` (the exact `named_parameters()` of the
training head class) and `forward` (the activation replay on a `Trace`). Llama, Mistral and Qwen2
share `llama.py`, as transformers' modeling files do.

Adding a family (say `foo`, trained as FooForCausalLM):

1. write `foo.py` next to `gpt2.py`: `DEFAULTS` copied from transformers' FooConfig, a `FooDims(Dims)`
   record, a `_describe(config)` that fills it, module descriptors (`Linear`, `LayerNorm`, `Embedding`,
   ... from `_base`) for each module of the model, `_tensors(d)` listing their tensors in registration
   order, `_forward(tr, d, kernel)` running the same descriptors in execution order with the helpers of
   `_trace` (attention, activations, kv cache, loss heads), and `FAMILY = Family(...)`;
2. register it: add `"foo": ("foo", "FAMILY")` to `_REGISTRY` below.

tests/test_models.py then checks the tensors against transformers' own model built on the meta device,
and tests/test_activations.py the replay against what autograd saves in a tiny real model (add `foo`
to memprof/tiny_models.py for that).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from ._base import Dims, Family

__all__ = ["Dims", "Family", "FAMILIES", "SUPPORTED_MODEL_TYPES"]

# model_type -> (module, attribute) of its family; the order is the one error messages list them in.
# Modules load on first use, so an estimate of a gpt2 model imports gpt2.py alone (the CLI's start-up
# time is a product goal: benchmarks/cold_start.py).
_REGISTRY: dict[str, tuple[str, str]] = {
    "gpt2": ("gpt2", "FAMILY"),
    "llama": ("llama", "LLAMA"),
    "mistral": ("llama", "MISTRAL"),
    "qwen2": ("llama", "QWEN2"),
    "gpt_neox": ("gpt_neox", "FAMILY"),
    "opt": ("opt", "FAMILY"),
    "bert": ("bert", "FAMILY"),
    "vit": ("vit", "FAMILY"),
    "qwen3": ("qwen3", "FAMILY"),
    "phi3": ("phi3", "FAMILY"),
    "gemma2": ("gemma", "GEMMA2"),
    "gemma3_text": ("gemma", "GEMMA3"),
    "mixtral": ("mixtral", "FAMILY"),
    "qwen3_moe": ("qwen3_moe", "FAMILY"),
    "t5": ("t5", "FAMILY"),
}


class _Families(Mapping[str, Family[Any]]):
    """model_type -> Family, each family module imported when first asked for."""

    def __getitem__(self, model_type: str) -> Family[Any]:
        module, attribute = _REGISTRY[model_type]
        family: Family[Any] = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
        return family

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)


FAMILIES: Mapping[str, Family[Any]] = _Families()
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_REGISTRY)
