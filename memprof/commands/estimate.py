"""`memprof estimate MODEL`: the predicted memory of one training configuration."""

from __future__ import annotations

import json
from typing import Any

import click

from memprof.commands._options import training_knobs
from memprof.factory import is_code_ref
from memprof.predict import estimate as run_estimate


@click.command()
@click.option(
    "--optimizer", default="adamw", show_default=True, help="An optimizer (see `memprof presets optimizers`)."
)
@click.option(
    "--trace",
    is_flag=True,
    help="Run the training step on fake tensors (any model; a preset is built from its config at full size).",
)
@click.option(
    "--training-args",
    type=click.Path(),
    default=None,
    help="A saved Hugging Face TrainingArguments JSON (training_args.json): batch, accumulation, precision, "
    "checkpointing and optimizer come from it; a flag given explicitly must agree with it.",
)
@click.option(
    "--ds-config",
    type=click.Path(),
    default=None,
    help="A DeepSpeed ds_config.json: micro-batch, accumulation, bf16/fp16 (master weights), ZeRO stage and "
    "offload come from it; a flag given explicitly must agree with it.",
)
@click.option(
    "--accelerate-config",
    type=click.Path(),
    default=None,
    help="An accelerate config (default_config.yaml): processes, mixed precision and the DeepSpeed or FSDP "
    "settings come from it; a flag given explicitly must agree with it.",
)
@click.option(
    "--population",
    type=int,
    default=None,
    help="Population methods (ga, pso): members of the population [16].",
)
@training_knobs
def estimate(
    model: str,
    optimizer: str,
    trace: bool,
    training_args: str | None,
    ds_config: str | None,
    accelerate_config: str | None,
    population: int | None,
    fmt: str,
    **knobs: Any,
) -> None:
    """Predict the memory of training MODEL: a preset, a config.json (or a folder holding one), or
    MODULE:FACTORY / path/to/train.py:FACTORY returning a memprof.Workload or a Hugging Face model
    (traced on fake tensors unless it is a Hugging Face model of a supported family)."""
    if population is not None:
        knobs["population"] = population  # the optimizer's own option; others refuse it by name
    provenance: dict[str, str] = {}
    files = {"training_args": training_args, "ds_config": ds_config, "accelerate_config": accelerate_config}
    if any(files.values()):
        optimizer, provenance = _apply_config_files(files, optimizer, knobs)
    if trace or is_code_ref(model):
        _module_loading_untraced(knobs)
        _loop_untraced(knobs)
        _adapters_untraced(knobs)
        _target_len_untraced(knobs)
        _engine_untraced(knobs)
        from memprof.tracer import estimate_or_trace, trace_preset
        from memprof.tracer import trace as run_trace

        if not trace:
            record = estimate_or_trace(model, optimizer, **knobs).record
        elif is_code_ref(model):
            record = run_trace(model, optimizer, **knobs).record
        else:
            record = trace_preset(model, optimizer, **knobs).record
    else:
        record = run_estimate(model, optimizer, **knobs).record
    if fmt == "json":
        click.echo(json.dumps(record.to_dict(), indent=2))
    elif fmt == "csv":
        from memprof.render import estimate_csv

        click.echo(estimate_csv(record), nl=False)
    else:
        from memprof.render import estimate_table

        click.echo(estimate_table(record))
        if record.settings.lora_rank is not None:
            click.echo(_adapter_line(record))
        for knob, source in provenance.items():
            click.echo(f"{knob} from {source}")


def _adapter_line(record: Any) -> str:
    """What is trained: "LoRA r=16 on 64 modules (peft's default targets), dropout 0; base weights
    frozen in nf4 (bitsandbytes)"."""
    s = record.settings
    targets = "peft's default targets" if s.lora_targets == "default" else s.lora_targets
    base = "frozen"
    if s.quantize is not None:
        base += f" in {s.quantize}{' + double quant' if s.double_quant else ''} (bitsandbytes)"
    lora = f"LoRA r={s.lora_rank} on {s.lora_modules} modules ({targets}), dropout {s.lora_dropout:g}"
    return f"{lora}; base weights {base}"


def _adapters_untraced(knobs: dict[str, Any]) -> None:
    """LoRA and quantization are modelled for presets and config files; a factory's code applies
    peft and bitsandbytes itself, and the tracer runs what it builds."""
    from memprof.estimators.errors import ParameterError

    defaults = {"lora_rank": None, "lora_targets": None, "lora_dropout": 0.0, "quantize": None, "double_quant": False}
    given = [k for k, v in defaults.items() if knobs.get(k, v) != v]
    if given:
        raise ParameterError(
            f"{{{given[0]}}} models LoRA / quantization for a preset or config.json; a factory applies "
            "peft and bitsandbytes in its own code (drop it with a factory or --trace)",
            given[0],
        )
    for k in defaults:
        knobs.pop(k, None)


def _loop_untraced(knobs: dict[str, Any]) -> None:
    """The traced step runs the model's own head: --head applies to presets and config files only (the
    loop knobs --no-keep-output and --zero-grad are the tracer's too)."""
    from memprof.estimators.errors import ParameterError

    if knobs.get("head") is not None:
        raise ParameterError("{head} picks a head for a preset or config.json; a factory builds its own", "head")
    knobs.pop("head", None)
    # --no-keep-output / --zero-grad zeros: the tracer runs its step that way (memprof.tracer.run)


# the parallel knobs of the analytic estimate (estimators.parallel) and their defaults: the traced step
# runs the workload's own code on one device, so `trace()` takes none of them
_PARALLEL_DEFAULTS: dict[str, Any] = {
    "engine": None,
    "fsdp_unit": "block",
    "pp": 1,
    "pp_schedule": "1f1b",
    "microbatches": 1,
    "virtual_stages": 1,
    "pp_stage": None,
    "tp": 1,
}


def _engine_untraced(knobs: dict[str, Any]) -> None:
    """The traced step runs on one device: a parallel engine's knobs (--engine, --fsdp-unit, --pp,
    --pp-schedule, --microbatches, --tp) belong to the analytic estimate. Removed from `knobs` (the
    tracer gets only its own arguments); one set to other than its default is an error."""
    from memprof.estimators.errors import ParameterError

    knobs.pop("gpus_per_node", None)  # host RAM per node: nothing is offloaded in a traced step
    given = [k for k, default in _PARALLEL_DEFAULTS.items() if knobs.pop(k, default) != default]
    if given:
        raise ParameterError(
            f"{{{given[0]}}} shards or splits a multi-GPU run (the analytic estimate models it); the traced "
            "step runs the workload's own code on one device: drop it with --trace",
            given[0],
        )


def _target_len_untraced(knobs: dict[str, Any]) -> None:
    """An encoder-decoder's decoder length is a knob of the analytic estimate (t5); the tracer runs
    the factory's own batch."""
    if knobs.pop("target_len", None) is not None:
        from memprof.estimators.errors import ParameterError

        raise ParameterError(
            "{target_len} is a knob of the analytic estimate of t5 models, not of a traced step", "target_len"
        )


def _module_loading_untraced(knobs: dict[str, Any]) -> None:
    """The tracer's context takes --cuda-version, not yet --cuda-module-loading: refuse it there."""
    if knobs.pop("cuda_module_loading", None) is not None:
        from memprof.estimators.errors import ParameterError

        raise ParameterError(
            "{cuda_module_loading} is not applied to a traced step yet; drop it (the analytic estimate takes it)",
            "cuda_module_loading",
        )


def _apply_config_files(
    files: dict[str, str | None], optimizer: str, knobs: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """Merge the knobs the config files set (--training-args, --ds-config, --accelerate-config) into
    `knobs` (and the optimizer); returns the optimizer and, per knob, the setting it came from. Two
    files setting a knob differently, or a flag given on the command line that sets it differently
    from a file, is an error: the sources disagree and memprof will not guess which is meant."""
    from click.core import ParameterSource

    from memprof.estimators.errors import MemprofUserError
    from memprof.integrations import configs

    readers = {
        "training_args": configs.knobs_from_training_args,
        "ds_config": configs.knobs_from_ds_config,
        "accelerate_config": configs.knobs_from_accelerate_config,
    }
    ctx = click.get_current_context()
    given = {"optimizer": optimizer, **knobs}
    merged: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    for option, path in files.items():
        if path is None:
            continue
        file_knobs, file_provenance, warnings = readers[option](path)
        for knob, value in file_knobs.items():
            source = file_provenance.get(knob, path)
            if knob in merged and merged[knob] != value:
                raise MemprofUserError(
                    f"{provenance[knob]} (= {merged[knob]}) contradicts {source} (= {value}); edit one of the files"
                )
            merged[knob] = value
            provenance.setdefault(knob, source)
        for warning in warnings:
            click.echo(f"memprof: warning: {warning}", err=True)
    for knob, value in merged.items():
        explicit = knob in given and ctx.get_parameter_source(knob) is ParameterSource.COMMANDLINE
        if explicit and given[knob] != value:
            flag = "--" + knob.replace("_", "-")
            raise MemprofUserError(
                f"{flag} {given[knob]} contradicts {provenance[knob]} (= {value}); drop the flag or edit the file"
            )
        given[knob] = value
    optimizer = given.pop("optimizer")
    knobs.clear()
    knobs.update(given)
    return optimizer, {k: v for k, v in provenance.items() if k in merged}
