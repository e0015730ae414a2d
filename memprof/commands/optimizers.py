"""`memprof optimizers MODEL`: every optimizer side by side for one model, grouped by taxonomy family."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import click

from memprof.commands._options import training_knobs


@click.command()
@training_knobs
def optimizers(model: str, fmt: str, **knobs: object) -> None:
    """Compare the memory of every optimizer memprof knows on MODEL."""
    from memprof.predict import optimizer_rows

    rows = optimizer_rows(model, **knobs)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buffer.getvalue(), nl=False)
        return
    from memprof.predict import estimate
    from memprof.render import optimizers_table

    # the settings every row assumes (resolved: the sequence length the model's context gives)
    settings: dict[str, Any] = dict(knobs)
    assumptions = estimate(model, str(rows[0]["optimizer"]), **settings).record
    click.echo(optimizers_table(rows, assumptions))
