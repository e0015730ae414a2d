"""`memprof report PROFILE.json [MORE.json ...] [--estimate ESTIMATE.json] [--out FILE.png|FILE.html]`.

Draws a saved profile (bars by category at the peak, the measured timeline), beside an estimate
when one is given (`memprof estimate MODEL --format json > ESTIMATE.json`). Without --out, prints
the breakdown table. Several profiles (one per rank of a multi-process run: P.rank0.json
P.rank1.json ..., as `memprof run` under torchrun saves them) need the per-rank estimate: the report
starts with predicted vs measured for every rank, the worst marked (memprof.comparison.ranks), and
draws the worst rank. Every input is checked before anything is drawn, and the file is written
atomically, so a bad input leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from memprof.commands._inputs import load_estimate
from memprof.estimators.errors import MemprofUserError

FORMATS = {".png": "png", ".html": "html", ".htm": "html"}


def _out_format(out: str) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise MemprofUserError(f"--out {out!r}: the file must end in .png or .html (got {suffix or 'no extension'!r})")
    folder = Path(out).parent
    if not folder.is_dir():
        raise MemprofUserError(f"--out {out!r}: folder {str(folder)!r} does not exist")
    if Path(out).is_dir():
        raise MemprofUserError(f"--out {out!r} is a directory; name the file to write")
    from memprof.profiler.record import check_writable

    check_writable(out, "out")  # /proc, /sys, an unwritable folder: one line, before any figure is drawn
    return FORMATS[suffix]


def _text(profile: dict[str, Any], estimate: dict[str, Any] | None) -> str:
    """The breakdown table of the HTML page, as aligned text."""
    from memprof.reports.page import breakdown_rows

    header, rows = breakdown_rows(profile, estimate)
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 or i == 6 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in table
    )


@click.command()
@click.argument("profile_path", metavar="PROFILE.json")
@click.argument("more", nargs=-1, metavar="[MORE.json ...]")
@click.option(
    "--estimate",
    "estimate_path",
    default=None,
    metavar="ESTIMATE.json",
    help="An estimate to compare with (`memprof estimate MODEL --format json`).",
)
@click.option(
    "--out",
    default=None,
    metavar="FILE.png|FILE.html",
    help="Write the figures (PNG) or a self-contained page with figures and tables (HTML).",
)
def report(profile_path: str, more: tuple[str, ...], estimate_path: str | None, out: str | None) -> None:
    """Draw a saved profile, predicted beside measured when an estimate is given; several profiles
    (one per rank) start with every rank's predicted and measured peak, the worst rank marked and drawn."""
    fmt = _out_format(out) if out else None
    from memprof.comparison import check_same_model
    from memprof.estimators.records import read_profile
    from memprof.profiler.record import atomic_write
    from memprof.reports.data import comparison_bars, measured_timeline

    paths = (profile_path, *more)
    records = [read_profile(p) for p in paths]
    estimate = load_estimate(estimate_path) if estimate_path else None
    per_rank = None
    profile = records[0].to_dict()
    if len(records) > 1:
        if estimate is None:
            raise MemprofUserError(
                "a report of several ranks needs the per-rank estimate: --estimate E.json from "
                "`memprof estimate MODEL --gpus N --engine ... --format json`"
            )
        from memprof.comparison import as_estimate_record
        from memprof.comparison.ranks import compare_ranks

        per_rank = compare_ranks(as_estimate_record(estimate), records)
        worst = next(
            i for i, r in enumerate(records) if (r.rank if r.rank is not None else i) == per_rank["worst_rank"]
        )
        profile_path, profile = paths[worst], records[worst].to_dict()
    if estimate is not None:
        for record in records:
            check_same_model(estimate, record.to_dict())
    if fmt is None:
        if per_rank is not None:
            from memprof.comparison.ranks import format_ranks

            click.echo(format_ranks(per_rank))
            click.echo(f"\nrank {per_rank['worst_rank']} (the worst):")
        click.echo(_text(profile, estimate))
        return
    if not comparison_bars(profile, estimate)["categories"] and not measured_timeline(profile):
        raise MemprofUserError(
            f"{profile_path!r} measured no bytes by category (a stats-mode profile on the "
            "CPU): nothing to draw; profile in attribution mode"
        )
    from memprof.reports.page import report_html, report_png

    assert out is not None  # fmt is set only with --out
    payload = report_png(profile, estimate) if fmt == "png" else report_html(profile, estimate, per_rank).encode()
    try:
        atomic_write(Path(out), payload)
    except OSError as exc:
        raise MemprofUserError(f"--out {out!r}: cannot write it ({exc.strerror or exc})") from None
    click.echo(f"wrote {out}" + ("" if per_rank is None else f" (rank {per_rank['worst_rank']}, the worst, drawn)"))
