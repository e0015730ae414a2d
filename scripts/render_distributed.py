"""Render README.md's distributed blocks: the per-rank validation on real multi-process CPU runs, and
how the same model and GPU count differ between the data-parallel engines.

    python scripts/render_distributed.py              # print both blocks
    python scripts/render_distributed.py --write      # replace them in README.md
    python scripts/render_distributed.py --check      # exit 1 if README.md is not up to date

The validation block comes from profiles/measurements/validation-distributed-cpu.json
(`python -m memprof.validate_distributed`), between `<!-- distributed-validation:start -->` and
`<!-- distributed-validation:end -->`. The engines block is computed here from the estimator
(`memprof.estimators.estimation.estimate`, one row per engine of ENGINE_ROWS), between
`<!-- distributed-engines:start -->` and `<!-- distributed-engines:end -->`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from memprof.estimators.estimation import estimate
from memprof.profiles import data_path
from memprof.validate_distributed import DEFAULT_FILE, load_record

ROOT = Path(__file__).resolve().parent.parent
VALIDATION = ("<!-- distributed-validation:start -->", "<!-- distributed-validation:end -->")
ENGINES = ("<!-- distributed-engines:start -->", "<!-- distributed-engines:end -->")

MODEL, GPUS, GPU = "llama-3.1-8b", 8, "h100-80gb"
KNOBS: dict[str, Any] = {"optimizer": "adamw", "precision": "bf16-mixed", "batch_size": 1, "seq_len": 4096}
ENGINE_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("one GPU", {"gpus": 1}),
    ("DDP", {"gpus": GPUS, "engine": "ddp"}),
    ("FSDP2 shard-grad-op (`--engine fsdp --zero 2`)", {"gpus": GPUS, "engine": "fsdp", "zero": 2}),
    ("FSDP2 full-shard (`--engine fsdp --zero 3`)", {"gpus": GPUS, "engine": "fsdp", "zero": 3}),
    ("DeepSpeed ZeRO-1", {"gpus": GPUS, "engine": "deepspeed", "zero": 1}),
    ("DeepSpeed ZeRO-2", {"gpus": GPUS, "engine": "deepspeed", "zero": 2}),
    ("DeepSpeed ZeRO-3", {"gpus": GPUS, "engine": "deepspeed", "zero": 3}),
)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _pct(v: float | None) -> str:
    if v is None:
        return "-"
    return "< 0.01 %" if abs(v) < 0.005 else f"{v:+.2f} %"


def engines_block() -> str:
    lines = [
        f"`{MODEL}`, AdamW, bf16-mixed, batch 1 x {KNOBS['seq_len']} tokens per GPU, {GPUS} GPUs ({GPU}); "
        "GiB per GPU (`memprof estimate` with each engine):",
        "",
        "| engine | parameters | gradients | optimizer states | temporary at the peak | peak allocated "
        "| device total | fits |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, knobs in ENGINE_ROWS:
        try:
            rec = estimate(MODEL, gpu=GPU, **KNOBS, **knobs).record
        except Exception as exc:  # an engine another change has not registered yet
            lines.append(f"| {label} | not available: {type(exc).__name__}: {exc} |||||||")
            continue
        states = rec.model_states
        lines.append(
            f"| {label} | {_gib(states.parameters)} | {_gib(states.gradients)} | {_gib(states.optimizer_states)} "
            f"| {_gib(rec.peak.by_category['temporary'])} | {_gib(rec.peak.allocated)} | {_gib(rec.peak.device_total)} "
            f"| {'yes' if rec.fits else 'no'} |"
        )
    return "\n".join(lines)


def validation_block(record: dict[str, Any]) -> str:
    s = record["summary"]
    env = record["environment"]
    lines = [
        f"{s['passed']} of {s['cases']} cases within {record['tolerance_pct']:g} % on every rank; model states "
        f"exact in {s['states_exact']}; worst rank's error at most {_pct(s['worst_abs_error_pct'])} "
        f"(torch {env['torch']}, {env['backend']}).",
        "",
        "| case | ranks | worst rank | predicted peak | measured peak | error | model states | phase |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in record["results"]:
        if "ranks" not in r:
            lines.append(f"| {r['case']} | - | - | - | - | - | failed to run | - |")
            continue
        worst = next(x for x in r["ranks"] if x["rank"] == r["worst_rank"])
        lines.append(
            f"| {r['case']} | {len(r['ranks'])} | {r['worst_rank']} | {worst['predicted_peak']:,} B "
            f"| {worst['measured_peak']:,} B | {_pct(worst['error_pct'])} "
            f"| {'exact' if r['states_exact'] else 'differ'} | {worst['predicted_phase']} / {worst['measured_phase']} |"
        )
    return "\n".join(lines)


def replace(text: str, markers: tuple[str, str], block: str) -> str:
    start, end = markers
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", default=str(data_path("measurements", DEFAULT_FILE)))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    blocks = {VALIDATION: validation_block(load_record(args.record)), ENGINES: engines_block()}
    if not (args.write or args.check):
        for markers, block in blocks.items():
            print(f"{markers[0]}\n{block}\n{markers[1]}\n")
        return 0
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    new = text
    for markers, block in blocks.items():
        new = replace(new, markers, block)
    if args.check:
        if new != text:
            print("README.md's distributed blocks are out of date: python scripts/render_distributed.py --write")
            return 1
        return 0
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
