"""The knobs shared by `estimate`, `optimizers` and `fit` (DESIGN.md CLI contract), declared once."""
from __future__ import annotations

from typing import Any, Callable

import click

from memprof.estimators.estimation import ATTENTION, CHECKPOINTING, DEVICES
from memprof.estimators.sharding import OFFLOADS

FORMATS = ("table", "json", "csv")

_KNOBS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.argument("model"),
    click.option("--precision", default="bf16-mixed", show_default=True,
                 help="32-true|fp32, 16-mixed, bf16-mixed, 16-true, bf16-true, 16-master, bf16-master."),
    click.option("--batch-size", type=int, default=1, show_default=True, help="Micro-batch per device."),
    click.option("--seq-len", type=int, default=None,
                 help="Tokens per sample [default: the model's context, at most 2048]."),
    click.option("--checkpointing", type=click.Choice(CHECKPOINTING), default="none", show_default=True),
    click.option("--attention", type=click.Choice(ATTENTION), default="auto", show_default=True,
                 help="auto: what PyTorch picks for the device and dtype."),
    click.option("--device", type=click.Choice(DEVICES), default="cuda", show_default=True,
                 help="cpu predicts a CPU run: no allocator rounding, no CUDA context."),
    click.option("--gpu", default=None, help="A GPU preset (see `memprof presets gpus`)."),
    click.option("--gpus", type=int, default=1, show_default=True, help="Data-parallel devices."),
    click.option("--zero", type=click.IntRange(0, 3), default=0, show_default=True,
                 help="ZeRO stage (FSDP shard_grad_op = 2, full_shard = 3)."),
    click.option("--offload", type=click.Choice(OFFLOADS), default="none", show_default=True,
                 help="Move optimizer states (and with --zero 3 parameters) to CPU RAM."),
    click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True),
]


def training_knobs(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add MODEL and every training knob of the contract to a command."""
    for decorator in reversed(_KNOBS):
        func = decorator(func)
    return func
