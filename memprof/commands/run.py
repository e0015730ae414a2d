"""`memprof run script.py [args...]`: profile an unmodified training script.

The script runs as `__main__` inside one profiling session; process-wide module and optimizer hooks
find every root module and torch.optim.Optimizer it creates, so it needs no changes.

Nothing measured is lost: --out is checked before the script starts; Ctrl-C (SIGINT) and SIGTERM end
the script, not memprof, so the partial profile is saved and summarised and the exit code is 130 /
143 as a shell expects; a save that fails at the end writes the profile to a file in the temp dir
and says where. The script's `sys.exit(...)` ends memprof as it would end `python script.py`.

Under `torchrun` (the RANK and WORLD_SIZE variables of a multi-process launch), every process
profiles its own rank and saves side by side: `--out out.json` becomes out.rank0.json,
out.rank1.json, ... (`per_rank_path`), each labelled with its rank and world size; on CUDA the
device is the rank's own (LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from types import FrameType

import click

from memprof.estimators.errors import MemprofError

USAGE_ERROR = 2  # memprof's own failure (memprof.cli.USAGE_ERROR)


class _ScriptExit(click.ClickException):
    """Ends `memprof run` with the script's exit code (its traceback is already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the script exited with code {code}")
        self.exit_code = code  # type: ignore[misc]  # click declares a ClassVar; this one carries the script's

    def show(self, file: object = None) -> None:
        pass


class Terminated(BaseException):  # named like KeyboardInterrupt, after the signal
    """SIGTERM arrived while the script ran (raised in the main thread by the handler below)."""


SIGINT_EXIT, SIGTERM_EXIT = 128 + signal.SIGINT, 128 + signal.SIGTERM


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the script runs, SIGTERM raises `Terminated` instead of killing the process, so the
    profile is still saved (SIGINT already raises KeyboardInterrupt)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"received signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_status(exc: SystemExit) -> int:
    """What `python script.py` exits with for this SystemExit (printing its message as Python does)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    click.echo(str(exc.code), err=True)
    return 1


def launched_rank() -> tuple[int, int] | None:
    """(rank, world size) when torchrun (or another launcher setting RANK / WORLD_SIZE) started
    more than one process, else None."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 else None


def per_rank_path(out: str, rank: int) -> str:
    """out.json -> out.rank3.json (a path without .json gets .rank3.json appended)."""
    base = out[: -len(".json")] if out.endswith(".json") else out
    return f"{base}.rank{rank}.json"


def _fallback_path() -> str:
    return os.path.join(tempfile.gettempdir(), f"memprof-profile-{os.getpid()}-{time.strftime('%Y%m%d-%H%M%S')}.json")


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--out", default=None, help="Save the profile (JSON) here; checked before the script starts.")
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
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: only the record goes to stdout (the script's own prints go to stderr).",
)
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

    from memprof.profiler.record import check_writable

    launched = launched_rank()
    if out is not None and launched is not None:
        out = per_rank_path(out, launched[0])
    if out is not None:
        check_writable(out, "out")  # before a long run, not after it

    import torch

    from memprof.profiler import track

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and launched is not None:
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    _check_device(device, memory_snapshot, torch.cuda.is_available())
    session = track(mode=mode, device=device, events=events or bool(out), memory_snapshot=memory_snapshot)
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    failed: BaseException | None = None
    exit_code = 0
    # with --format json stdout carries the record only: the script prints to stderr
    script_stdout = contextlib.redirect_stdout(sys.stderr) if fmt == "json" else contextlib.nullcontext()
    try:
        with _sigterm_raises(), script_stdout, session:
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:  # a script's sys.exit(0) is a normal end
                exit_code = _exit_status(exc)
    except KeyboardInterrupt:
        exit_code = SIGINT_EXIT
        click.echo("memprof: interrupted (SIGINT); saving what was measured", err=True)
    except Terminated:
        exit_code = SIGTERM_EXIT
        click.echo("memprof: terminated (SIGTERM); saving what was measured", err=True)
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
    saved_to: str | None = None
    if out:
        try:
            saved_to = str(prof.save(out, events=events))
        except (OSError, MemprofError) as exc:
            fallback = _fallback_path()
            prof.save(fallback, events=events)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            click.echo(f"memprof: error: could not save to {out} ({reason}); profile saved to {fallback}", err=True)
            exit_code = exit_code or USAGE_ERROR
    table = prof.compare() if compare else None
    if fmt == "json":
        record = prof.to_dict()
        if table is not None:
            from memprof.comparison import frame_records

            record["comparison"] = frame_records(table)
            record["comparison_predictor"] = table.attrs.get("predictor")
            record["comparison_notes"] = list(table.attrs.get("notes") or [])
        click.echo(json.dumps(record, indent=1))
    else:
        click.echo(prof.summary())
        if table is not None:
            from memprof.comparison import format_comparison

            click.echo("\n" + format_comparison(table))
        if saved_to:
            click.echo(f"profile saved to {saved_to}")
    if exit_code:
        raise _ScriptExit(exit_code)


def _check_device(device: str, memory_snapshot: bool, cuda_available: bool) -> None:
    """Refuse, before the script runs, what would otherwise be silently ignored."""
    from memprof.estimators.errors import MemprofUserError

    if device.startswith("cuda") and not cuda_available:
        raise MemprofUserError(
            f"--device {device}: this machine has no CUDA device torch can use; use --device cpu (or auto)"
        )
    if memory_snapshot and not device.startswith("cuda"):
        raise MemprofUserError(
            f"--memory-snapshot records the CUDA caching allocator's history, and the profiled device is "
            f"{device}: drop it, or profile a CUDA device"
        )
