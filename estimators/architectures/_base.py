"""Shared pieces of the architecture modules: the `Family` record and tensor-building helpers.

Each family module describes one Hugging Face `model_type`: the defaults its transformers config class
applies, which fields a config.json must carry, and the exact `named_parameters()` of the head class
training uses. Names and registration order follow transformers 5.x (checked against the installed
package by tests/test_models.py); shapes and counts are the same in 4.x.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import MemprofUserError
from ..tensors import ParamTensor

Config = Mapping[str, Any]


@dataclass(frozen=True)
class Dims:
    """The sizes the estimators need, read out of one family's config in one vocabulary."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int | None          # None for ViT (no token vocabulary)
    max_positions: int | None       # None for ViT (sequence = patches + CLS, see num_patches)
    tie_word_embeddings: bool
    activation: str                 # hidden_act / activation_function as transformers names it
    gated_mlp: bool                 # SwiGLU-style gate_proj * up_proj
    norm: str                       # "layernorm" | "rmsnorm"
    num_patches: int | None = None  # ViT only
    num_labels: int | None = None   # ViT only (classifier width)


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model_type is read and what parameters its head class owns."""

    model_type: str
    task: str                                  # "causal-lm" | "masked-lm" | "image-classification"
    head_class: str                            # the transformers class whose parameters we list
    defaults: Mapping[str, Any]                # transformers' config-class defaults
    required: tuple[str, ...]                  # structural sizes a config.json must state
    optional_ints: tuple[str, ...] = ()        # integer fields validated when present and not null
    bools: tuple[str, ...] = ()                # flags validated as JSON booleans
    attribute_map: Mapping[str, str] = field(default_factory=dict)  # alias -> canonical (HF attribute_map)
    finalize: Callable[[dict, str], None] = lambda config, where: None  # transformers' __post_init__
    tensors: Callable[[Config], list[ParamTensor]] = lambda config: []
    dims: Callable[[Config], Dims] = None  # type: ignore[assignment]


def linear(prefix: str, in_features: int, out_features: int, bias: bool = True) -> list[ParamTensor]:
    """nn.Linear: weight (out, in) then bias (out)."""
    out = [ParamTensor(f"{prefix}.weight", (out_features, in_features))]
    if bias:
        out.append(ParamTensor(f"{prefix}.bias", (out_features,)))
    return out


def conv1d(prefix: str, in_features: int, out_features: int) -> list[ParamTensor]:
    """transformers' GPT-2 Conv1D: weight stored transposed (in, out), then bias (out)."""
    return [ParamTensor(f"{prefix}.weight", (in_features, out_features)), ParamTensor(f"{prefix}.bias", (out_features,))]


def layer_norm(prefix: str, dim: int, affine: bool = True) -> list[ParamTensor]:
    """nn.LayerNorm: weight and bias, or nothing with elementwise_affine=False."""
    if not affine:
        return []
    return [ParamTensor(f"{prefix}.weight", (dim,)), ParamTensor(f"{prefix}.bias", (dim,))]


def rms_norm(prefix: str, dim: int) -> list[ParamTensor]:
    """The Llama-family RMSNorm: one weight vector."""
    return [ParamTensor(f"{prefix}.weight", (dim,))]


def embedding(prefix: str, num: int, dim: int) -> list[ParamTensor]:
    return [ParamTensor(f"{prefix}.weight", (num, dim))]


def require_divisible(config: Config, where: str, numerator: str, denominator: str) -> None:
    """transformers refuses these shapes at construction; say so before any arithmetic."""
    if config[numerator] % config[denominator] != 0:
        raise MemprofUserError(
            f"{where}: {numerator} ({config[numerator]}) must be a multiple of {denominator} ({config[denominator]})"
        )
