"""`memprof optimizers MODEL`: every optimizer side by side for one model, grouped by taxonomy family."""
from __future__ import annotations

import csv
import io
import json

import click

from memprof.commands._options import training_knobs


def optimizer_rows(model: str, **knobs: object) -> list[dict[str, object]]:
    """One plain row per registered optimizer, grouped by family, cheapest first within a family."""
    from memprof.estimators.estimation import estimate
    from memprof.estimators.models import load_model
    from memprof.estimators.optimizers import OPTIMIZERS, Family

    spec = load_model(model)
    family_order = {family: i for i, family in enumerate(Family)}
    rows = []
    for opt in OPTIMIZERS.values():
        result = estimate(spec, opt.name, **knobs)
        full_states = result.full_model_states["optimizer_states"]
        rows.append({
            "family": opt.family.value, "optimizer": opt.name, "implementation": opt.implementation,
            "state_bytes_per_param": full_states / result.parameters,
            "optimizer_states": result.model_states["optimizer_states"],
            "model_states": result.model_state_bytes,
            "peak": result.device_total, "fits": result.fits,
            "_order": (family_order[opt.family], full_states, opt.name)})
    rows.sort(key=lambda row: row["_order"])
    for row in rows:
        del row["_order"]
    return rows


@click.command()
@training_knobs
def optimizers(model: str, fmt: str, **knobs: object) -> None:
    """Compare the memory of every optimizer memprof knows on MODEL."""
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
    from memprof.estimators.units import format_bytes
    header = ("family", "optimizer", "state B/param", "optimizer states", "model states", "peak", "fits")
    table = [header]
    for row in rows:
        fits = {True: "yes", False: "no", None: ""}[row["fits"]]
        peak = "—" if row["peak"] is None else format_bytes(row["peak"])
        table.append((row["family"], row["optimizer"], f"{row['state_bytes_per_param']:.2f}",
                      format_bytes(row["optimizer_states"]), format_bytes(row["model_states"]), peak, fits))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    previous_family = None
    for i, r in enumerate(table):
        if i > 0 and r[0] != previous_family:
            click.echo("")
        previous_family = r[0] if i > 0 else None
        family = r[0] if i == 0 or r[0] != table[i - 1][0] else ""
        cells = [f"{family:<{widths[0]}}", f"{r[1]:<{widths[1]}}"] + [
            f"{c:>{w}}" for c, w in zip(r[2:], widths[2:])]
        click.echo("  ".join(cells).rstrip())
