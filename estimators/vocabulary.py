"""Categories and phases: the vocabulary shared by estimates, profiles and reports.

Predicted and measured figures line up by construction because both sides key their bytes by these
strings (see docs/architecture.md). They are `str` enums so that JSON and DataFrames carry the plain values.
"""

from __future__ import annotations

from enum import Enum


class Category(str, Enum):
    PARAMETERS = "parameters"
    GRADIENTS = "gradients"
    OPTIMIZER_STATES = "optimizer_states"
    ACTIVATIONS = "activations"
    TEMPORARY = "temporary"
    CUDA_CONTEXT = "cuda_context"  # device memory outside the caching allocator
    FRAGMENTATION = "fragmentation"  # reserved - allocated: cached and stranded blocks

    def __str__(self) -> str:
        return self.value


class Phase(str, Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER_STEP = "optimizer_step"

    def __str__(self) -> str:
        return self.value


CATEGORIES: tuple[str, ...] = tuple(c.value for c in Category)
MODEL_STATE_CATEGORIES: tuple[str, ...] = (
    Category.PARAMETERS.value,
    Category.GRADIENTS.value,
    Category.OPTIMIZER_STATES.value,
)
PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
TENSOR_CATEGORIES: tuple[str, ...] = (
    Category.PARAMETERS.value,
    Category.GRADIENTS.value,
    Category.OPTIMIZER_STATES.value,
    Category.ACTIVATIONS.value,
    Category.TEMPORARY.value,
)

# The training knobs' vocabularies, defined once for the estimator, the CLI and the activation replay.
CHECKPOINTING: tuple[str, ...] = ("none", "selective", "full")
# transformers' attn_implementation values memprof replays; "auto" (the setting) resolves to "sdpa",
# transformers' default, before the replay sees it.
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "sdpa", "flash")
ATTENTION: tuple[str, ...] = ("auto", *ATTENTION_IMPLEMENTATIONS)
DEVICES: tuple[str, ...] = ("cuda", "cpu")
