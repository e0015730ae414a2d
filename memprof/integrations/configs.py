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

`knobs_from_ds_config` (a DeepSpeed ds_config.json) and `knobs_from_accelerate_config` (an accelerate
default_config.yaml; FSDP as memprof's engine fsdp) return the same triple for the
sharding knobs (gpus, engine, zero, offload) and the precision, micro-batch and accumulation those files set.

Pure Python: neither transformers, accelerate, DeepSpeed nor torch is imported (a saved config is read
without them; YAML with pyyaml's safe_load).
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
    "knobs_from_accelerate_config",
    "knobs_from_ds_config",
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
    "; the Trainer keeps nn.Embedding weights' states in 32 bits (bitsandbytes GlobalOptimManager override): "
    "the callback predicts them so (fp32_params); from a TrainingArguments file alone they are predicted in "
    "8 bits, under-predicting the states by about 6 B per embedding parameter"
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

    _sharding_from_training_args(data, where, knobs, prov, warns, strict)
    for key, assumed in _NOT_MODELLED:
        value = data.get(key)
        if value not in (None, False, "", [], {}, 0):
            problem(f"{key}={json.dumps(value)} is not modelled; memprof assumes {assumed}")
    return knobs, prov, warns


# TrainingArguments.fsdp words (transformers' FSDPOption) -> (engine, zero): FSDP2's fully_shard with
# reshard_after_forward True (full_shard) or False (shard_grad_op), estimators/parallel/fsdp.py; no_shard
# replicates parameters, gradients and states and all-reduces gradients, which is DDP's memory; the
# hybrid words shard within a node (not modelled: sharded over all ranks, with a warning)
_TRAINER_FSDP = {
    "full_shard": ("fsdp", 3),
    "shard_grad_op": ("fsdp", 2),
    "no_shard": ("ddp", 0),
    "hybrid_shard": ("fsdp", 3),
    "hybrid_shard_zero2": ("fsdp", 2),
}
# FSDP1 (FullyShardedDataParallel's flat parameters) is modelled as FSDP2: the same shards, states and
# gathered units; FSDP1's flat-parameter padding and its unit boundaries can differ by a few bytes
FSDP1_NOTE = (
    "FSDP1 (FullyShardedDataParallel) is predicted as FSDP2's fully_shard per transformer block "
    "(memprof's engine fsdp): its flat parameters' padding is not modelled"
)


def _sharding_from_training_args(
    data: Mapping[str, Any], where: str, knobs: dict[str, Any], prov: dict[str, str], warns: list[str], strict: bool
) -> None:
    """`deepspeed` (a ds_config path or dict: read with `knobs_from_ds_config`, whose precision, ZeRO
    stage and offload are what DeepSpeed runs, so they win; its "auto" values keep the Trainer's) and
    `fsdp` ("full_shard auto_wrap", "shard_grad_op offload", ...: engine fsdp with zero 3 / 2, no_shard
    engine ddp; `offload` is FSDP2's CPUOffloadPolicy, offload optimizer; fsdp_config's version 1, the
    default, is FSDP1, predicted as FSDP2 with a note). The number of processes is not in these files:
    the knobs are per rank of `gpus` (default 1; the callbacks set it from the running Trainer)."""
    ds = data.get("deepspeed")
    if ds not in (None, "", {}, False):
        if not isinstance(ds, (str, Mapping)):
            raise MemprofUserError(f"{where}: deepspeed must be a ds_config path or a dict, got {ds!r}")
        ds_knobs, ds_prov, ds_warns = knobs_from_ds_config(ds, strict=strict)
        for knob, value in ds_knobs.items():
            knobs[knob] = value
            prov[knob] = f"{where}: deepspeed -> {ds_prov.get(knob, knob)}"
        warns.extend(ds_warns)
        return
    fsdp = data.get("fsdp")
    if fsdp in (None, "", [], False):
        return
    words = fsdp.split() if isinstance(fsdp, str) else [str(w) for w in fsdp] if isinstance(fsdp, list) else None
    modes = [_TRAINER_FSDP[w] for w in words or () if w in _TRAINER_FSDP]

    def problem(message: str) -> None:
        if strict:
            raise MemprofUserError(f"{where}: {message} (strict=False turns this into a warning)")
        warns.append(message)

    if words is None or len(modes) != 1:
        problem(
            f"fsdp={json.dumps(fsdp)} names no sharding (one of {', '.join(_TRAINER_FSDP)}); memprof assumes a "
            "single device without sharding"
        )
        return
    engine, zero = modes[0]
    source = f"{where}: fsdp={json.dumps(fsdp)}"
    if any(w.startswith("hybrid") for w in words):
        problem(
            f"fsdp={json.dumps(fsdp)} (sharded within a node, replicated across nodes) is not modelled; memprof "
            "assumes sharding over all the GPUs"
        )
    for knob, value in (("engine", engine), ("zero", zero)):
        knobs[knob], prov[knob] = value, source
    if "offload" in words:
        if engine == "ddp":
            problem(f"fsdp={json.dumps(fsdp)}: offload without sharding is not modelled; memprof assumes no offload")
        else:  # FSDP2's CPUOffloadPolicy: parameters, gradients and optimizer states on the host
            knobs["offload"], prov["offload"] = "optimizer", source
    config = data.get("fsdp_config")
    version = config.get("version", config.get("fsdp_version", 1)) if isinstance(config, Mapping) else 1
    if engine == "fsdp" and version != 2:
        warns.append(f"fsdp={json.dumps(fsdp)}: {FSDP1_NOTE}")


_PRECISIONS = {
    ("float32", None): "32-true",
    ("float32", "bfloat16"): "bf16-mixed",
    ("float32", "float16"): "16-mixed",
    ("bfloat16", None): "bf16-true",
    ("bfloat16", "bfloat16"): "bf16-true",
    ("float16", None): "16-true",
    ("float16", "float16"): "16-true",
}


# ------------------------------------------------------------------------ DeepSpeed and accelerate


def _read_mapping(path_or_dict: Any, what: str, parse: str) -> tuple[dict[str, Any], str, str | None]:
    """(the object in a JSON/YAML file or a dict as given, its name for messages, its folder)."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), what, None
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise ParameterError(
            f"{{path_or_dict}} must be a path to a {what} or a dict, got {type(path_or_dict).__name__}",
            "path_or_dict",
        )
    from memprof.estimators.files import loads_json, read_input

    path = os.fspath(path_or_dict)
    try:
        raw = read_input(path)
    except FileNotFoundError:
        raise MemprofUserError(f"{what} {path!r} does not exist") from None
    except OSError as exc:
        raise MemprofUserError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    try:
        if parse == "json":
            data = loads_json(raw)
        else:
            import yaml  # type: ignore[import-untyped,unused-ignore]

            data = yaml.safe_load(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise MemprofUserError(f"{what} {path!r} is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise MemprofUserError(f"{what} {path!r} is not JSON ({exc})") from None
    except Exception as exc:  # yaml.YAMLError and its subclasses; the message is on one line below
        first = " ".join(str(exc).split())
        raise MemprofUserError(f"{what} {path!r} is not YAML ({first})") from None
    if not isinstance(data, dict):
        raise MemprofUserError(f"{what} {path!r} holds {type(data).__name__}, not an object of settings")
    return data, os.path.basename(path), os.path.dirname(os.path.abspath(path))


class _Reader:
    """Shared bookkeeping of the config readers: knobs, provenance, warnings, typed look-ups."""

    def __init__(self, where: str, strict: bool) -> None:
        self.where, self.strict = where, strict
        self.knobs: dict[str, Any] = {}
        self.prov: dict[str, str] = {}
        self.warns: list[str] = []

    def problem(self, message: str) -> None:
        if self.strict:
            raise MemprofUserError(f"{self.where}: {message} (strict=False turns this into a warning)")
        self.warns.append(message)

    def set(self, knob: str, value: Any, setting: str, raw: Any) -> None:
        self.knobs[knob] = value
        self.prov[knob] = f"{self.where}: {setting}={json.dumps(raw)}"

    def section(self, data: Mapping[str, Any], key: str, label: str | None = None) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise MemprofUserError(
                f"{self.where}: {label or key} must be an object of settings, got {type(value).__name__}"
            )
        return dict(value)

    def whole(self, value: Any, setting: str, low: int = 1, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            span = f"{low}-{high}" if high is not None else f">= {low}"
            raise MemprofUserError(f"{self.where}: {setting} must be a whole number {span}, got {value!r}")
        return value

    def flag(self, value: Any, setting: str) -> bool | str:
        if value == "auto" or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise MemprofUserError(f'{self.where}: {setting} must be true, false or "auto", got {value!r}')

    def auto(self, setting: str, knob: str, fills_from: str) -> None:
        self.warns.append(
            f'{setting}="auto": filled by the Hugging Face integration from {fills_from}; '
            f"{knob} stays at the flag/default"
        )


# DeepSpeed zero_optimization settings that change memory, with DeepSpeed's default (what memprof
# assumes: estimators/parallel/deepspeed.py, DeepSpeedConfig) and what differs.
_DS_ZERO_SETTINGS: tuple[tuple[str, Any, str], ...] = (
    ("reduce_bucket_size", 500_000_000, "the gradient reduction bucket"),
    ("allgather_bucket_size", 500_000_000, "the parameter all-gather bucket"),
    ("contiguous_gradients", True, "gradients copied into one contiguous buffer"),
    ("overlap_comm", None, "overlapped communication at stage 3 only: overlap keeps more buckets in flight"),
    ("sub_group_size", 1_000_000_000, "the optimizer step's sub-groups"),
    ("stage3_prefetch_bucket_size", 50_000_000, "ZeRO-3 parameter prefetch"),
    ("stage3_param_persistence_threshold", 100_000, "ZeRO-3 parameters kept unpartitioned"),
    ("stage3_max_live_parameters", 1_000_000_000, "ZeRO-3 live gathered parameters"),
    ("stage3_max_reuse_distance", 1_000_000_000, "ZeRO-3 gathered parameters kept for reuse"),
    ("zero_quantized_weights", False, "unquantized ZeRO++ weights"),
    ("zero_quantized_gradients", False, "unquantized ZeRO++ gradients"),
    ("zero_hpz_partition_size", 1, "no ZeRO++ secondary partition"),
)
# the zero_optimization settings memprof's DeepSpeed engine models (DeepSpeedConfig's fields): a ds_config's
# value becomes the `deepspeed` knob; the others above are refused (strict) or warned about
_DS_MODELLED = (
    "reduce_bucket_size",
    "allgather_bucket_size",
    "contiguous_gradients",
    "overlap_comm",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
)
_DS_CHECKPOINTING = ("partition_activations", "cpu_checkpointing", "contiguous_memory_optimization")
_DS_OPTIMIZERS = {"adam": "adamw", "adamw": "adamw"}  # DeepSpeed's FusedAdam / CPUAdam: AdamW's two states


def knobs_from_ds_config(
    path_or_dict: str | os.PathLike[str] | Mapping[str, Any], *, strict: bool = True
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Estimate knobs from a DeepSpeed `ds_config.json` (or its dict): (knobs, provenance, warnings).

    train_micro_batch_size_per_gpu -> batch_size, gradient_accumulation_steps -> grad_accumulation,
    train_batch_size / (micro batch x accumulation) -> gpus, bf16 / fp16 enabled -> bf16-master /
    16-master (16-bit weights; ZeRO's optimizer keeps the fp32 master copy), neither -> 32-true,
    zero_optimization.stage -> zero, offload_optimizer / offload_param device cpu -> offload,
    optimizer.type Adam/AdamW -> adamw. "auto" values (the Hugging Face integration fills them from
    TrainingArguments) leave the knob at the flag/default, with a warning saying so. The bucket and
    ZeRO-3 settings memprof's DeepSpeed engine models (reduce_bucket_size, allgather_bucket_size,
    contiguous_gradients, overlap_comm, stage3_prefetch_bucket_size, stage3_max_live_parameters,
    stage3_param_persistence_threshold) become the `deepspeed` knob (a dict of those that differ from
    DeepSpeed's defaults). Settings that change memory but are not modelled (sub_group_size,
    stage3_max_reuse_distance, ZeRO++, NVMe offload, DeepSpeed's activation checkpointing ...) raise
    MemprofUserError naming what memprof assumes (strict) or are returned as warnings (strict=False)."""
    data, where, _ = _read_mapping(path_or_dict, "DeepSpeed config", "json")
    return _ds_knobs(data, _Reader(where, strict))


def _ds_knobs(
    data: Mapping[str, Any], r: _Reader, prefix: str = ""
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    p = prefix
    micro = data.get("train_micro_batch_size_per_gpu")
    if micro == "auto":
        r.auto(f"{p}train_micro_batch_size_per_gpu", "batch_size", "per_device_train_batch_size")
    elif micro is not None:
        r.set(
            "batch_size",
            r.whole(micro, f"{p}train_micro_batch_size_per_gpu"),
            f"{p}train_micro_batch_size_per_gpu",
            micro,
        )
    ga = data.get("gradient_accumulation_steps")
    if ga == "auto":
        r.auto(f"{p}gradient_accumulation_steps", "grad_accumulation", "gradient_accumulation_steps")
    elif ga is not None:
        r.set(
            "grad_accumulation", r.whole(ga, f"{p}gradient_accumulation_steps"), f"{p}gradient_accumulation_steps", ga
        )
    total = data.get("train_batch_size")
    if total not in (None, "auto"):
        total = r.whole(total, f"{p}train_batch_size")
        if isinstance(micro, int) and isinstance(ga, int):
            if total % (micro * ga):
                raise MemprofUserError(
                    f"{r.where}: train_batch_size={total} is not train_micro_batch_size_per_gpu={micro} x "
                    f"gradient_accumulation_steps={ga} x a number of GPUs"
                )
            r.knobs["gpus"] = total // (micro * ga)
            r.prov["gpus"] = (
                f"{r.where}: train_batch_size={total} / (train_micro_batch_size_per_gpu={micro} x "
                f"gradient_accumulation_steps={ga})"
            )

    # precision: DeepSpeed's bf16 / fp16 modes keep 16-bit weights and an fp32 master copy
    enabled: dict[str, bool | str] = {}
    for key in ("bf16", "fp16"):
        block = r.section(data, key, f"{p}{key}")
        if block:
            enabled[key] = r.flag(block.get("enabled", False), f"{p}{key}.enabled")
    if r.section(data, "amp", f"{p}amp").get("enabled"):
        r.problem("amp.enabled=true (NVIDIA apex AMP) is not modelled; memprof assumes the precision flag")
    if enabled.get("bf16") is True and enabled.get("fp16") is True:
        raise MemprofUserError(f"{r.where}: bf16.enabled and fp16.enabled are both true; DeepSpeed accepts one")
    if "auto" in enabled.values():
        r.auto(f"{p}bf16/fp16.enabled", "precision", "bf16 / fp16")
    elif enabled.get("bf16") is True:
        r.set("precision", "bf16-master", f"{p}bf16.enabled", True)
    elif enabled.get("fp16") is True:
        r.set("precision", "16-master", f"{p}fp16.enabled", True)
    else:
        r.knobs["precision"] = "32-true"
        r.prov["precision"] = f"{r.where}: neither bf16 nor fp16 enabled"
    if "grad_accum_dtype" in r.section(data, "data_types", f"{p}data_types"):
        r.problem(
            f"data_types.grad_accum_dtype={json.dumps(data['data_types']['grad_accum_dtype'])} is not modelled; "
            "memprof assumes gradients accumulate in the weights' dtype"
        )

    # ZeRO and offload
    zero = r.section(data, "zero_optimization", f"{p}zero_optimization")
    stage_raw = zero.get("stage", 0)
    stage = r.whole(stage_raw, f"{p}zero_optimization.stage", 0, 3)
    r.set("zero", stage, f"{p}zero_optimization.stage", stage_raw)
    offload = "none"
    devices = {}
    for key in ("offload_optimizer", "offload_param"):
        block = r.section(zero, key, f"{p}zero_optimization.{key}")
        device = block.get("device", "none") if block else "none"
        if not isinstance(device, str) or device.lower() not in ("none", "cpu", "nvme"):
            raise MemprofUserError(
                f"{r.where}: zero_optimization.{key}.device must be none, cpu or nvme, got {device!r}"
            )
        devices[key] = device.lower()
        if device.lower() == "nvme":
            r.problem(
                f'zero_optimization.{key}.device="nvme" (ZeRO-Infinity) is not modelled; memprof assumes cpu '
                "(the same GPU memory; host RAM differs)"
            )
    ratio = r.section(zero, "offload_optimizer", f"{p}zero_optimization.offload_optimizer").get("ratio", 1)
    if ratio != 1 and devices["offload_optimizer"] != "none":
        r.problem(
            f"zero_optimization.offload_optimizer.ratio={json.dumps(ratio)} (partial offload) is not modelled; "
            "memprof assumes all optimizer states are offloaded (ratio 1)"
        )
    if devices["offload_param"] != "none" and stage != 3:
        r.warns.append(f"zero_optimization.offload_param applies to stage 3 only; ignored at stage {stage}")
        devices["offload_param"] = "none"
    if devices["offload_param"] != "none":
        offload = "optimizer+parameters"
        if devices["offload_optimizer"] == "none":
            r.problem(
                "zero_optimization.offload_param without offload_optimizer is not modelled; "
                "memprof assumes both are offloaded"
            )
    elif devices["offload_optimizer"] != "none":
        if stage == 0:
            raise MemprofUserError(f"{r.where}: zero_optimization.offload_optimizer needs stage 1, 2 or 3")
        offload = "optimizer"
    r.knobs["offload"] = offload
    r.prov["offload"] = (
        f"{r.where}: zero_optimization.offload_optimizer.device={devices['offload_optimizer']}, "
        f"offload_param.device={devices['offload_param']}"
    )
    modelled: dict[str, Any] = {}
    for key, default, what in _DS_ZERO_SETTINGS:
        if default is None:  # overlap_comm: DeepSpeed's default depends on the stage
            default = stage == 3
        if key not in zero or zero[key] == default:
            continue
        value = zero[key]
        if key in _DS_MODELLED and value != "auto" and not (key.startswith("stage3_") and stage != 3):
            # estimators/parallel/deepspeed.py sizes these buffers from the value (DeepSpeedConfig)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise MemprofUserError(f"{r.where}: zero_optimization.{key} must be true or false, got {value!r}")
                modelled[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                    raise MemprofUserError(f"{r.where}: zero_optimization.{key} must be a whole number, got {value!r}")
                modelled[key] = int(value)
            continue
        if value == "auto":
            r.warns.append(
                f'zero_optimization.{key}="auto" (the Hugging Face integration sizes it from the model) is not '
                f"modelled; memprof assumes DeepSpeed's default {default} ({what})"
            )
        elif key.startswith("stage3_") and stage != 3:
            continue
        else:
            r.problem(
                f"zero_optimization.{key}={json.dumps(value)} is not modelled; memprof assumes DeepSpeed's "
                f"default {json.dumps(default)} ({what})"
            )
    if modelled and stage >= 1:
        r.knobs["deepspeed"] = modelled
        r.prov["deepspeed"] = f"{r.where}: zero_optimization " + ", ".join(f"{k}={v}" for k, v in modelled.items())
    ac = r.section(data, "activation_checkpointing", f"{p}activation_checkpointing")
    for key in _DS_CHECKPOINTING:
        if ac.get(key) not in (None, False):
            r.problem(
                f"activation_checkpointing.{key}={json.dumps(ac[key])} is not modelled; memprof assumes the "
                "model's own checkpointing (--checkpointing) without DeepSpeed's partitioning or offload"
            )

    # optimizer: DeepSpeed builds it when the config names one
    opt = r.section(data, "optimizer", f"{p}optimizer")
    if opt:
        kind = opt.get("type")
        if kind == "auto":
            r.auto(f"{p}optimizer.type", "optimizer", "optim")
        elif isinstance(kind, str) and kind.lower() in _DS_OPTIMIZERS:
            r.set("optimizer", _DS_OPTIMIZERS[kind.lower()], f"{p}optimizer.type", kind)
        else:
            r.problem(f"optimizer.type={json.dumps(kind)} is not modelled; memprof assumes the --optimizer flag")
    return r.knobs, r.prov, r.warns


_FSDP_STRATEGIES = {  # fsdp_sharding_strategy (names, or accelerate's older numbers) -> (engine, zero)
    "FULL_SHARD": ("fsdp", 3),
    "1": ("fsdp", 3),
    "SHARD_GRAD_OP": ("fsdp", 2),
    "2": ("fsdp", 2),
    "NO_SHARD": ("ddp", 0),
    "3": ("ddp", 0),
    "HYBRID_SHARD": ("fsdp", 3),
    "4": ("fsdp", 3),
    "HYBRID_SHARD_ZERO2": ("fsdp", 2),
    "5": ("fsdp", 2),
}
_ACCELERATE_PRECISIONS = {"no": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}
_DEEPSPEED_PRECISIONS = {"no": "32-true", "fp16": "16-master", "bf16": "bf16-master"}


def knobs_from_accelerate_config(
    path_or_dict: str | os.PathLike[str] | Mapping[str, Any], *, strict: bool = True
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Estimate knobs from an accelerate `default_config.yaml` (or its dict): (knobs, provenance, warnings).

    num_processes -> gpus; mixed_precision no / fp16 / bf16 -> 32-true / 16-mixed / bf16-mixed (with
    DeepSpeed: 32-true / 16-master / bf16-master); gradient_accumulation_steps; distributed_type NO /
    MULTI_GPU (DDP: zero 0), DEEPSPEED (deepspeed_config's zero_stage, offload_*_device and
    gradient_accumulation_steps, or the ds_config its deepspeed_config_file names, read with
    `knobs_from_ds_config`), FSDP (fsdp_sharding_strategy FULL_SHARD / SHARD_GRAD_OP -> engine fsdp with
    zero 3 / 2, NO_SHARD -> engine ddp; fsdp_version 2's fsdp_reshard_after_forward true / false -> zero
    3 / 2; fsdp_offload_params -> offload optimizer, FSDP2's CPUOffloadPolicy; fsdp_activation_checkpointing
    -> checkpointing full; fsdp_version 1, FSDP1, is predicted as FSDP2 with a note). Unmodelled
    settings raise MemprofUserError (strict) or are returned as warnings (strict=False)."""
    data, where, folder = _read_mapping(path_or_dict, "accelerate config", "yaml")
    r = _Reader(where, strict)
    kind_raw = data.get("distributed_type", "NO")
    kind = "NO" if kind_raw is False or kind_raw is None else str(kind_raw).upper()  # a bare NO reads as false
    if "num_processes" in data:
        r.set("gpus", r.whole(data["num_processes"], "num_processes"), "num_processes", data["num_processes"])
    elif kind == "NO":
        r.set("gpus", 1, "distributed_type", kind_raw)
    mp_raw = data.get("mixed_precision", "no")
    mp = "no" if mp_raw is False or mp_raw is None else str(mp_raw).lower()  # YAML 1.1 reads a bare no as false
    precisions = _DEEPSPEED_PRECISIONS if kind == "DEEPSPEED" else _ACCELERATE_PRECISIONS
    if mp in precisions:
        r.set("precision", precisions[mp], "mixed_precision", mp_raw)
    else:
        r.problem(f"mixed_precision={json.dumps(mp_raw)} is not modelled; memprof assumes the precision flag")
    if data.get("use_cpu") is True:
        r.set("device", "cpu", "use_cpu", True)
    if "gradient_accumulation_steps" in data:
        ga = data["gradient_accumulation_steps"]
        r.set("grad_accumulation", r.whole(ga, "gradient_accumulation_steps"), "gradient_accumulation_steps", ga)

    if kind in ("NO", "MULTI_GPU"):
        r.set("zero", 0, "distributed_type", kind_raw)
        r.knobs["offload"] = "none"
        r.prov["offload"] = r.prov["zero"]
    elif kind == "DEEPSPEED":
        _accelerate_deepspeed(data, r, folder)
    elif kind == "FSDP":
        _accelerate_fsdp(data, r)
    else:
        r.problem(
            f"distributed_type={json.dumps(kind_raw)} is not modelled; memprof assumes DDP over num_processes GPUs"
        )
    return r.knobs, r.prov, r.warns


def _accelerate_deepspeed(data: Mapping[str, Any], r: _Reader, folder: str | None) -> None:
    block = r.section(data, "deepspeed_config")
    file = block.get("deepspeed_config_file")
    if file not in (None, "", "none"):
        if not isinstance(file, str):
            raise MemprofUserError(f"{r.where}: deepspeed_config.deepspeed_config_file must be a path, got {file!r}")
        path = file
        if not os.path.isabs(path) and not os.path.exists(path) and folder is not None:
            path = os.path.join(folder, file)  # accelerate reads it from the working directory; also try beside
        data_ds, ds_where, _ = _read_mapping(path, "DeepSpeed config", "json")
        knobs, prov, warns = _ds_knobs(data_ds, _Reader(ds_where, r.strict))
        # accelerate ignores its own mixed_precision / accumulation / ZeRO settings when a file is given
        # (they fill the file's "auto" values); a GPU count from train_batch_size must match num_processes
        for knob, value in knobs.items():
            if knob == "gpus" and knob in r.knobs and r.knobs[knob] != value:
                raise MemprofUserError(
                    f"{r.prov[knob]} (= {r.knobs[knob]}) contradicts {prov[knob]} (= {value}); edit one of the files"
                )
            r.knobs[knob] = value
            r.prov[knob] = prov[knob]
        r.warns.extend(warns)
        return
    stage_raw = block.get("zero_stage", 0)
    stage = r.whole(stage_raw, "deepspeed_config.zero_stage", 0, 3)
    r.set("zero", stage, "deepspeed_config.zero_stage", stage_raw)
    ds: dict[str, Any] = {"zero_optimization": {"stage": stage}}
    for key in ("offload_optimizer", "offload_param"):
        device = block.get(f"{key}_device", "none")
        ds["zero_optimization"][key] = {"device": device}
    if "gradient_accumulation_steps" in block:
        ds["gradient_accumulation_steps"] = block["gradient_accumulation_steps"]
    sub = _Reader(r.where, r.strict)
    knobs, prov, warns = _ds_knobs(ds, sub, "deepspeed_config.")
    r.knobs["offload"] = knobs["offload"]
    devices = {k: json.dumps(block.get(f"{k}_device", "none")) for k in ("offload_optimizer", "offload_param")}
    r.prov["offload"] = (
        f"{r.where}: deepspeed_config.offload_optimizer_device={devices['offload_optimizer']}, "
        f"offload_param_device={devices['offload_param']}"
    )
    if "grad_accumulation" in knobs:
        r.knobs["grad_accumulation"] = knobs["grad_accumulation"]
        r.prov["grad_accumulation"] = prov["grad_accumulation"]
    r.warns.extend(w.replace("zero_optimization.", "deepspeed_config.") for w in warns)
    if block.get("zero3_init_flag") is False and stage == 3:
        r.warns.append(
            "deepspeed_config.zero3_init_flag=false: the full model is built on each rank before "
            "sharding; memprof predicts the training step, not loading"
        )


def _accelerate_fsdp(data: Mapping[str, Any], r: _Reader) -> None:
    block = r.section(data, "fsdp_config")
    version = block.get("fsdp_version", 1)
    if "fsdp_sharding_strategy" in block or version != 2:
        raw = block.get("fsdp_sharding_strategy", "FULL_SHARD")
        mode = _FSDP_STRATEGIES.get(str(raw).upper())
        if mode is None:
            raise MemprofUserError(
                f"{r.where}: fsdp_config.fsdp_sharding_strategy must be FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, "
                f"HYBRID_SHARD or HYBRID_SHARD_ZERO2, got {raw!r}"
            )
        r.set("engine", mode[0], "fsdp_config.fsdp_sharding_strategy", raw)
        r.set("zero", mode[1], "fsdp_config.fsdp_sharding_strategy", raw)
        if str(raw).upper().startswith("HYBRID") or str(raw) in ("4", "5"):
            r.problem(
                f"fsdp_config.fsdp_sharding_strategy={json.dumps(raw)} (sharded within a node, replicated "
                "across nodes) is not modelled; memprof assumes sharding over all num_processes GPUs"
            )
    else:
        reshard = r.flag(block.get("fsdp_reshard_after_forward", True), "fsdp_config.fsdp_reshard_after_forward")
        r.set("engine", "fsdp", "fsdp_config.fsdp_version", version)
        r.set("zero", 3 if reshard is not False else 2, "fsdp_config.fsdp_reshard_after_forward", reshard)
    offload = r.flag(block.get("fsdp_offload_params", False), "fsdp_config.fsdp_offload_params")
    if offload is True and r.knobs["engine"] != "fsdp":
        r.problem("fsdp_config.fsdp_offload_params=true without sharding is not modelled; memprof assumes no offload")
        offload = False
    # FSDP2's CPUOffloadPolicy (FSDP1's CPUOffload(offload_params=True)): parameters, gradients and
    # optimizer states on the host, memprof's `offload optimizer` with engine fsdp
    r.set("offload", "optimizer" if offload is True else "none", "fsdp_config.fsdp_offload_params", offload)
    ck = block.get("fsdp_activation_checkpointing")
    if ck is not None:
        r.set(
            "checkpointing",
            "full" if r.flag(ck, "fsdp_config.fsdp_activation_checkpointing") is True else "none",
            "fsdp_config.fsdp_activation_checkpointing",
            ck,
        )
    if version != 2 and r.knobs["engine"] == "fsdp":
        r.warns.append(FSDP1_NOTE)
