"""`memprof validate [--quick] [--out PATH] [--format table|json]`: predicted vs measured, for real.

Trains every case of the validation matrix (memprof.validate) on the CPU under the profiler,
estimates it and compares. Exit code 0 when every case passes (model states to the byte, peak
within the tolerance) or has no peak prediction yet; 1 when a case is beyond tolerance or fails to
run; 2 for bad arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from memprof.estimators.errors import MemprofUserError


class _CasesFailed(click.ClickException):
    """Exit code 1: the matrix ran and some case is beyond tolerance or did not run."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        click.echo(f"memprof: validate: {self.message}", err=True)


def _subset(quick: bool, only: tuple[str, ...]) -> str:
    """The record's subset label: "full", "quick (only llama, lora)"."""
    return ("quick" if quick else "full") + (" (only " + ", ".join(only) + ")" if only else "")


def _progress(fmt: str, header: str, line: Callable[[dict], str]) -> Callable[[dict], None] | None:
    """With the table format: print the header now and one line per finished case."""
    if fmt != "table":
        return None
    click.echo(header)
    return lambda r: click.echo(line(r))


def _save(record: dict, out: str | None) -> None:
    """Write the record where --out says (atomically: a failed save leaves no half-written file)."""
    if out is not None:
        from memprof.profiler.record import atomic_write

        atomic_write(Path(out), (json.dumps(record, indent=1) + "\n").encode())


def _line(r: dict) -> str:
    peak = r["rows"].get("peak.allocated") or {}
    pct = peak.get("error_pct")
    states = all(
        (r["rows"].get(f"model_states.{c}") or {}).get("error_bytes") == 0
        for c in ("parameters", "gradients", "optimizer_states")
    )
    peak_txt = (
        "peak not predicted"
        if peak.get("predicted") is None
        else f"peak {peak['predicted']:>10,} vs {peak['measured']:>10,} B ({pct:+.2f}%)"
    )
    tail = r["error"] or ("" if states else "model states differ")
    return f"{r['status']:8s} {r['id']:58s} {'states exact' if states else 'STATES OFF  '}  {peak_txt}  {tail}".rstrip()


@click.command()
@click.option("--quick", is_flag=True, help="A representative subset (25 cases, well under a minute on 2 cores).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the record (JSON) here, e.g. profiles/measurements/validation-cpu-full.json.",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="TEXT",
    help="Run only the cases whose id contains TEXT (repeatable), e.g. --only sophia.",
)
@click.option(
    "--published",
    is_flag=True,
    help="Instead of training: score memprof against the published GPU measurements in profiles/published/ "
    "(offline, seconds); --only then selects a source or row id.",
)
@click.option(
    "--trace",
    "traced",
    is_flag=True,
    help="Instead of training: compare the analytic estimate with the traced step (fake tensors) for every "
    "preset at full size, on cpu and cuda (about 10 minutes; --quick: gpt2-124m only).",
)
@click.option(
    "--workloads",
    is_flag=True,
    help="Instead of the Hugging Face matrix: train the example workloads (nanoGPT, the speedrun, the AlgoPerf "
    "stand-ins) at small sizes for real on the CPU and compare the tracer with them "
    "(memprof.validate_workloads; --out profiles/measurements/validation-workloads-cpu.json).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cuda: the GPU matrix (presets at full size; fused and foreach AdamW, flash and efficient SDPA, bf16 "
    "and fp16 autocast) against max_memory_allocated/reserved, a memory snapshot replayed through the "
    "simulator and NVML; --out profiles/measurements/validation-cuda-<gpu>.json (scripts/gpu_validate.sh).",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def validate(
    quick: bool,
    out: str | None,
    only: tuple[str, ...],
    published: bool,
    traced: bool,
    workloads: bool,
    device: str,
    fmt: str,
) -> None:
    """Train the validation matrix for real on the CPU and compare every case with its estimate."""
    if workloads and (published or traced or device == "cuda"):
        raise MemprofUserError("--workloads is its own matrix (CPU training); drop --published / --trace / --device")
    if device == "cuda" and (published or traced):
        raise MemprofUserError("--device cuda trains the GPU matrix; drop --published / --trace")
    if device == "cuda":
        from memprof.validate_cuda import cuda_unavailable

        why = cuda_unavailable()
        if why is not None:
            raise MemprofUserError(why)
    if out is not None:
        from memprof.profiler.record import check_writable

        check_writable(out, "out")  # before the matrix runs, not after it
    if device == "cuda":
        _validate_cuda(quick, out, only, fmt)
        return
    if published and traced:
        raise MemprofUserError("--published and --trace are two different matrices; pick one")
    if traced:
        _validate_trace(quick, out, only, fmt)
        return
    if workloads:
        _validate_workloads(quick, out, only, fmt)
        return
    if published:
        _validate_published(quick, out, only, fmt)
        return
    from memprof.validate import full_matrix, quick_matrix, run_matrix, select_cases

    cases = select_cases(quick_matrix() if quick else full_matrix(), only)
    progress = _progress(
        fmt, f"memprof validate: {len(cases)} cases ({'quick' if quick else 'full'} matrix), CPU", _line
    )

    subset = _subset(quick, only)
    record = run_matrix(cases, subset, progress)
    _save(record, out)
    s = record["summary"]
    if fmt == "json":
        click.echo(json.dumps(record, indent=1))
    else:
        click.echo(
            f"\n{s['cases']} cases in {record['duration_s']} s: {s['pass']} pass, {s['fail']} beyond "
            f"tolerance, {s['no_peak']} without a peak prediction, {s['error']} errors; model "
            f"states exact in {s['model_states_exact']}; peak within "
            f"{record['tolerance']['peak_allocated_pct']}% "
            f"in {s['peak_within_tolerance']} of {s['peak_predicted']} predicted (median |error| "
            f"{s['peak_abs_error_pct_median']}%, max {s['peak_abs_error_pct_max']}%)"
        )
        if out is not None:
            click.echo(f"record saved to {out}")
    if s["fail"] or s["error"]:
        raise _CasesFailed(f"{s['fail'] + s['error']} of {s['cases']} cases beyond tolerance or failed")


def _cuda_line(r: dict) -> str:
    if r["status"] in ("error", "not run"):
        return f"{r['status']:8s} {r['id']:64s} {r.get('error')}"
    rows = r["rows"]

    def part(key: str, label: str) -> str:
        row = rows[key]
        if row["error_pct"] is None:
            return f"{label} -"
        return f"{label} {row['predicted']:,} vs {row['measured']:,} B ({row['error_pct']:+.2f}%)"

    return f"{r['status']:8s} {r['id']:64s} {part('allocated', 'allocated')}  {part('reserved', 'reserved')}"


def _validate_cuda(quick: bool, out: str | None, only: tuple[str, ...], fmt: str) -> None:
    """The GPU matrix (memprof.validate_cuda): exit 0 when every case passes, 1 otherwise."""
    from memprof.validate_cuda import cuda_matrix, run_matrix, select_cases

    cases = select_cases(cuda_matrix(quick), only)
    progress = _progress(
        fmt, f"memprof validate --device cuda: {len(cases)} cases ({'quick' if quick else 'full'} matrix)", _cuda_line
    )

    subset = _subset(quick, only)
    record = run_matrix(cases, subset, "cuda", progress)
    _save(record, out)
    s = record["summary"]
    if fmt == "json":
        click.echo(json.dumps(record, indent=1))
    else:
        from memprof.validate_cuda import cuda_table

        click.echo("\n" + cuda_table(record))
        if out is not None:
            click.echo(f"record saved to {out}")
    if s["fail"] or s["error"]:
        raise _CasesFailed(f"{s['fail'] + s['error']} of {s['cases']} cases beyond tolerance or failed")


def _validate_published(quick: bool, out: str | None, only: tuple[str, ...], fmt: str) -> None:
    """Score the published measurements; no case is trained, so exit 0 unless the arguments are wrong."""
    if quick:
        raise MemprofUserError("--quick selects training cases; drop it with --published")
    if len(only) > 1:
        raise MemprofUserError("--published takes one --only (a source id or a row-id prefix)")
    from memprof.published import score_published

    record = score_published(only=only[0] if only else None).to_dict()
    _save(record, out)
    if fmt == "json":
        click.echo(json.dumps(record, indent=1))
        return
    from memprof.render import published_table

    click.echo(published_table(record))
    if out is not None:
        click.echo(f"record saved to {out}")


def _trace_line(r: dict) -> str:
    if r["status"] in ("not run", "error"):
        return f"{r['status']:8s} {r['id']:70s} {r['error']}"
    peak = r["rows"]["peak.allocated"]
    states = all(
        r["rows"][f"model_states.{c}"]["diff_bytes"] == 0 for c in ("parameters", "gradients", "optimizer_states")
    )
    phase = r["phase"]
    phases = phase["traced"] if phase["analytic"] == phase["traced"] else f"{phase['analytic']} vs {phase['traced']}"
    return (
        f"{r['status']:8s} {r['id']:70s} {'states exact' if states else 'STATES OFF  '}  "
        f"peak {peak['analytic']:>16,} vs {peak['traced']:>16,} B ({peak['diff_pct']:+.2f}%)  {phases}"
    )


def _validate_trace(quick: bool, out: str | None, only: tuple[str, ...], fmt: str) -> None:
    """Analytic vs traced at full size: exit 0 when every case passes, 1 when one is beyond tolerance or fails."""
    from memprof.validate_trace import full_matrix, quick_matrix, run_matrix, select_cases

    cases = select_cases(quick_matrix() if quick else full_matrix(), only)
    progress = _progress(
        fmt,
        f"memprof validate --trace: {len(cases)} cases ({'quick' if quick else 'full'} matrix), "
        "analytic vs traced at full size",
        _trace_line,
    )

    subset = _subset(quick, only)
    record = run_matrix(cases, subset, progress)
    _save(record, out)
    s = record["summary"]
    if fmt == "json":
        click.echo(json.dumps(record, indent=1))
    else:
        click.echo(
            f"\n{s['cases']} cases in {record['duration_s']} s: {s['pass']} pass, {s['fail']} beyond tolerance, "
            f"{s['not_run']} not run (the tracer refuses them), {s['error']} errors; model states exact in "
            f"{s['model_states_exact']} of {s['compared']}; peak within {record['tolerance']['peak_allocated_pct']}% "
            f"in {s['peak_within_tolerance']} (median |diff| {s['peak_abs_diff_pct_median']}%, max "
            f"{s['peak_abs_diff_pct_max']}%); phase of the peak agrees in {s['phase_agrees']}"
        )
        if out is not None:
            click.echo(f"record saved to {out}")
    if s["fail"] or s["error"]:
        raise _CasesFailed(f"{s['fail'] + s['error']} of {s['cases']} cases beyond tolerance or failed")


def _validate_workloads(quick: bool, out: str | None, only: tuple[str, ...], fmt: str) -> None:
    """`memprof validate --workloads`: the example workloads trained for real vs traced (memprof.validate_workloads)."""
    from memprof import validate_workloads as vw

    cases = vw.select_cases(vw.quick_matrix() if quick else vw.full_matrix(), only)
    progress = _progress(
        fmt, f"memprof validate --workloads: {len(cases)} cases, trained on the CPU and traced", vw.line
    )

    subset = _subset(quick, only)
    record = vw.run_matrix(cases, subset, progress)
    _save(record, out)
    s = record["summary"]
    if fmt == "json":
        click.echo(json.dumps(record, indent=1))
    else:
        for p in ("traced", "live"):
            t = s[p]
            click.echo(
                f"{p}: {t['compared']} compared, states exact in {t['states_exact']}, peak within "
                f"{record['tolerance']['peak_allocated_pct']}% in {t['peak_within_tolerance']} (median |error| "
                f"{t['peak_abs_diff_pct_median']}%, max {t['peak_abs_diff_pct_max']}%)"
            )
        if out is not None:
            click.echo(f"record saved to {out}")
    if s["fail"] or s["error"]:
        raise _CasesFailed(f"{s['fail'] + s['error']} of {s['cases']} cases beyond tolerance or failed")
