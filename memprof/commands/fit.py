"""`memprof fit MODEL --gpu NAME`: the largest batch (or sequence) that fits, and the knobs that help."""

from __future__ import annotations

import json
from typing import Any

import click

from memprof.commands._options import fit_knobs


@click.command()
@click.option(
    "--optimizer", default="adamw", show_default=True, help="An optimizer (see `memprof presets optimizers`)."
)
@click.option(
    "--headroom",
    default="5%",
    show_default=True,
    help="Memory to leave free: a share of the usable memory (5%) or a size (2GiB).",
)
@fit_knobs
def fit(model: str, optimizer: str, headroom: str, fmt: str, seq_len: str | None, **knobs: Any) -> None:
    """Find the largest batch size of MODEL that fits GPU, and which knobs would change that."""
    from memprof.estimators.errors import MemprofUserError, ParameterError
    from memprof.estimators.estimation import MAX_BATCH_SIZE
    from memprof.predict import fit as run_fit

    batch = knobs.get("batch_size")
    if batch is not None and not 1 <= batch <= MAX_BATCH_SIZE:  # the library reads 0 as "unset"
        raise ParameterError(
            f"{{batch_size}} must be a whole number from 1 to {MAX_BATCH_SIZE:,}, got {batch!r}", "batch_size"
        )

    length: int | str | None = seq_len  # a number of tokens, "auto" or None
    if seq_len is not None and seq_len != "auto":
        try:
            length = int(seq_len)
        except ValueError:
            raise MemprofUserError(f"--seq-len must be a whole number or 'auto', got {seq_len!r}") from None
    result = run_fit(model, optimizer=optimizer, headroom=headroom, seq_len=length, **knobs)
    if result.best is None:
        raise MemprofUserError(_nothing_fits(result))
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        from memprof.render import fit_table

        click.echo(fit_table(result.to_dict()))


def _nothing_fits(result) -> str:
    from memprof.estimators.units import format_bytes

    first = result.next_up
    what = (
        f"even with a 1-token sequence at batch {first.settings.batch_size}"
        if result.searched == "seq_len"
        else "even at batch size 1"
    )
    fitting = [r.label for r in result.rows if r.fits]
    hint = (
        ("; what fits: " + " | ".join(fitting))
        if fitting
        else ("; no single knob is enough: combine them (memprof fit --format json lists each one's savings)")
    )
    return (
        f"{first.model} does not fit {result.budget.gpu} {what}: it needs "
        f"{format_bytes(first.device_total)} of a {format_bytes(result.budget.limit)} budget{hint}"
    )
