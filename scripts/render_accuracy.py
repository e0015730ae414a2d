"""Render README.md's accuracy table from a recorded `memprof validate` run (never typed by hand).

    python scripts/render_accuracy.py                       # profiles/measurements/validation-cpu-full.json
    python scripts/render_accuracy.py --record PATH --readme README.md
    python scripts/render_accuracy.py --check               # exit 1 if README.md is not up to date

Replaces what lies between `<!-- accuracy:start -->` and `<!-- accuracy:end -->`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from memprof.estimators.errors import MemprofUserError
from memprof.profiles import data_path
from memprof.validate import DEFAULT_FILE, load_record, summarize

START, END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"
ROOT = Path(__file__).resolve().parent.parent


def _pct(v: float | None) -> str:
    if v is None:
        return "-"
    return "< 0.01 %" if 0 < abs(v) < 0.005 else f"{v:.2f} %"


def _bytes(v: int | None) -> str:
    return "-" if v is None else f"{v:,} B"


def _table(title: str, cases: list[dict[str, Any]], *keys: Callable[[dict[str, Any]], str]) -> list[str]:
    """One row per value of each key (in order of first appearance), summarizing its cases."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        for c in cases:
            groups.setdefault(key(c), []).append(c)
    lines = [
        f"| {title} | cases | model states exact | peak predicted | peak within tolerance | "
        f"median abs. peak error | max abs. peak error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, group in groups.items():
        s = summarize(group)
        lines.append(
            f"| {name} | {s['cases']} | {s['model_states_exact']} | {s['peak_predicted']} | "
            f"{s['peak_within_tolerance']} | {_pct(s['peak_abs_error_pct_median'])} | "
            f"{_pct(s['peak_abs_error_pct_max'])} |"
        )
    return lines


def _beyond(cases: Iterable[dict[str, Any]]) -> list[str]:
    rows = []
    for c in cases:
        if c["status"] == "fail":
            peak = c["rows"].get("peak.allocated") or {}
            pct = peak.get("error_pct")
            rows.append(
                f"- `{c['id']}`: peak {'-' if pct is None else f'{pct:+.2f} %'} "
                f"({_bytes(peak.get('predicted'))} predicted vs {_bytes(peak.get('measured'))} measured)"
            )
        elif c["status"] == "error":
            rows.append(f"- `{c['id']}`: did not run ({c['error']})")
    return rows


def _adapter(c: dict[str, Any]) -> str:
    """full training, LoRA (peft), QLoRA nf4 / fp4 (double quant) or int8 LoRA (bitsandbytes)."""
    if not c.get("lora_rank"):
        return "full training (no adapter)"
    if not c.get("quantize"):
        return "LoRA (peft)" + (", dropout" if c.get("lora_dropout") else "")
    if c["quantize"] == "int8":
        return "int8 base + LoRA (bitsandbytes, peft)"
    return f"QLoRA {c['quantize']}" + (" + double quant" if c.get("double_quant") else "") + " (bitsandbytes, peft)"


def render(record: dict[str, Any]) -> str:
    """The markdown between the markers, from a validation record."""
    env, s, tol = record["environment"], record["summary"], record["tolerance"]
    cases = record["cases"]
    lines = [
        f"Recorded by `memprof validate` ({record['subset']} matrix) on {record['date'][:10]}: "
        f"{env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}, transformers "
        f"{env['transformers']}, Python {env['python']}; {s['cases']} cases in {record['duration_s']:.0f} s. "
        f"Tolerance: model states {tol['model_states']}, peak allocated within {tol['peak_allocated_pct']:g} %.",
        "",
        f"**{s['pass']} of {s['cases']} cases pass; model states exact in {s['model_states_exact']}; the peak "
        f"is predicted in {s['peak_predicted']} and within tolerance in {s['peak_within_tolerance']} "
        f"(median abs. error {_pct(s['peak_abs_error_pct_median'])}, max {_pct(s['peak_abs_error_pct_max'])}); "
        f"{s['no_peak']} without a peak prediction; {s['error']} did not run.**",
        "",
        *_table("family (all cases)", cases, lambda c: c["family"]),
        "",
        *_table("optimizer", cases, lambda c: c["optimizer"]),
        "",
        *_table(
            "setting (all cases)",
            cases,
            lambda c: f"precision {c['precision']}",
            lambda c: f"attention {c['attention']}",
            lambda c: f"checkpointing {c['checkpointing']}",
            lambda c: f"grad accumulation {c.get('grad_accumulation', 1)}",
            lambda c: f"batch {c['batch_size']}" + (" (ViT)" if c["family"] == "vit" else f" x seq {c['seq_len']}"),
            lambda c: "loop: output kept through backward" if c.get("keep_output", True) else "loop: --no-keep-output",
            lambda c: f"loop: --zero-grad {c.get('zero_grad') or 'set-to-none'}",
            lambda c: "head " + (c.get("head") or "(the model's own)"),
            _adapter,
        ),
    ]
    beyond = _beyond(cases)
    if beyond:
        lines += ["", "Beyond tolerance or not run:", "", *beyond]
    if record.get("not_run"):
        lines += ["", "Not in the matrix: " + "; ".join(f"{k} ({v})" for k, v in record["not_run"].items()) + "."]
    return "\n".join(lines)


def splice(readme: str, body: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise MemprofUserError(f"README must hold one {START} ... {END} pair")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", default=str(data_path("measurements", DEFAULT_FILE)))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = parser.parse_args(argv)
    try:
        readme_path = Path(args.readme)
        readme = readme_path.read_text(encoding="utf-8")
        new = splice(readme, render(load_record(args.record)))
    except (MemprofUserError, OSError) as exc:
        print(f"render_accuracy: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != readme:
            print(
                f"render_accuracy: {args.readme} is out of date; run python scripts/render_accuracy.py", file=sys.stderr
            )
            return 1
        return 0
    if new != readme:
        readme_path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
