"""`memprof estimate MODEL`: the predicted memory of one training configuration."""

from __future__ import annotations

import json
from typing import Any

import click

from memprof.commands._options import training_knobs
from memprof.predict import estimate as run_estimate


@click.command()
@click.option(
    "--optimizer", default="adamw", show_default=True, help="An optimizer (see `memprof presets optimizers`)."
)
@training_knobs
def estimate(model: str, optimizer: str, fmt: str, **knobs: Any) -> None:
    """Predict the memory of training MODEL (a preset, a config.json, or a folder holding one)."""
    record = run_estimate(model, optimizer, **knobs).record
    if fmt == "json":
        click.echo(json.dumps(record.to_dict(), indent=2))
    elif fmt == "csv":
        from memprof.render import estimate_csv

        click.echo(estimate_csv(record), nl=False)
    else:
        from memprof.render import estimate_table

        click.echo(estimate_table(record))
