"""LoRA as peft 0.21.2 builds and runs it: which linear modules it wraps, what it adds, what it saves.

Read in peft's source (site-packages/peft):
- targets (tuners/tuners_utils.py, `check_target_module_exists`): a list of names matches a module
  whose full name equals a name or ends with "." + name; `target_modules=None` takes the model
  type's default from `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING` (utils/constants.py),
  and a model type missing there is an error asking for `target_modules`; "all-linear"
  (`_maybe_include_all_linear_layers`) takes every nn.Linear / Conv1D except the output layer
  (`get_output_embeddings()`);
- parameters (tuners/lora/layer.py, `LoraLayer.update_layer`): per wrapped module
  `lora_A.default.weight` (r, in_features) and `lora_B.default.weight` (out_features, r), no bias;
  `cast_adapter_dtype` (tuners/tuners_utils.py) upcasts float16/bfloat16 adapters to float32
  (`autocast_adapter_dtype=True`, the default), so adapters are float32 whatever the base dtype;
  every base parameter is frozen (`requires_grad=False`): no gradient, no optimizer state;
- forward (tuners/lora/layer.py, `Linear.forward`): `result = base_layer(x)`, then
  `x = x.to(lora_A.weight.dtype)` (a copy when x is not float32), `lora_B(lora_A(dropout(x))) *
  scaling` added to the result, and `result.to(result's dtype)`; `dropout` is nn.Identity for
  `lora_dropout=0` and nn.Dropout otherwise. `lora_alpha` only sets `scaling` (a Python float):
  it changes no tensor's size.

What autograd keeps follows from `requires_grad` (memprof.estimators.autograd): lora_A saves its
input (x itself, the float32 copy, or the dropout output; under autocast the 16-bit cast of it),
lora_B saves lora_A's (b, s, r) output, the dropout its noise; the frozen base linear saves no input
(its weight needs no gradient) and, until a LoRA branch has run, nothing upstream requires grad.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ParameterError

if TYPE_CHECKING:
    from ..autograd import T, Trace
    from ..families._base import Linear

ALL_LINEAR = "all-linear"
ADAPTER_NAME = "default"
ADAPTER_DTYPE = "float32"  # peft's cast_adapter_dtype (autocast_adapter_dtype=True)

# peft 0.21.2 utils/constants.py, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: the entries of
# the model types memprof models (a model type absent there has no default in peft either)
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn",),
    "opt": ("q_proj", "v_proj"),
    "gpt_neox": ("query_key_value",),
    "bert": ("query", "value"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    # mixtral is in peft's table, but with transformers 5 peft's MoE conversion
    # (utils/transformers_weight_conversion.py, _convert_peft_config_moe) turns target_modules=None into
    # an empty set before the default is looked up: get_peft_model then finds no target (measured)
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"),
    "t5": ("q", "v"),
}


def parse_targets(targets: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`--lora-targets` as given: None (peft's default), ("all-linear",), or module names."""
    if targets is None:
        return None
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    out = tuple(n.strip() for n in names if isinstance(n, str) and n.strip())
    if not out or len(out) != len(names):
        raise ParameterError(
            f"{{lora_targets}} must be module names separated by commas or {ALL_LINEAR!r}, got {targets!r}",
            "lora_targets",
        )
    if ALL_LINEAR in (n.lower() for n in out):
        if len(out) > 1:
            raise ParameterError(f"{{lora_targets}} {ALL_LINEAR!r} stands alone, got {targets!r}", "lora_targets")
        return (ALL_LINEAR,)
    return out


def _short_names(linears: Sequence[Linear]) -> list[str]:
    """The linear modules' last name parts, in model order, each once ("q_proj", "mlp.c_proj" ...)."""
    out: list[str] = []
    for m in linears:
        short = m.name.rsplit(".", 1)[-1]
        if short not in out:
            out.append(short)
    return out


def resolve_targets(model_type: str, linears: Sequence[Linear], targets: tuple[str, ...] | None) -> tuple[Linear, ...]:
    """The linear modules peft wraps for `targets` (None: peft's default for the model type)."""
    names = _short_names(linears)
    if targets is None:
        default = DEFAULT_TARGETS.get(model_type)
        if default is None:
            raise ParameterError(
                f"peft has no default LoRA target modules for model type {model_type!r}: name them with "
                f"{{lora_targets}} (its linear modules: {', '.join(names)}; or {ALL_LINEAR})",
                "lora_targets",
            )
        targets = default
    if targets == (ALL_LINEAR,):
        return tuple(linears)
    chosen = tuple(m for m in linears if any(m.name == t or m.name.endswith("." + t) for t in targets))
    unmatched = [t for t in targets if not any(m.name == t or m.name.endswith("." + t) for m in linears)]
    if unmatched:
        raise ParameterError(
            f"{{lora_targets}} {', '.join(unmatched)} names no linear module of this {model_type} model; "
            f"its linear modules: {', '.join(names)} (or {ALL_LINEAR})",
            "lora_targets",
        )
    return chosen


def check_rank(rank: object, targets: Sequence[Linear]) -> int:
    """A whole number from 1 to the smallest side of every wrapped layer."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ParameterError(f"{{lora_rank}} must be a whole number of at least 1, got {rank!r}", "lora_rank")
    for m in targets:
        side = min(m.in_features, m.out_features)
        if rank > side:
            raise ParameterError(
                f"{{lora_rank}} {rank} is larger than layer {m.name} ({m.in_features} -> {m.out_features}): "
                f"a rank above {side} adds parameters without adding rank",
                "lora_rank",
            )
    return rank


def check_dropout(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ParameterError(
            f"{{lora_dropout}} must be a probability from 0 up to (not including) 1, got {p!r}", "lora_dropout"
        )
    return float(p)


def lora_names(module: str) -> tuple[str, str]:
    return f"{module}.lora_A.{ADAPTER_NAME}.weight", f"{module}.lora_B.{ADAPTER_NAME}.weight"


def lora_branch(tr: Trace, x: T, m: Linear, base_out: T, rank: int, dropout: float, quantize: str | None = None) -> T:
    """peft's LoRA forward on top of the base layer's output `base_out`.

    lora.Linear (tuners/lora/layer.py): `x = x.to(lora_A.weight.dtype)`, `result + lora_B(lora_A(
    dropout(x))) * scaling`, then `.to(result's dtype)`. Over bitsandbytes layers (`quantize`,
    tuners/lora/bnb.py, Linear8bitLt / Linear4bit): x is cast (and the LoRA output cast back) only
    without autocast (`requires_conversion = not torch.is_autocast_enabled()`), and the 4-bit one
    first clones the base output (`result = result.clone()`)."""
    a_name, b_name = lora_names(m.name)
    if quantize is not None and quantize != "int8":
        base_out = tr.copy(base_out, "clone")
    convert = quantize is None or not tr.autocast
    cast = tr.to(x, ADAPTER_DTYPE) if convert else x  # _cast_input_dtype: a copy unless x is float32
    xa = tr.dropout(cast, dropout)
    a = tr.linear(xa, tr.param(a_name, rank * m.in_features, ADAPTER_DTYPE, trainable=True), rank)
    b = tr.linear(a, tr.param(b_name, m.out_features * rank, ADAPTER_DTYPE, trainable=True), m.out_features)
    scaled = tr.scale(b)  # * scaling: a Python float, nothing saved
    if quantize is None:
        out = tr.to(tr.add(base_out, scaled), base_out.dtype)
    else:
        out = tr.add(base_out, tr.to(scaled, base_out.dtype) if convert else scaled)
    # the module's input stays referenced (by the caller, and by forward()'s `x`, rebound to the
    # float32 copy) until forward returns, whatever autograd keeps
    tr.record("end_of_lora_forward", [x] if cast is x else [x, cast], [])
    return out
