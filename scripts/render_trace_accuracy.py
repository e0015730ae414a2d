"""Render README.md's "Analytic vs traced at full size" table from a recorded `memprof validate --trace` run.

    python scripts/render_trace_accuracy.py             # profiles/measurements/validation-trace-full.json
    python scripts/render_trace_accuracy.py --record PATH --readme README.md
    python scripts/render_trace_accuracy.py --check     # exit 1 if README.md is not up to date

Replaces what lies between `<!-- trace-accuracy:start -->` and `<!-- trace-accuracy:end -->`. The reason
given for a case beyond tolerance is `memprof.validate_trace.explain`'s, with the peak categories that
differ read from the record.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memprof.estimators.errors import MemprofUserError
from memprof.profiles import data_path
from memprof.validate_trace import DEFAULT_FILE, EXPLANATIONS, explain, load_record, summarize

START, END = "<!-- trace-accuracy:start -->", "<!-- trace-accuracy:end -->"
ROOT = Path(__file__).resolve().parent.parent
_STATES = ("parameters", "gradients", "optimizer_states")


def _pct(v: float | None) -> str:
    if v is None:
        return "-"
    return "< 0.01 %" if 0 < abs(v) < 0.005 else f"{v:.2f} %"


def _mib(v: int) -> str:
    return f"{v / 2**20:+,.1f} MiB" if abs(v) >= 2**20 else f"{v:+,} B"


def _setting(c: dict[str, Any]) -> str:
    parts = [c["optimizer"], c["precision"]]
    if c["attention"] != "auto":
        parts.append(f"attention {c['attention']}")
    if c["checkpointing"] != "none":
        parts.append(f"checkpointing {c['checkpointing']}")
    if c.get("seq_len") is not None:
        parts.append(f"seq {c['seq_len']}")
    return ", ".join(parts)


def _table(title: str, cases: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[str]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        groups.setdefault(key(c), []).append(c)
    lines = [
        f"| {title} | cases | pass | model states exact | peak within tolerance | phase agrees | "
        "median abs. peak diff | max abs. peak diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, group in groups.items():
        s = summarize(group)
        lines.append(
            f"| {name} | {s['cases']} | {s['pass']} | {s['model_states_exact']} | {s['peak_within_tolerance']} | "
            f"{s['phase_agrees']} | {_pct(s['peak_abs_diff_pct_median'])} | {_pct(s['peak_abs_diff_pct_max'])} |"
        )
    return lines


def _states(c: dict[str, Any]) -> str:
    off = [(k, c["rows"][f"model_states.{k}"]["diff_bytes"]) for k in _STATES]
    return ", ".join(f"{k} {_mib(v)}" for k, v in off if v) or "exact"


def _categories(c: dict[str, Any]) -> str:
    diff = sorted(c.get("peak_category_diff", {}).items(), key=lambda kv: -abs(kv[1]))
    text = ", ".join(f"{k} {_mib(v)}" for k, v in diff if k not in _STATES or abs(v) >= 2**20) or "-"
    if c["phase"]["analytic"] != c["phase"]["traced"]:
        text += f"; peak in {c['phase']['analytic']} vs {c['phase']['traced']}"
    return text


def render(record: dict[str, Any]) -> str:
    """The markdown between the markers, from a trace validation record."""
    env, s, tol = record["environment"], record["summary"], record["tolerance"]
    cases = record["cases"]
    compared = [c for c in cases if c["status"] in ("pass", "fail")]
    lines = [
        f"Recorded by `memprof validate --trace` ({record['subset']} matrix) on {record['date'][:10]}: "
        f"{env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}, transformers {env['transformers']}, "
        f"Python {env['python']}; {s['cases']} cases in {record['duration_s']:.0f} s. Tolerance: model states "
        f"{tol['model_states']}, peak allocated within {tol['peak_allocated_pct']:g} % "
        "(analytic − traced, of the traced).",
        "",
        f"**{s['pass']} of {s['cases']} cases pass; model states exact in {s['model_states_exact']} of "
        f"{s['compared']} compared; the peak within tolerance in {s['peak_within_tolerance']} (median abs. "
        f"difference {_pct(s['peak_abs_diff_pct_median'])}, max {_pct(s['peak_abs_diff_pct_max'])}); the phase of "
        f"the peak agrees in {s['phase_agrees']}; {s['not_run']} not run (the tracer refuses them); "
        f"{s['error']} errors.**",
        "",
        *_table("device", compared, lambda c: c["device"]),
        "",
        *_table("setting (batch 1)", compared, _setting),
        "",
        *_table("preset", compared, lambda c: c["preset"]),
    ]
    fails = [c for c in cases if c["status"] == "fail"]
    if fails:
        lines += [
            "",
            "Beyond tolerance (differences are analytic − traced; categories at each one's own peak; "
            "the reasons are listed below the table):",
            "",
            "| case | model states | peak allocated | peak categories | reasons |",
            "|---|---|---:|---|---|",
        ]
        used: list[str] = []
        for c in fails:
            peak = c["rows"]["peak.allocated"]
            reasons = explain(c)
            used += [k for k in reasons if k not in used]
            lines.append(
                f"| `{c['id']}` | {_states(c)} | {peak['diff_pct']:+.2f} % ({_mib(peak['diff_bytes'])}) | "
                f"{_categories(c)} | {', '.join(reasons) or 'not explained'} |"
            )
        text = {key: why for key, _, why in EXPLANATIONS}
        lines += ["", *(f"- **{key}**: {text[key]}" for key in used)]
    others = [c for c in cases if c["status"] in ("not run", "error")]
    if others:
        lines += ["", "Not run:", ""]
        lines += [f"- `{c['id']}`: {c['status']} ({c['error']})" for c in others]
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
    args = parser.parse_args(argv)
    try:
        readme_path = Path(args.readme)
        readme = readme_path.read_text(encoding="utf-8")
        new = splice(readme, render(load_record(args.record)))
    except (MemprofUserError, OSError) as exc:
        print(f"render_trace_accuracy: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != readme:
            print(
                f"render_trace_accuracy: {args.readme} is out of date; run python scripts/render_trace_accuracy.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != readme:
        readme_path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
