"""Render README.md's table of memprof against published GPU measurements (never typed by hand).

    python scripts/render_published.py                  # score profiles/published/ and update README.md
    python scripts/render_published.py --check          # exit 1 if README.md is not up to date
    python scripts/render_published.py --json out.json  # also write the full result record

Replaces what lies between `<!-- published:start -->` and `<!-- published:end -->` with what
`memprof.published.score_published()` computes today (the estimates run, torch-free, in seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from memprof.estimators.errors import MemprofUserError
from memprof.published import PublishedScore, RowResult, load_published, score_published

START, END = "<!-- published:start -->", "<!-- published:end -->"
ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} %"


def _gib(v: int | None) -> str:
    return "-" if v is None else f"{v / GIB:.2f} GiB"


def _oom(s: Mapping[str, Any]) -> str:
    if not s["oom_rows"]:
        return "-"
    text = f"{s['oom_agree']} of {s['oom_scored']} scored ({s['oom_rows']} OOM rows)"
    return text + (f", {s['oom_inconclusive']} inconclusive" if s["oom_inconclusive"] else "")


def _summary_table(title: str, groups: Mapping[str, Mapping[str, Any]], label: Mapping[str, str]) -> list[str]:
    lines = [
        f"| {title} | rows | scored | compared | median abs. error | max abs. error | OOM predicted |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, s in groups.items():
        lines.append(
            f"| {label.get(key, key)} | {s['rows']} | {s['scored']} | {s['compared']} | "
            f"{_pct(s['median_abs_error_pct'])} | {_pct(s['max_abs_error_pct'])} | {_oom(s)} |"
        )
    return lines


def _setting(r: RowResult) -> str:
    k = dict(r.knobs)
    parts = [f"{r.model}", k.get("optimizer", "?"), k.get("precision", "?"), f"b{k.get('batch_size')}"]
    if k.get("seq_len"):
        parts[-1] += f"×{k['seq_len']}"
    if k.get("grad_accumulation", 1) > 1:
        parts.append(f"ga{k['grad_accumulation']}")
    if k.get("checkpointing", "none") != "none":
        parts.append(f"ckpt {k['checkpointing']}")
    if k.get("zero"):
        parts.append(f"ZeRO-{k['zero']} ×{k.get('gpus', 1)}")
    return ", ".join(str(p) for p in parts)


def render(score: PublishedScore, sources: Mapping[str, str]) -> str:
    """The markdown between the markers."""
    summary = score.summary()
    total = summary["total"]
    label = {sid: f"[{sid}]({url})" for sid, url in sources.items()}
    lines = [
        f"{total['rows']} published measurements from {len(summary['by_source'])} sources "
        f"(`profiles/published/`); memprof can express {total['scored']} of them. "
        f"Against the {total['compared']} with a figure: **median abs. error {_pct(total['median_abs_error_pct'])}, "
        f"max {_pct(total['max_abs_error_pct'])}**; OOM reports predicted as not fitting: "
        f"{total['oom_agree']} of {total['oom_scored']} scored ({total['oom_rows']} OOM rows).",
        "",
        *_summary_table("source", summary["by_source"], label),
        "",
        *_summary_table("metric", summary["by_metric"], {}),
        "",
        "| row | GPU | setting | metric | measured | predicted | error | proxies / assumptions |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in score.scored:
        measured = "OOM" if r.oom_measured else _gib(r.measured)
        predicted = ("does not fit" if r.predicted_fits is False else "fits") if r.oom_measured else _gib(r.predicted)
        error = "agrees" if r.oom_agrees else ("-" if r.error_pct is None else f"{r.error_pct:+.1f} %")
        if r.oom_measured and r.oom_agrees is False:
            error = "disagrees"
        lines.append(
            f"| `{r.id}` | {r.knobs.get('gpu')} | {_setting(r)} | {r.metric} | {measured} | {predicted} | {error} | "
            f"{len(r.proxies)} / {len(r.assumptions)} |"
        )
    reasons = summary["not_expressible_reasons"]
    if reasons:
        lines += ["", "Not expressible: " + "; ".join(f"{k} ({v})" for k, v in reasons.items()) + "."]
    return "\n".join(lines)


def splice(readme: str, body: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise MemprofUserError(f"README must hold one {START} ... {END} pair")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def _sources(paths: Sequence[str] | None) -> dict[str, str]:
    return {row.source: row.source_page for row in load_published(paths or None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--rows", nargs="*", help="row files or a directory (default: profiles/published/)")
    parser.add_argument("--json", help="also write the full result record (JSON) here")
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = parser.parse_args(argv)
    try:
        rows = args.rows or None
        score = score_published(rows)
        readme_path = Path(args.readme)
        readme = readme_path.read_text(encoding="utf-8")
        new = splice(readme, render(score, _sources(rows)))
    except (MemprofUserError, OSError) as exc:
        print(f"render_published: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(score.to_dict(), indent=1) + "\n", encoding="utf-8")
    if args.check:
        if new != readme:
            print(
                f"render_published: {args.readme} is out of date; run python scripts/render_published.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != readme:
        readme_path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
