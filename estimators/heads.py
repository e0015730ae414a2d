"""Task heads: which head class of a family is trained, named once (`--head`).

A family module models one or more of transformers' head classes on its backbone; it declares them in
`Family.heads` (head name -> the transformers class, e.g. {"causal-lm": "GPT2LMHeadModel"}); a family
that declares none models its `task` with its `head_class`. A new family (t5: "seq2seq-lm" ->
T5ForConditionalGeneration) declares its own. This module holds the names and the rules around them:
- `HEADS`: the head names the CLI and `estimate(head=...)` accept;
- `head_from_architectures`: the head a config.json's `architectures` names (its class-name suffix,
  as transformers' auto classes map them: BertForSequenceClassification -> seq-cls);
- `family_heads` / `check_head`: the heads a family models, and the one-line error for any other.

`num_labels` follows transformers' PreTrainedConfig: `num_labels` when given, else `len(id2label)`
(what a saved config.json carries), else 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .errors import ParameterError

__all__ = [
    "HEADS",
    "TASK_ALIASES",
    "check_head",
    "family_heads",
    "head_from_architectures",
    "num_labels_of",
]

HEADS = ("causal-lm", "masked-lm", "seq-cls", "token-cls", "image-cls", "seq2seq-lm")
# task names presets and earlier releases used, and what they are now
TASK_ALIASES = {"image-classification": "image-cls"}

# transformers' head-class suffixes (models/auto/modeling_auto.py's MODEL_FOR_*_MAPPING_NAMES), longest first
_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ForSequenceClassification", "seq-cls"),
    ("ForTokenClassification", "token-cls"),
    ("ForImageClassification", "image-cls"),
    ("ForConditionalGeneration", "seq2seq-lm"),
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),  # GPT2LMHeadModel, BertLMHeadModel
    ("ForMaskedLM", "masked-lm"),
)


class _Family(Protocol):
    """What the rules read of a `families.Family` (typed structurally: the families import this module)."""

    @property
    def model_type(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def head_class(self) -> str: ...
    @property
    def heads(self) -> Mapping[str, str]: ...


def canonical(head: str) -> str:
    """A head name with the old task names mapped ("image-classification" -> "image-cls")."""
    return TASK_ALIASES.get(head, head)


def head_from_architectures(architectures: Any) -> tuple[str, str] | None:
    """(head, class name) of the first class in a config's `architectures` whose suffix names a head."""
    if not isinstance(architectures, Sequence) or isinstance(architectures, str):
        return None
    for cls in architectures:
        if not isinstance(cls, str):
            continue
        for suffix, head in _SUFFIXES:
            if cls.endswith(suffix):
                return head, cls
    return None


def family_heads(family: _Family) -> Mapping[str, str]:
    """head -> transformers class, for the heads `family` models."""
    return dict(family.heads) if family.heads else {canonical(family.task): family.head_class}


def check_head(family: _Family, head: str, param: str = "head") -> str:
    """`head` in canonical form, or a ParameterError naming the heads `family` models."""
    if not isinstance(head, str) or canonical(head) not in HEADS:
        raise ParameterError(f"invalid {{{param}}} {head!r}; valid: {', '.join(HEADS)}", param)
    head = canonical(head)
    heads = family_heads(family)
    if head not in heads:
        listed = ", ".join(f"{h} ({cls})" for h, cls in heads.items())
        raise ParameterError(
            f"{{{param}}} {head!r} is not modelled for {family.model_type}; its heads: {listed}", param
        )
    return head


def num_labels_of(config: Mapping[str, Any]) -> int:
    """The classifier width transformers builds (PreTrainedConfig.__init__: an explicit num_labels
    wins, with a warning when id2label disagrees; else len(id2label), which is what a saved
    config.json carries; else 2)."""
    value = config.get("num_labels")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        return len(id2label)
    return 2
