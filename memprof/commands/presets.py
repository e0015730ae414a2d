"""`memprof presets [models|gpus|optimizers|precisions]`: the names memprof knows."""

from __future__ import annotations

import json
from typing import cast

import click

KINDS = ("models", "gpus", "optimizers", "precisions")

Row = dict[str, str | int]  # one preset: column -> value


def _models() -> list[Row]:
    from memprof.estimators.models import load_model, preset_names

    rows: list[Row] = []
    for name in preset_names():
        spec = load_model(name)
        rows.append(
            {"name": name, "model_type": spec.model_type, "parameters": spec.num_parameters, "hf_id": spec.hf_id or ""}
        )
    return rows


def _gpus() -> list[Row]:
    from memprof.estimators.gpus import GPUS

    return [
        {
            "name": g.name,
            "memory": g.memory_bytes,
            "sm": "sm_{}{}".format(*g.compute_capability),
            "architecture": g.architecture,
        }
        for g in GPUS.values()
    ]


def _optimizers() -> list[Row]:
    from memprof.estimators.optimizers import OPTIMIZERS

    return [{"name": o.name, "family": o.family.value, "implementation": o.implementation} for o in OPTIMIZERS.values()]


def _precisions() -> list[Row]:
    from memprof.estimators.precision import PRECISIONS

    return [
        {"name": p.name, "aliases": ", ".join(p.aliases), "description": p.description} for p in PRECISIONS.values()
    ]


@click.command()
@click.argument("kind", type=click.Choice(KINDS), required=False)
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True)
def presets(kind: str | None, fmt: str) -> None:
    """List model, GPU, optimizer and precision presets (all kinds when KIND is omitted)."""
    from memprof.estimators.units import format_bytes

    kinds = [kind] if kind else list(KINDS)
    listing = {
        k: {"models": _models, "gpus": _gpus, "optimizers": _optimizers, "precisions": _precisions}[k]() for k in kinds
    }
    if fmt == "json":
        click.echo(json.dumps(listing, indent=2))
        return
    for k, rows in listing.items():
        click.echo(f"{k}:")
        shown = [
            {
                key: (
                    f"{value:,}"
                    if key == "parameters"
                    else format_bytes(cast(int, value))
                    if key == "memory"
                    else str(value)
                )
                for key, value in row.items()
            }
            for row in rows
        ]
        widths = {key: max(len(r[key]) for r in shown) for key in shown[0]} if shown else {}
        for r in shown:
            click.echo("  " + "  ".join(f"{r[key]:<{widths[key]}}" for key in r).rstrip())
