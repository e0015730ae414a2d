"""`memprof run script.py [args...]`: profile an unmodified training script.

The script runs as `__main__` inside one profiling session; process-wide module and optimizer hooks
find every root module and torch.optim.Optimizer it creates, so it needs no changes.
"""

from __future__ import annotations

import os
import sys
import traceback

import click


class _ScriptExit(click.ClickException):
    """Ends `memprof run` with the script's exit code (its traceback is already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the script exited with code {code}")
        self.exit_code = code  # type: ignore[misc]  # click declares a ClassVar; this one carries the script's

    def show(self, file: object = None) -> None:
        pass


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Save the profile (JSON) here.")
@click.option(
    "--mode",
    type=click.Choice(["attribution", "stats"]),
    default="attribution",
    show_default=True,
    help="attribution: every tensor by category (slower); stats: allocator counters only.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Device whose memory to report: auto (cuda if available, else cpu), cpu, cuda, cuda:N.",
)
@click.option("--events", is_flag=True, help="Include the allocation timeline in --out.")
@click.option(
    "--memory-snapshot", is_flag=True, help="CUDA only: record the allocator history and save it beside --out."
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--compare",
    "compare",
    is_flag=True,
    help="Also print predicted vs measured (the estimate of what the profiler observed).",
)
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
def run(
    out: str | None,
    mode: str,
    device: str,
    events: bool,
    memory_snapshot: bool,
    fmt: str,
    compare: bool,
    script: str,
    script_args: tuple[str, ...],
) -> None:
    """Run SCRIPT under the profiler and print the memory breakdown by category and phase."""
    import json
    import runpy

    import torch

    from memprof.profiler import track

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    session = track(mode=mode, device=device, events=events or bool(out), memory_snapshot=memory_snapshot)
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    failed: BaseException | None = None
    exit_code = 0
    try:
        with session:
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:  # a script's sys.exit(0) is a normal end
                if exc.code not in (None, 0):
                    raise
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # the script failed: still report what was measured
        failed = exc
        exit_code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    if not session.started:
        raise click.ClickException("the profiler did not start")
    if failed is not None:
        click.echo("".join(traceback.format_exception(failed)), err=True, nl=False)
    prof = session.profile
    if out:
        prof.save(out, events=events)
    table = prof.compare() if compare else None
    if fmt == "json":
        record = prof.to_dict()
        if table is not None:
            from memprof.comparison import frame_records

            record["comparison"] = frame_records(table)
        click.echo(json.dumps(record, indent=1))
    else:
        click.echo(prof.summary())
        if table is not None:
            from memprof.comparison import format_comparison

            click.echo("\n" + format_comparison(table))
        if out:
            click.echo(f"profile saved to {out}")
    if exit_code:
        raise _ScriptExit(exit_code)
