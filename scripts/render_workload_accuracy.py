"""Render README.md's "Traced vs measured: workloads people train" table from `memprof validate --workloads`.

    python scripts/render_workload_accuracy.py            # profiles/measurements/validation-workloads-cpu.json
    python scripts/render_workload_accuracy.py --record PATH --readme README.md
    python scripts/render_workload_accuracy.py --check    # exit 1 if README.md is not up to date
    python scripts/render_workload_accuracy.py --print    # the block alone, on stdout

Replaces what lies between `<!-- workload-accuracy:start -->` and `<!-- workload-accuracy:end -->`: one row
per case, the measured peak (`memprof.track`, a steady-state CPU step) beside the two predictions — the
workload traced from its factory (`memprof.trace`) and the run's own step traced from the profile
(`run.compare()`, memprof.tracer.live) — and whether their model states are exact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from memprof.estimators.errors import MemprofUserError
from memprof.profiles import data_path
from memprof.validate_workloads import DEFAULT_FILE, STATES, load_record

START, END = "<!-- workload-accuracy:start -->", "<!-- workload-accuracy:end -->"
ROOT = Path(__file__).resolve().parent.parent


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


def _cell(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    if not c.get("rows"):
        return f"not traced ({(c.get('error') or '').split(';')[0][:90]})"
    rows = c["rows"]
    peak = rows["peak.allocated"]
    exact = all(rows[f"model_states.{s}"]["diff_bytes"] == 0 for s in STATES) and rows["optimizer_state_keys"]["exact"]
    pct = peak["diff_pct"]
    return f"{_kib(peak['predicted'])} ({pct:+.2f} %), states {'exact' if exact else 'OFF'}"


def render(record: dict[str, Any]) -> str:
    env, s, tol = record["environment"], record["summary"], record["tolerance"]
    lines = [
        f"Recorded by `memprof validate --workloads` ({record['subset']} matrix) on {record['date'][:10]}: "
        f"{env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}, Python {env['python']}; "
        f"{s['cases']} cases in {record['duration_s']:.0f} s. Each example workload (examples/) at a small size of "
        "the same structure trains for real on the CPU; one steady-state step is measured with `memprof.track` "
        f"and predicted twice. Tolerance: model states {tol['model_states']}, peak allocated within "
        f"{tol['peak_allocated_pct']:g} % of the measured.",
        "",
    ]
    for p, what in (("traced", "`memprof.trace` of the factory"), ("live", "`run.compare()` (the run's own step)")):
        t = s[p]
        lines.append(
            f"- **{what}**: {t['compared']} cases compared, model states exact in {t['states_exact']}, the peak "
            f"within tolerance in {t['peak_within_tolerance']} (median abs. difference "
            f"{t['peak_abs_diff_pct_median']} %, max {t['peak_abs_diff_pct_max']} %)."
        )
    lines += [
        "",
        "| workload | optimizer | precision | measured peak | `memprof.trace` | `run.compare()` |",
        "|---|---|---|---:|---|---|",
    ]
    for c in record["cases"]:
        name = c["workload"].removesuffix(".py") + "".join(f", {k} {v}" for k, v in sorted(c["kwargs"].items()))
        measured = (c.get("measured") or {}).get("peak_allocated")
        if c["status"] == "error":
            lines.append(f"| {name} | {c['optimizer'] or 'its own'} | {c['precision']} | error: {c['error']} | | |")
            continue
        lines.append(
            f"| {name}, batch {c['batch_size']} | {c['optimizer'] or 'its own'} | {c['precision']} | "
            f"{_kib(measured)} | {_cell(c.get('traced'))} | {_cell(c.get('live'))} |"
        )
    return "\n".join(lines)


def splice(readme: str, body: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise MemprofUserError(f"README must hold one {START} ... {END} pair")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--record", default=str(data_path("measurements", DEFAULT_FILE)))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    parser.add_argument("--print", dest="show", action="store_true", help="print the block (README untouched)")
    args = parser.parse_args(argv)
    try:
        body = render(load_record(args.record))
        if args.show:
            print(f"{START}\n{body}\n{END}")
            return 0
        readme_path = Path(args.readme)
        readme = readme_path.read_text(encoding="utf-8")
        new = splice(readme, body)
    except (MemprofUserError, OSError) as exc:
        print(f"render_workload_accuracy: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != readme:
            print(
                f"render_workload_accuracy: {args.readme} is out of date; "
                "run python scripts/render_workload_accuracy.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != readme:
        readme_path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
