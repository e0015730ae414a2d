"""The knobs shared by `estimate`, `optimizers` and `fit` (docs/architecture.md CLI contract), declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from memprof.estimators.adapters import QUANTIZE
from memprof.estimators.estimation import CUDA_MODULE_LOADING, OPTIMIZER_IMPLS, ZERO_GRAD
from memprof.estimators.heads import HEADS
from memprof.estimators.parallel import ENGINES, FSDP_UNITS, OFFLOADS
from memprof.estimators.parallel.pipeline import PP_SCHEDULES
from memprof.estimators.vocabulary import ATTENTION, CHECKPOINTING, DEVICES

FORMATS = ("table", "json", "csv")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# name -> option, in the order `--help` lists them
_KNOBS: dict[str, Decorator] = {
    "model": click.argument("model"),
    "precision": click.option(
        "--precision",
        default="bf16-mixed",
        show_default=True,
        help="32-true|fp32, 16-mixed, bf16-mixed, 16-true, bf16-true, 16-master, bf16-master.",
    ),
    "batch_size": click.option("--batch-size", type=int, default=1, show_default=True, help="Micro-batch per device."),
    "seq_len": click.option(
        "--seq-len", type=int, default=None, help="Tokens per sample [default: the model's context, at most 2048]."
    ),
    "target_len": click.option(
        "--target-len",
        type=int,
        default=None,
        help="Decoder tokens per sample of an encoder-decoder model (t5) [default: --seq-len].",
    ),
    "checkpointing": click.option(
        "--checkpointing", type=click.Choice(CHECKPOINTING), default="none", show_default=True
    ),
    "attention": click.option(
        "--attention",
        type=click.Choice(ATTENTION),
        default="auto",
        show_default=True,
        help="auto: transformers' default (sdpa), run with the kernel PyTorch picks.",
    ),
    "device": click.option(
        "--device",
        type=click.Choice(DEVICES),
        default="cuda",
        show_default=True,
        help="cpu predicts a CPU run: no allocator rounding, no CUDA context.",
    ),
    "gpu": click.option("--gpu", default=None, help="A GPU preset (see `memprof presets gpus`)."),
    "gpus": click.option("--gpus", type=int, default=1, show_default=True, help="Data-parallel devices."),
    "zero": click.option(
        "--zero",
        type=click.IntRange(0, 3),
        default=0,
        show_default=True,
        help="Sharding stage: with --engine deepspeed (the default for 1-3) ZeRO 1, 2, 3; with --engine fsdp "
        "2 = shard-grad-op (reshard_after_forward=False), 3 = full-shard (True). 0 with --gpus > 1: DDP.",
    ),
    "engine": click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default=None,
        help="The data-parallel engine: ddp, fsdp (FSDP2 fully_shard) or deepspeed [default: ddp for --gpus > 1 "
        "--zero 0, deepspeed for --zero 1-3].",
    ),
    "fsdp_unit": click.option(
        "--fsdp-unit",
        type=click.Choice(FSDP_UNITS),
        default="block",
        show_default=True,
        help="FSDP2 wrapping: fully_shard per transformer block and on the root (torchtitan's recipe), or "
        "the whole model as one unit.",
    ),
    "gpus_per_node": click.option(
        "--gpus-per-node",
        type=int,
        default=8,
        show_default=True,
        help="GPUs per host: offloaded states need host RAM per node (cpu_offload_per_node).",
    ),
    "offload": click.option(
        "--offload",
        type=click.Choice(OFFLOADS),
        default="none",
        show_default=True,
        help="Move optimizer states to CPU RAM (DeepSpeed: and with --zero 3 parameters; FSDP2's "
        "CPUOffloadPolicy moves parameters, gradients and states: --offload optimizer).",
    ),
    "pp": click.option(
        "--pp",
        type=int,
        default=1,
        show_default=True,
        help="Pipeline-parallel stages (torch.distributed.pipelining / Megatron split); the estimate is the "
        "stage with the largest peak.",
    ),
    "pp_schedule": click.option(
        "--pp-schedule", type=click.Choice(PP_SCHEDULES), default="1f1b", show_default=True, help="With --pp."
    ),
    "microbatches": click.option(
        "--microbatches",
        type=int,
        default=1,
        show_default=True,
        help="With --pp: micro-batches per step (--batch-size is one micro-batch).",
    ),
    "tp": click.option(
        "--tp",
        type=int,
        default=1,
        show_default=True,
        help="Tensor-parallel ranks (Megatron's column/row split of a Llama-like block); per-rank memory.",
    ),
    "grad_accumulation": click.option(
        "--grad-accumulation",
        type=int,
        default=1,
        show_default=True,
        help="Micro-batches per optimizer step (gradients stay resident between them).",
    ),
    "optimizer_impl": click.option(
        "--optimizer-impl",
        type=click.Choice(OPTIMIZER_IMPLS),
        default="auto",
        show_default=True,
        help="auto: torch's default for the device (foreach on CUDA, single-tensor on CPU).",
    ),
    "alloc_conf": click.option(
        "--alloc-conf",
        default=None,
        help='PYTORCH_CUDA_ALLOC_CONF for the allocator replay, e.g. "expandable_segments:True".',
    ),
    "cuda_version": click.option(
        "--cuda-version",
        default=None,
        help="The CUDA PyTorch was built with (torch.version.cuda, e.g. 12.8): the CUDA context's figures, "
        "and an error if it has no kernels for --gpu [default: any].",
    ),
    "cuda_module_loading": click.option(
        "--cuda-module-loading",
        type=click.Choice(CUDA_MODULE_LOADING, case_sensitive=False),
        default=None,
        help="CUDA_MODULE_LOADING: eager loads every kernel at start-up (a 2-5x larger context) "
        "[default: unset, which PyTorch makes lazy; CUDA < 11.7 is always eager].",
    ),
    "keep_output": click.option(
        "--keep-output/--no-keep-output",
        default=True,
        show_default=True,
        help="The loop keeps the model output through backward (`out = model(**batch)`); --no-keep-output: "
        "only the loss (`loss = model(**batch).loss`, as the Hugging Face Trainer), so the logits and "
        "the key/value cache are freed in the forward.",
    ),
    "zero_grad": click.option(
        "--zero-grad",
        type=click.Choice(ZERO_GRAD),
        default="set-to-none",
        show_default=True,
        help="zeros: zero_grad(set_to_none=False) (torch 1.x's default), gradients stay allocated through "
        "the next forward.",
    ),
    "head": click.option(
        "--head",
        type=click.Choice(HEADS),
        default=None,
        help="The task head trained [default: the config's `architectures`, else the family's own head].",
    ),
    # LoRA / QLoRA (memprof.estimators.adapters): peft's adapters on a frozen, optionally quantized model
    "lora_rank": click.option(
        "--lora-rank", type=int, default=None, help="Train LoRA adapters of this rank (peft); the base model is frozen."
    ),
    "lora_targets": click.option(
        "--lora-targets",
        default=None,
        help="Modules LoRA wraps: names separated by commas (q_proj,v_proj) or all-linear "
        "[default: peft's default for the model type].",
    ),
    "lora_dropout": click.option("--lora-dropout", type=float, default=0.0, show_default=True, help="LoRA dropout."),
    "quantize": click.option(
        "--quantize",
        type=click.Choice(QUANTIZE),
        default=None,
        help="Base linear weights in bitsandbytes' int8 or 4-bit storage (QLoRA with --lora-rank).",
    ),
    "double_quant": click.option(
        "--double-quant/--no-double-quant",
        default=False,
        show_default=True,
        help="4-bit: quantize the absmax values too (bnb_4bit_use_double_quant).",
    ),
    "format": click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True),
}


def _apply(func: Callable[..., Any], knobs: dict[str, Decorator]) -> Callable[..., Any]:
    for decorator in reversed(list(knobs.values())):
        func = decorator(func)
    return func


def training_knobs(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add MODEL and every training knob of the contract to a command."""
    return _apply(func, _KNOBS)


def fit_knobs(func: Callable[..., Any]) -> Callable[..., Any]:
    """The knobs of `memprof fit`: a required --gpu, --seq-len that also takes "auto", no --device."""
    knobs = dict(_KNOBS)
    del knobs["device"]
    knobs["gpu"] = click.option("--gpu", required=True, help="A GPU preset (see `memprof presets gpus`).")
    knobs["seq_len"] = click.option(
        "--seq-len",
        default=None,
        help="Tokens per sample, or 'auto' for the longest that fits [default: the model's context, at most 2048].",
    )
    knobs["batch_size"] = click.option(
        "--batch-size",
        type=int,
        default=None,
        help="With --seq-len auto: the batch to fit [1]; otherwise the batch the knob table is read at "
        "[the largest that fits].",
    )
    knobs["format"] = click.option(
        "--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True
    )
    return _apply(func, knobs)
