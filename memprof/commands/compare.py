"""`memprof compare PROFILE.json [--estimate ESTIMATE.json]`: predicted vs measured for a saved profile.

Without --estimate, the prediction is the estimate of what the profiler observed (the model's
config, optimizer, precision, batch and sequence; memprof.comparison.observed); with it, the saved
output of `memprof estimate --format json`.
"""

from __future__ import annotations

import json

import click

from memprof.commands._inputs import load_estimate


@click.command()
@click.argument("profile", type=click.Path(dir_okay=False))
@click.option(
    "--estimate",
    "estimate_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A saved `memprof estimate --format json`; default: estimate what the profile observed.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def compare(profile: str, estimate_path: str | None, fmt: str) -> None:
    """Compare a saved profile (memprof run --out, Profile.save) with its estimate."""
    from memprof.comparison import compare as compare_frames
    from memprof.comparison import compare_observed, format_comparison, frame_records
    from memprof.estimators.records import read_profile

    prof = read_profile(profile)
    table = compare_observed(prof) if estimate_path is None else compare_frames(load_estimate(estimate_path), prof)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "model": table.attrs.get("model"),
                    "rows": frame_records(table),
                    "missing": table.attrs.get("missing", []),
                },
                indent=1,
            )
        )
    else:
        click.echo(format_comparison(table))
