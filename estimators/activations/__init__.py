"""Activation memory from what autograd actually saves, operation by operation.

Each supported family (memprof.estimators.families: gpt2; llama, mistral, qwen2; gpt_neox; opt; bert;
vit) replays the Hugging Face forward on `ops.T` handles (element count and dtype; no data, no torch)
with the kernels PyTorch picks, from the same description that lists its parameters; `saved_tensors`
lists what autograd keeps when the forward ends, each storage once, and `activation_bytes` sums it. The
Korthikanti et al. constant s·b·h·(34 + 5·a·s/h) falls out of this accounting for a GPT-2 block with
fused GELU and bool dropout masks in 16-bit on CUDA; nothing here hard-codes it. What the replay also
knows, because the real code does it:
- transformers' default `use_cache=True` builds a DynamicCache in training too: every layer's k and v
  are copied into it and the model output keeps them (off under gradient checkpointing);
- GPT-2's default activation `gelu_new` is a python formula: autograd keeps four tensors of the MLP
  width instead of one;
- on the CPU, dropout keeps its noise in the input dtype (CUDA's native_dropout keeps a bool mask);
- sdpa's CPU flash kernel runs only without dropout; with dropout the math backend keeps the scores
  (in fp32 for 16-bit inputs) like eager attention does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..autograd import Region, T, Trace
from ..dtypes import dtype_bytes
from ..errors import MemprofUserError, unknown_name
from ..families import FAMILIES, Family
from ..vocabulary import ATTENTION_IMPLEMENTATIONS, CHECKPOINTING, DEVICES

if TYPE_CHECKING:
    from ..models import ModelSpec

__all__ = [
    "ActivationSettings",
    "SavedTensor",
    "saved_tensors",
    "activation_bytes",
    "resolve_attention",
    "attention_kernel",
    "build_trace",
    "region_inputs",
    "T",
    "Trace",
]

_FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ActivationSettings:
    """What shapes the activations of one training micro-step.

    seq_len is ignored for vit (its sequence is the number of patches plus the class token)."""

    batch_size: int
    seq_len: int
    compute_dtype: str  # autocast dtype, or the parameter dtype without autocast
    param_dtype: str
    autocast: bool
    attention: str  # ATTENTION_IMPLEMENTATIONS: transformers' attn_implementation
    checkpointing: str  # CHECKPOINTING: "none" | "selective" | "full"
    training: bool = True  # dropout active when the config's dropout probabilities are > 0
    device: str = "cpu"  # DEVICES
    sharded_params: bool = False  # ZeRO-3 / FSDP full-shard: weights gathered layer by layer
    # the named GPU's (major, minor): its attention kernels are PyTorch's choice on that GPU
    # (estimators/kernels.py); None: any GPU of sm80 or newer
    compute_capability: tuple[int, int] | None = None
    target_len: int | None = None  # encoder-decoder (t5): the decoder's length; None: seq_len

    def __post_init__(self) -> None:
        for field_name in ("batch_size", "seq_len"):
            v = getattr(self, field_name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise MemprofUserError(f"{field_name} must be a positive integer, got {v!r}")
        v = self.target_len
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise MemprofUserError(f"target_len must be a positive integer, got {v!r}")
        for field_name in ("compute_dtype", "param_dtype"):
            v = getattr(self, field_name)
            if v not in _FLOAT_DTYPES:
                raise unknown_name(field_name.replace("_", " "), str(v), _FLOAT_DTYPES)
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise unknown_name("attention implementation", str(self.attention), ATTENTION_IMPLEMENTATIONS)
        if self.checkpointing not in CHECKPOINTING:
            raise unknown_name("checkpointing mode", str(self.checkpointing), CHECKPOINTING)
        if self.device not in DEVICES:
            raise unknown_name("device", str(self.device), DEVICES)


@dataclass(frozen=True)
class SavedTensor:
    """One tensor autograd holds for backward when the forward ends."""

    op: str  # the operation that saved it ("linear", "softmax", "checkpoint", ...)
    layer: int | None  # decoder/encoder layer index, None outside the layer stack
    name: str  # what it is to that op ("input", "mask", "result", ...)
    numel: int
    dtype: str
    module: str = ""  # the module path in the Hugging Face model

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)


def _family(spec: ModelSpec) -> Family[Any]:
    model_type = getattr(spec, "model_type", None)
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise unknown_name("model type for activation accounting", str(model_type), FAMILIES)
    return FAMILIES[model_type]


def resolve_attention(
    requested: str,
    device: str,
    dtype: str,
    dropout: float = 0.0,
    *,
    head_dim: int | None = None,
    has_mask: bool = False,
    compute_capability: tuple[int, int] | None = None,
) -> str:
    """The attention kernel PyTorch runs for a transformers `attn_implementation`.

    Returns "eager", "math", "flash" or "efficient". sdpa on the CPU runs the fused flash kernel
    unless dropout is active (then the math decomposition); on CUDA it prefers flash (16-bit, head
    dim <= 256, no explicit mask), then memory-efficient, then math. "flash" (flash_attention_2) needs
    CUDA and a 16-bit dtype. With a GPU's `compute_capability`, the choice is PyTorch's own for that
    GPU (estimators/kernels.py: SDPA's backend filters and priority order, flash-attn's requirements);
    SDPA's cuDNN backend is replayed as flash, whose saved tensors it shares (the output and a float32
    log-sum-exp per row).
    """
    if requested not in ATTENTION_IMPLEMENTATIONS:
        raise unknown_name("attention implementation", str(requested), ATTENTION_IMPLEMENTATIONS)
    if requested == "eager":
        return "eager"
    if device == "cuda" and compute_capability is not None:
        from ..kernels import pick_attention_kernel

        choice = pick_attention_kernel(
            compute_capability, dtype, head_dim or 64, attention=requested, has_mask=has_mask, dropout=dropout
        )
        return "flash" if choice.kernel == "cudnn" else choice.kernel
    half = dtype in ("float16", "bfloat16")
    if requested == "flash":
        if device != "cuda":
            raise MemprofUserError(
                f"attention 'flash' (flash_attention_2) needs a CUDA device, not "
                f"{device!r}; use --attention sdpa or eager"
            )
        if not half:
            raise MemprofUserError(
                f"attention 'flash' runs in float16/bfloat16 only, not {dtype}; use bf16-mixed or --attention sdpa"
            )
        return "flash"
    if device == "cpu":
        return "math" if dropout > 0 else "flash"
    if half and not has_mask and (head_dim is None or head_dim <= 256):
        return "flash"
    if head_dim is None or head_dim % 8 == 0:
        return "efficient"
    return "math"


def attention_kernel(spec: ModelSpec, settings: ActivationSettings) -> str:
    """The attention kernel PyTorch runs for this model under `settings` (see resolve_attention)."""
    _family(spec)
    dropout = spec.dims.attention_dropout if settings.training else 0.0
    return resolve_attention(
        settings.attention,
        settings.device,
        settings.compute_dtype,
        dropout,
        head_dim=spec.head_dim,
        compute_capability=settings.compute_capability,
    )


@lru_cache(maxsize=16)
def build_trace(spec: ModelSpec, settings: ActivationSettings) -> Trace:
    """Replay the family's forward under `settings` and mark checkpoint regions.

    The family reads the spec's description record (`spec.dims`), the one its parameter tensors come
    from. Cached: an estimate reads the same trace several times (saved tensors, the timeline, the
    allocator replay). Callers only read it."""
    fam = _family(spec)
    kernel = attention_kernel(spec, settings)
    tr = Trace(
        settings.batch_size,
        settings.seq_len,
        settings.param_dtype,
        settings.compute_dtype,
        settings.autocast,
        settings.device,
        settings.training,
        checkpointing=settings.checkpointing,
        sharded_params=settings.sharded_params,
        attention=settings.attention,
        adapter=getattr(spec, "adapter", None),
        target_len=settings.target_len,
    )
    fam.forward(tr, spec.dims, kernel)
    _mark_regions(tr, settings.checkpointing)
    return tr


def _mark_regions(tr: Trace, mode: str) -> None:
    for op in tr.ops:
        if mode == "full" and op.layer is not None:
            op.region = op.layer
        elif mode == "selective" and op.core and op.layer is not None:
            op.region = ("core", op.layer)


def region_inputs(tr: Trace) -> dict[Region, list[T]]:
    """The tensors a checkpointed region keeps from outside (its inputs), by region."""
    produced: dict[int, Region | None] = {}
    for op in tr.ops:
        for t in op.outputs:
            produced[id(t)] = op.region
    out: dict[Region, list[T]] = {}
    for op in tr.ops:
        if op.region is None:
            continue
        lst = out.setdefault(op.region, [])
        for t in op.inputs:
            if t.kind == "param" or produced.get(id(t), "<outside>") == op.region:
                continue
            if all(t is not u for u in lst):
                lst.append(t)
    return out


def saved_tensors(spec: ModelSpec, settings: ActivationSettings) -> list[SavedTensor]:
    """Every tensor autograd keeps at the end of forward, each storage once."""
    tr = build_trace(spec, settings)
    return _saved_from_trace(tr)


def _saved_from_trace(tr: Trace) -> list[SavedTensor]:
    seen: set[int] = set()
    out: list[SavedTensor] = []
    for region, inputs in region_inputs(tr).items():
        layer = region if isinstance(region, int) else region[1]
        for t in inputs:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(SavedTensor("checkpoint", layer, t.name, t.numel, t.dtype, "checkpoint"))
    for op in tr.ops:
        if op.region is not None:
            continue
        for name, t in op.saved:
            if t.kind == "param" or id(t) in seen or t.numel == 0:
                continue
            seen.add(id(t))
            out.append(SavedTensor(op.op, op.layer, name, t.numel, t.dtype, op.module))
    return out


def activation_bytes(spec: ModelSpec, settings: ActivationSettings) -> int:
    """Bytes autograd holds for backward at the end of forward (saved tensors, each storage once)."""
    return sum(t.nbytes for t in saved_tensors(spec, settings))
