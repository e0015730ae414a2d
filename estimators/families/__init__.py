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
2. register it: import `foo` below and add `foo.FAMILY` to `FAMILIES`.

tests/test_models.py then checks the tensors against transformers' own model built on the meta device,
and tests/test_activations.py the replay against what autograd saves in a tiny real model (add `foo`
to memprof/tiny_models.py for that).
"""

from __future__ import annotations

from typing import Any

from . import bert, gpt2, gpt_neox, llama, opt, vit
from ._base import Dims, Family

__all__ = ["Dims", "Family", "FAMILIES", "SUPPORTED_MODEL_TYPES"]

# model_type -> its family; the order is the one error messages list them in
FAMILIES: dict[str, Family[Any]] = {
    f.model_type: f
    for f in (
        gpt2.FAMILY,
        llama.LLAMA,
        llama.MISTRAL,
        llama.QWEN2,
        gpt_neox.FAMILY,
        opt.FAMILY,
        bert.FAMILY,
        vit.FAMILY,
    )
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)
