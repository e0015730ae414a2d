"""`memprof compare PROFILE.json [--estimate ESTIMATE.json]`: predicted vs measured for a saved profile.

Without --estimate, the prediction is the estimate of what the profiler observed (the model's
config, optimizer, precision, batch and sequence; memprof.comparison.observed); with it, the saved
output of `memprof estimate --format json`.

Several profiles (one per rank of a multi-process run, as `memprof run` under torchrun saves them:
out.rank0.json out.rank1.json ...) are compared rank by rank against the per-rank estimate given
with --estimate (`memprof estimate ... --gpus N --engine ... --format json`): a row per rank and
the worst rank (memprof.comparison.ranks), then the worst rank's full comparison.
"""

from __future__ import annotations

import json

import click

from memprof.commands._inputs import load_estimate


@click.command()
@click.argument("profile", type=click.Path(dir_okay=False))
@click.argument("more", nargs=-1, type=click.Path(dir_okay=False), metavar="[PROFILE]...")
@click.option(
    "--estimate",
    "estimate_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A saved `memprof estimate --format json`; default: estimate what the profile observed.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def compare(profile: str, more: tuple[str, ...], estimate_path: str | None, fmt: str) -> None:
    """Compare saved profiles (memprof run --out, Profile.save) with their estimate; several
    profiles (one per rank) rank by rank."""
    from memprof.comparison import compare as compare_frames
    from memprof.comparison import compare_observed, format_comparison, frame_records
    from memprof.estimators.errors import MemprofUserError
    from memprof.estimators.records import read_profile

    records = [read_profile(p) for p in (profile, *more)]
    per_rank = None
    prof = records[0]
    if len(records) > 1:
        if estimate_path is None:
            raise MemprofUserError(
                "comparing ranks needs the per-rank estimate: --estimate E.json from "
                "`memprof estimate MODEL --gpus N --engine ... --format json`"
            )
        from memprof.comparison import as_estimate_record
        from memprof.comparison.ranks import compare_ranks

        per_rank = compare_ranks(as_estimate_record(load_estimate(estimate_path)), records)
        prof = next((r for r in records if r.rank == per_rank["worst_rank"]), records[0])
    table = compare_observed(prof) if estimate_path is None else compare_frames(load_estimate(estimate_path), prof)
    if fmt == "json":
        out = {
            "model": table.attrs.get("model"),
            "rows": frame_records(table),
            "missing": table.attrs.get("missing", []),
            "notes": table.attrs.get("notes", []),
        }
        if per_rank is not None:
            out["ranks"] = per_rank["ranks"]
            out["worst_rank"] = per_rank["worst_rank"]
        click.echo(json.dumps(out, indent=1))
    else:
        if per_rank is not None:
            from memprof.comparison.ranks import format_ranks

            click.echo(format_ranks(per_rank))
            click.echo(f"\nrank {per_rank['worst_rank']} (the worst):")
        click.echo(format_comparison(table))
