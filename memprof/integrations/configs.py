"""Training configs as estimate input: a saved Hugging Face `TrainingArguments` -> estimate knobs.

    knobs, provenance, warnings = knobs_from_training_args("out/training_args.json")
    memprof.estimate("llama-3.1-8b", **knobs)

`knobs_from_training_args` reads `trainer.args.to_json_string()` / `training_args.json` (or the
dict `TrainingArguments.to_dict()` gives) and returns the keyword arguments of `memprof.estimate`
it determines, where each came from (`provenance`: knob -> "per_device_train_batch_size=8"), and what
it could not model. `memprof.integrations.transformers.MemprofCallback` uses the same function on the
live Trainer's arguments, so a run and its saved config give the same estimate.

`HF_OPTIMIZERS` maps every `optim` name of transformers' `OptimizerNames` to memprof's optimizer
registry: the registry entry and the options that make it the optimizer the Trainer builds (the
Trainer's own class, or one whose state tensors are the same to the byte; tests/test_integrations_
transformers.py checks both against `trainer.create_optimizer()`), or None with the reason.

Pure Python: neither transformers nor torch is imported (a saved config is read without them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from memprof.estimators.errors import MemprofUserError, ParameterError

__all__ = [
    "HF_OPTIMIZERS",
    "OptimMapping",
    "knobs_from_training_args",
    "map_optim",
    "read_training_args",
]


@dataclass(frozen=True)
class OptimMapping:
    """What memprof predicts for one Trainer `optim` name.

    registry: the memprof optimizer (None: not modelled; `note` says why). options: estimate options
    that make the entry the Trainer's optimizer (bitsandbytes' optim_bits, torch's fused kernels).
    trainer_class: the class the Trainer builds ("package.module.Class" prefix), for the tests.
    exact: True when the registry's implementation is that class, False when another class whose
    state tensors match it to the byte stands in for it (`note` names it)."""

    registry: str | None
    trainer_class: str
    options: Mapping[str, Any] = field(default_factory=dict)
    exact: bool = True
    note: str = ""


_BNB_PAGED = (
    "paged: bitsandbytes keeps the states in CUDA unified memory, which the driver may move to host RAM "
    "under pressure; predicted as if resident on the GPU (an upper bound)"
)
_BNB_EMBEDDING = (
    "; the Trainer keeps nn.Embedding weights' states in 32 bits (bitsandbytes GlobalOptimManager override), "
    "which memprof predicts in 8 bits: optimizer states under-predicted by about 6 B per embedding parameter"
)
_GALORE_TARGET = "GaLore on the parameters of the nn.Linear modules named by optim_target_modules"


def _none(cls: str, why: str) -> OptimMapping:
    return OptimMapping(None, cls, note=why)


# Trainer `optim` name -> memprof registry entry. Source: transformers/trainer_optimizer.py
# (_OPTIMIZER_HANDLERS, transformers 5.24); names a newer transformers adds are reported as unknown.
HF_OPTIMIZERS: dict[str, OptimMapping] = {
    "adamw_torch": OptimMapping("adamw", "torch.optim.adamw.AdamW"),
    "adamw_torch_fused": OptimMapping("adamw", "torch.optim.adamw.AdamW", {"optimizer_impl": "fused"}),
    "adamw_torch_xla": _none("torch_xla.amp.syncfree.AdamW", "XLA (TPU) devices are not modelled"),
    "adamw_torch_npu_fused": _none("torch_npu.optim.NpuFusedAdamW", "Ascend NPU devices are not modelled"),
    "adafactor": OptimMapping(
        "adafactor",
        "transformers.optimization.Adafactor",
        exact=False,
        note="transformers' Adafactor predicted as torch.optim.Adafactor (the same factored second "
        "moments, to the byte, without beta1; its step's scratch may differ)",
    ),
    "adamw_anyprecision": _none("torchdistx.optimizers.AnyPrecisionAdamW", "torchdistx's optimizer is not modelled"),
    "adamw_torch_4bit": _none("torchao.optim.AdamW4bit", "torchao's low-bit optimizers are not modelled"),
    "adamw_torch_8bit": _none("torchao.optim.AdamW8bit", "torchao's low-bit optimizers are not modelled"),
    "ademamix": _none("bitsandbytes.optim.ademamix.AdEMAMix", "AdEMAMix (three states) is not in the registry"),
    "sgd": OptimMapping("sgd", "torch.optim.sgd.SGD"),
    "adagrad": OptimMapping("adagrad", "torch.optim.adagrad.Adagrad"),
    "adamw_bnb_8bit": OptimMapping(
        "adamw8bit",
        "bitsandbytes.optim.adamw.AdamW",
        {"optim_bits": 8},
        exact=False,
        note="bitsandbytes AdamW(optim_bits=8), the same Optimizer2State as AdamW8bit" + _BNB_EMBEDDING,
    ),
    "adamw_8bit": OptimMapping(
        "adamw8bit",
        "bitsandbytes.optim.adamw.AdamW",
        {"optim_bits": 8},
        exact=False,
        note="bitsandbytes AdamW(optim_bits=8), the same Optimizer2State as AdamW8bit" + _BNB_EMBEDDING,
    ),
    "ademamix_8bit": _none("bitsandbytes.optim.ademamix.AdEMAMix", "AdEMAMix (three states) is not in the registry"),
    "lion_8bit": _none("bitsandbytes.optim.lion.Lion", "bitsandbytes' 8-bit Lion is not in the registry"),
    "lion_32bit": _none("bitsandbytes.optim.lion.Lion", "bitsandbytes' Lion is not in the registry"),
    "paged_adamw_32bit": OptimMapping(
        "adamw8bit", "bitsandbytes.optim.adamw.AdamW", {"optim_bits": 32}, exact=False, note=_BNB_PAGED
    ),
    "paged_adamw_8bit": OptimMapping(
        "adamw8bit", "bitsandbytes.optim.adamw.AdamW", {"optim_bits": 8}, exact=False, note=_BNB_PAGED + _BNB_EMBEDDING
    ),
    "paged_ademamix_32bit": _none("bitsandbytes.optim.ademamix.AdEMAMix", "AdEMAMix is not in the registry"),
    "paged_ademamix_8bit": _none("bitsandbytes.optim.ademamix.AdEMAMix", "AdEMAMix is not in the registry"),
    "paged_lion_32bit": _none("bitsandbytes.optim.lion.Lion", "bitsandbytes' Lion is not in the registry"),
    "paged_lion_8bit": _none("bitsandbytes.optim.lion.Lion", "bitsandbytes' Lion is not in the registry"),
    "rmsprop": OptimMapping("rmsprop", "torch.optim.rmsprop.RMSprop"),
    "rmsprop_bnb": _none("bitsandbytes.optim.rmsprop.RMSprop", "bitsandbytes' RMSprop is not in the registry"),
    "rmsprop_bnb_8bit": _none("bitsandbytes.optim.rmsprop.RMSprop", "bitsandbytes' RMSprop is not in the registry"),
    "rmsprop_bnb_32bit": _none("bitsandbytes.optim.rmsprop.RMSprop", "bitsandbytes' RMSprop is not in the registry"),
    "galore_adamw": OptimMapping("galore", "galore_torch.adamw.AdamW", note=_GALORE_TARGET),
    "galore_adamw_8bit": _none("galore_torch.adamw8bit.AdamW8bit", "GaLore's 8-bit AdamW is not in the registry"),
    "galore_adafactor": _none("galore_torch.adafactor.Adafactor", "GaLore's Adafactor is not in the registry"),
    "galore_adamw_layerwise": _none(
        "transformers.trainer_pt_utils.LayerWiseDummyOptimizer",
        "layer-wise optimizers step inside backward hooks and free each gradient: not modelled",
    ),
    "galore_adamw_8bit_layerwise": _none(
        "transformers.trainer_pt_utils.LayerWiseDummyOptimizer",
        "layer-wise optimizers step inside backward hooks and free each gradient: not modelled",
    ),
    "galore_adafactor_layerwise": _none(
        "transformers.trainer_pt_utils.LayerWiseDummyOptimizer",
        "layer-wise optimizers step inside backward hooks and free each gradient: not modelled",
    ),
    "lomo": _none("lomo_optim.Lomo", "LOMO fuses the update into backward (no gradients kept): not modelled"),
    "adalomo": _none("lomo_optim.AdaLomo", "AdaLomo fuses the update into backward (no gradients kept): not modelled"),
    "grokadamw": _none("grokadamw.GrokAdamW", "GrokAdamW is not in the registry"),
    "schedule_free_radam": _none(
        "schedulefree.radam_schedulefree.RAdamScheduleFree", "schedule-free RAdam is not in the registry"
    ),
    "schedule_free_adamw": OptimMapping("schedulefree-adamw", "schedulefree.adamw_schedulefree.AdamWScheduleFree"),
    "schedule_free_sgd": _none(
        "schedulefree.sgd_schedulefree.SGDScheduleFree", "schedule-free SGD is not in the registry"
    ),
    "apollo_adamw": _none("apollo_torch.APOLLOAdamW", "APOLLO is not in the registry"),
    "apollo_adamw_layerwise": _none(
        "transformers.trainer_pt_utils.LayerWiseDummyOptimizer",
        "layer-wise optimizers step inside backward hooks and free each gradient: not modelled",
    ),
    "stable_adamw": _none("optimi.StableAdamW", "optimi's StableAdamW is not in the registry"),
}


def map_optim(name: str) -> tuple[str | None, dict[str, Any], str | None]:
    """(registry entry, estimate options, message) for a Trainer `optim` name.

    The message says what is assumed (an equivalent class, paged states) or, with entry None, why
    the optimizer is not modelled; it names unknown names too."""
    key = str(getattr(name, "value", name)).strip().lower()
    entry = HF_OPTIMIZERS.get(key)
    if entry is None:
        return None, {}, f"optim={key!r} is not a Trainer optimizer memprof knows (a newer transformers?)"
    if entry.registry is None:
        return None, {}, f"optim={key!r} ({entry.trainer_class}): {entry.note}"
    return entry.registry, dict(entry.options), (f"optim={key!r}: {entry.note}" if entry.note else None)


# ------------------------------------------------------------------------------------- the file


def read_training_args(path_or_dict: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The TrainingArguments dict in a file (or a dict as given) and where it came from."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), "training arguments"
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise ParameterError(
            f"{{path_or_dict}} must be a path to a training_args.json or a dict, got {type(path_or_dict).__name__}",
            "path_or_dict",
        )
    path = os.fspath(path_or_dict)
    if os.path.isdir(path):
        path = os.path.join(path, "training_args.json")
    where = os.path.basename(path)
    if path.endswith(".bin"):
        raise MemprofUserError(
            f"{path!r} is a pickled TrainingArguments (training_args.bin); memprof reads JSON: save "
            "`trainer.args.to_json_string()` to a .json file"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise MemprofUserError(f"training arguments file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MemprofUserError(f"cannot read training arguments file {path!r}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MemprofUserError(f"{path!r} is not JSON ({exc}); expected trainer.args.to_json_string()") from None
    if not isinstance(data, dict) or "per_device_train_batch_size" not in data:
        found = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise MemprofUserError(
            f"{path!r} is not a saved TrainingArguments: no per_device_train_batch_size (found {found})"
        )
    return data, where


# (field, what memprof assumes instead): settings that change memory but are not modelled here
_NOT_MODELLED = (
    ("fsdp", "a single device without sharding"),
    ("deepspeed", "a single device without ZeRO"),
    ("torch_compile", "eager execution (compiled graphs save different activations)"),
    ("use_liger_kernel", "transformers' own kernels (Liger's fused losses save less)"),
    ("neftune_noise_alpha", "no NEFTune noise (one embedding-sized temporary more)"),
)


def _first(data: Mapping[str, Any], *names: str) -> tuple[str, Any] | None:
    for n in names:
        if data.get(n) not in (None, ""):
            return n, data[n]
    return None


def knobs_from_training_args(
    path_or_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    param_dtype: str = "float32",
    strict: bool = True,
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Estimate knobs from saved TrainingArguments: (knobs, provenance, warnings).

    knobs: keyword arguments of `memprof.estimate` (optimizer, precision, batch_size, device,
    grad_accumulation, checkpointing, seq_len when an SFT config names max_length, and optimizer
    options). provenance: knob -> the setting it came from ("training_args.json:
    per_device_train_batch_size=8"). warnings: settings not modelled, each with what memprof
    assumes instead. param_dtype: the dtype the model's weights are loaded in (a config file does
    not say; "bfloat16" with bf16=true is bf16-true).

    strict=True (the library default) raises MemprofUserError for a setting that changes the
    prediction but cannot be modelled (an optimizer memprof does not know, FSDP, DeepSpeed, ...),
    naming it and what memprof would assume; strict=False returns it in `warnings` instead (what
    the callbacks do: a memory tool never stops a training run). A file memprof cannot read raises
    MemprofUserError either way.
    """
    data, where = read_training_args(path_or_dict)
    knobs: dict[str, Any] = {}
    prov: dict[str, str] = {}
    warns: list[str] = []

    def src(*settings: str) -> str:
        return f"{where}: " + ", ".join(f"{s}={json.dumps(data.get(s))}" for s in settings)

    def problem(message: str) -> None:
        if strict:
            raise MemprofUserError(f"{where}: {message} (strict=False turns this into a warning)")
        warns.append(message)

    # batch and accumulation
    batch = data.get("per_device_train_batch_size")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MemprofUserError(f"{where}: per_device_train_batch_size must be a whole number >= 1, got {batch!r}")
    knobs["batch_size"] = batch
    prov["batch_size"] = src("per_device_train_batch_size")
    if data.get("auto_find_batch_size"):
        warns.append(
            "auto_find_batch_size=true: the Trainer halves the batch after an out-of-memory error; "
            f"predicted for the starting batch {batch}"
        )
    ga = data.get("gradient_accumulation_steps", 1)
    if isinstance(ga, bool) or not isinstance(ga, int) or ga < 1:
        raise MemprofUserError(f"{where}: gradient_accumulation_steps must be a whole number >= 1, got {ga!r}")
    knobs["grad_accumulation"] = ga
    prov["grad_accumulation"] = src("gradient_accumulation_steps")

    # precision: the autocast dtype from bf16 / fp16, the weights' dtype from the caller
    dtype = str(param_dtype).removeprefix("torch.")
    bf16, fp16 = bool(data.get("bf16")), bool(data.get("fp16"))
    if bf16 and fp16:
        raise MemprofUserError(f"{where}: bf16 and fp16 are both true; the Trainer accepts one of them")
    autocast = "bfloat16" if bf16 else "float16" if fp16 else None
    precision = _PRECISIONS.get((dtype, autocast))
    if precision is None:
        raise ParameterError(
            f"{{param_dtype}} {param_dtype!r} with bf16={bf16}, fp16={fp16} is no precision memprof models; "
            "param_dtype is float32, bfloat16 or float16",
            "param_dtype",
        )
    knobs["precision"] = precision
    prov["precision"] = src("bf16", "fp16") + f" with weights in {dtype}"
    if data.get("tf32"):
        prov["tf32"] = src("tf32") + " (TF32 matmuls change no tensor sizes)"

    # checkpointing (transformers 5: activation_checkpointing; 4.x: gradient_checkpointing)
    ck = _first(data, "activation_checkpointing", "gradient_checkpointing")
    ck_on = bool(ck and ck[1])
    knobs["checkpointing"] = "full" if ck_on else "none"
    prov["checkpointing"] = src(ck[0]) if ck else f"{where}: no checkpointing setting (none)"
    if ck_on:
        kw_field = _first(data, "activation_checkpointing_kwargs", "gradient_checkpointing_kwargs")
        kw = kw_field[1] if kw_field else None
        if isinstance(kw, str):
            try:
                kw = json.loads(kw)
            except json.JSONDecodeError:
                kw = None
        if isinstance(kw, Mapping):
            prov["checkpointing"] += f", {kw_field[0] if kw_field else ''}={json.dumps(kw)}"
            if int(kw.get("every_n_layers", 1) or 1) != 1:
                problem(
                    f"checkpointing every_n_layers={kw['every_n_layers']} is not modelled; "
                    "memprof assumes every layer is checkpointed (full)"
                )
            if kw.get("offload"):
                problem(
                    "checkpointing offload=true (saved inputs on the host) is not modelled; memprof assumes on device"
                )

    # optimizer
    optim = str(data.get("optim") or "adamw_torch")
    name, options, note = map_optim(optim)
    if name is None:
        problem(f"{note}; memprof assumes adamw (torch.optim.AdamW)")
        name, options = "adamw", {}
    elif note:
        warns.append(note)
    knobs["optimizer"] = name
    prov["optimizer"] = src("optim")
    if name == "galore":
        warns.append(
            f"optim={optim!r}: the projected parameters need the model (optim_target_modules="
            f"{json.dumps(data.get('optim_target_modules'))}); predicted with every 2-D parameter projected"
        )
    if data.get("optim_args"):
        warns.append(f"optim_args={data['optim_args']!r} are not read; predicted with the optimizer's defaults")
    if "optimizer_impl" in options:
        knobs["optimizer_impl"] = options.pop("optimizer_impl")
        prov["optimizer_impl"] = src("optim")
    knobs.update(options)

    # device
    if data.get("use_cpu") or data.get("no_cuda"):
        knobs["device"] = "cpu"
        prov["device"] = src("use_cpu")
    else:
        knobs["device"] = "cuda"
        prov["device"] = f"{where}: use_cpu=false (a GPU)"

    # sequence: SFT configs (TRL) name it; TrainingArguments do not
    seq = _first(data, "max_length", "max_seq_length")
    if seq is not None and isinstance(seq[1], int) and not isinstance(seq[1], bool) and seq[1] > 0:
        knobs["seq_len"] = seq[1]
        prov["seq_len"] = src(seq[0]) + " (the longest sequence: an upper bound with dynamic padding)"

    for key, assumed in _NOT_MODELLED:
        value = data.get(key)
        if value not in (None, False, "", [], {}, 0):
            problem(f"{key}={json.dumps(value)} is not modelled; memprof assumes {assumed}")
    return knobs, prov, warns


_PRECISIONS = {
    ("float32", None): "32-true",
    ("float32", "bfloat16"): "bf16-mixed",
    ("float32", "float16"): "16-mixed",
    ("bfloat16", None): "bf16-true",
    ("bfloat16", "bfloat16"): "bf16-true",
    ("float16", None): "16-true",
    ("float16", "float16"): "16-true",
}
