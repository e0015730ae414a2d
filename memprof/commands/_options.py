"""The knobs shared by `estimate`, `optimizers` and `fit` (docs/architecture.md CLI contract), declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from memprof.estimators.estimation import OPTIMIZER_IMPLS
from memprof.estimators.parallel import OFFLOADS
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
        help="ZeRO stage (FSDP shard_grad_op = 2, full_shard = 3).",
    ),
    "offload": click.option(
        "--offload",
        type=click.Choice(OFFLOADS),
        default="none",
        show_default=True,
        help="Move optimizer states (and with --zero 3 parameters) to CPU RAM.",
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
