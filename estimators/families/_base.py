"""Shared pieces of the family modules: the `Family` record, the `Dims` description, module descriptors.

A family module describes one Hugging Face modeling file once, for both estimators:

- how a config.json is read: the defaults its transformers config class applies, the fields it must
  carry, the integers and flags validated, aliases, and the config class's __post_init__ (`finalize`);
- `describe(config)`: the family's description record, a `Dims` subclass holding every size and flag
  that matters (read out of the normalized config once, in one vocabulary);
- module descriptors (`Linear`, `LayerNorm`, `Embedding`, ...) built from that record: each names one
  `nn.Module` of the model and knows its parameter tensors;
- `tensors(dims)`: the exact `named_parameters()` of the head class training uses, the descriptors'
  tensors in registration order;
- `forward(trace, dims, kernel)`: the activation replay (`memprof.estimators.activations`), which runs
  the same descriptors in execution order, so a parameter's name and size come from one place.

Names and registration order follow transformers 5.x (checked against the installed package by
tests/test_models.py); shapes and counts are the same in 4.x.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..errors import MemprofUserError
from ..tensors import ParamTensor

if TYPE_CHECKING:
    from ..autograd import Trace

Config = Mapping[str, Any]


@dataclass(frozen=True)
class Dims:
    """The sizes the estimators need, read out of one family's config in one vocabulary.

    Each family subclasses it with the flags its parameters and its forward depend on (biases,
    dropout probabilities, ...); `ModelSpec` exposes the common fields."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int | None  # None for ViT (no token vocabulary)
    max_positions: int | None  # None for ViT (sequence = patches + CLS, see num_patches)
    tie_word_embeddings: bool
    activation: str  # hidden_act / activation_function as transformers names it
    gated_mlp: bool  # SwiGLU-style gate_proj * up_proj
    norm: str  # "layernorm" | "rmsnorm"
    num_patches: int | None = None  # ViT only
    num_labels: int | None = None  # ViT only (classifier width)
    attention_dropout: float = 0.0  # dropout on the attention probabilities (training only)
    # a classification head (families/_heads.py; ModelSpec fills these in): "" for the family's own head
    head: str = ""  # "seq-cls" | "token-cls"
    head_family: str = ""  # the model_type, which picks the head class's variant
    pad_token_id: int | None = None
    classifier_dropout: float = 0.0
    token_classification_bias: bool = True


D = TypeVar("D", bound=Dims)


def _no_finalize(config: dict[str, Any], where: str) -> None:
    """A config class without a __post_init__ worth replaying."""


@dataclass(frozen=True)
class Family(Generic[D]):
    """How one Hugging Face model_type is read, what parameters its head class owns, how it runs forward."""

    model_type: str
    task: str  # "causal-lm" | "masked-lm" | "image-classification"
    head_class: str  # the transformers class whose parameters we list
    defaults: Mapping[str, Any]  # transformers' config-class defaults
    required: tuple[str, ...]  # structural sizes a config.json must state
    describe: Callable[[Config], D]  # normalized config -> the description record
    tensors: Callable[[D], list[ParamTensor]]  # the record -> named_parameters()
    forward: Callable[[Trace, D, str], None]  # replay one forward on the trace with an attention kernel
    optional_ints: tuple[str, ...] = ()  # integer fields validated when present and not null
    bools: tuple[str, ...] = ()  # flags validated as JSON booleans
    attribute_map: Mapping[str, str] = field(default_factory=dict)  # alias -> canonical (HF attribute_map)
    finalize: Callable[[dict[str, Any], str], None] = _no_finalize  # transformers' __post_init__
    # what transformers runs when no attn_implementation is asked for: sdpa where the model supports it
    # (PreTrainedModel._supports_sdpa), else eager (Gemma 2)
    default_attention: str = "sdpa"
    # what an estimate of this family says about how it is modelled (EstimateRecord.warnings)
    estimate_notes: tuple[str, ...] = ()
    # the task heads modelled, head name -> transformers class (estimators/heads.py); empty: `task`
    # with `head_class` only. Dims.head tells `tensors` and `forward` which one is being built.
    heads: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Module descriptors: one nn.Module at its path in the model, and the parameters it registers.


class Module(Protocol):
    def tensors(self) -> list[ParamTensor]: ...


def tensors_of(*modules: Module | ParamTensor) -> list[ParamTensor]:
    """The parameter tensors of `modules` in the order given (a bare ParamTensor stands for itself)."""
    out: list[ParamTensor] = []
    for m in modules:
        out += [m] if isinstance(m, ParamTensor) else m.tensors()
    return out


@dataclass(frozen=True)
class Linear:
    """nn.Linear(in_features, out_features) at module path `name`: weight (out, in) then bias (out)."""

    name: str
    in_features: int
    out_features: int
    has_bias: bool = True

    @property
    def weight(self) -> ParamTensor:
        return ParamTensor(f"{self.name}.weight", (self.out_features, self.in_features))

    @property
    def bias(self) -> ParamTensor | None:
        return ParamTensor(f"{self.name}.bias", (self.out_features,)) if self.has_bias else None

    def tensors(self) -> list[ParamTensor]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])


@dataclass(frozen=True)
class Conv1D(Linear):
    """transformers' GPT-2 Conv1D: a linear layer whose weight is stored transposed, (in, out)."""

    @property
    def weight(self) -> ParamTensor:
        return ParamTensor(f"{self.name}.weight", (self.in_features, self.out_features))


@dataclass(frozen=True)
class Conv2d:
    """nn.Conv2d(in_channels, out_channels, kernel_size=stride=kernel): weight (out, in, kh, kw), bias."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]

    @property
    def weight(self) -> ParamTensor:
        return ParamTensor(f"{self.name}.weight", (self.out_channels, self.in_channels, *self.kernel))

    @property
    def bias(self) -> ParamTensor:
        return ParamTensor(f"{self.name}.bias", (self.out_channels,))

    def tensors(self) -> list[ParamTensor]:
        return [self.weight, self.bias]


@dataclass(frozen=True)
class LayerNorm:
    """nn.LayerNorm(dim): weight and bias, or nothing with elementwise_affine=False."""

    name: str
    dim: int
    affine: bool = True

    @property
    def weight(self) -> ParamTensor | None:
        return ParamTensor(f"{self.name}.weight", (self.dim,)) if self.affine else None

    @property
    def bias(self) -> ParamTensor | None:
        return ParamTensor(f"{self.name}.bias", (self.dim,)) if self.affine else None

    def tensors(self) -> list[ParamTensor]:
        return [t for t in (self.weight, self.bias) if t is not None]


@dataclass(frozen=True)
class RMSNorm:
    """The Llama-family RMSNorm: one weight vector."""

    name: str
    dim: int

    @property
    def weight(self) -> ParamTensor:
        return ParamTensor(f"{self.name}.weight", (self.dim,))

    def tensors(self) -> list[ParamTensor]:
        return [self.weight]


@dataclass(frozen=True)
class Embedding:
    """nn.Embedding(num, dim): one (num, dim) weight."""

    name: str
    num: int
    dim: int

    @property
    def weight(self) -> ParamTensor:
        return ParamTensor(f"{self.name}.weight", (self.num, self.dim))

    def tensors(self) -> list[ParamTensor]:
        return [self.weight]


def require_divisible(config: Config, where: str, numerator: str, denominator: str) -> None:
    """transformers refuses these shapes at construction; say so before any arithmetic."""
    if config[numerator] % config[denominator] != 0:
        raise MemprofUserError(
            f"{where}: {numerator} ({config[numerator]}) must be a multiple of {denominator} ({config[denominator]})"
        )
