"""One module per Hugging Face model family; `FAMILIES` maps model_type to its description."""
from __future__ import annotations

from ._base import Dims, Family
from . import bert, gpt2, gpt_neox, llama, mistral, opt, qwen2, vit

FAMILIES: dict[str, Family] = {
    m.FAMILY.model_type: m.FAMILY for m in (gpt2, llama, mistral, qwen2, gpt_neox, opt, bert, vit)
}

__all__ = ["Dims", "Family", "FAMILIES"]
