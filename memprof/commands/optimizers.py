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
    """Compare the memory of every optimizer memprof knows on MODEL (a preset, a config.json, or
    MODULE:FACTORY: a workload memprof has no analytic model of is traced once per optimizer)."""
    from memprof.factory import NotAnalytic, is_code_ref
    from memprof.predict import optimizer_rows

    try:
        rows = optimizer_rows(model, **knobs)
    except NotAnalytic:
        if not is_code_ref(model.strip()):
            raise
        _traced(model, fmt, knobs)
        return
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


def _traced(model: str, fmt: str, knobs: dict[str, Any]) -> None:
    """The rows of a traced workload (memprof.tracer.api.traced_optimizer_rows): a table of the optimizers
    that traced, then one line per optimizer that did not, with the tracer's reason."""
    from memprof.commands.estimate import (
        _adapters_untraced,
        _engine_untraced,
        _loop_untraced,
        _module_loading_untraced,
        _target_len_untraced,
    )
    from memprof.tracer import traced_optimizer_rows

    _module_loading_untraced(knobs)
    _loop_untraced(knobs)
    _adapters_untraced(knobs)
    _target_len_untraced(knobs)
    _engine_untraced(knobs)
    rows, assumptions = traced_optimizer_rows(model, **knobs)
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
    from memprof.render import optimizers_table

    traced = [r for r in rows if r["peak"] is not None or r["note"] == "traced"]
    if traced:
        click.echo(optimizers_table(traced, assumptions))
        click.echo("every row traced on fake tensors: the workload's own step with the optimizer's real implementation")
    for r in rows:
        if r["note"] != "traced":
            click.echo(f"{r['optimizer']}: {r['note']}")
