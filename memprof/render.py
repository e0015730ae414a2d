"""Rendering of estimates for people (aligned tables) and for tools (CSV). Plain records in, text out."""
from __future__ import annotations

import csv
import io
from typing import Any

from memprof.estimators.units import format_bytes
from memprof.estimators.vocabulary import CATEGORIES

ABSENT = "—"
_LABELS = {"parameters": "parameters", "gradients": "gradients", "optimizer_states": "optimizer states",
           "activations": "activations", "temporary": "temporary buffers",
           "cuda_context": "CUDA context", "fragmentation": "fragmentation"}


def _bytes(value: int | None) -> str:
    return ABSENT if value is None else format_bytes(value)


def _per_param(value: int | None, parameters: int) -> str:
    return ABSENT if value is None else f"{value / parameters:.2f}"


def estimate_table(record: dict[str, Any], result: Any = None) -> str:
    """The human table of `memprof estimate`, from the JSON record (and the Estimate for notes)."""
    s = record["settings"]
    n = record["parameters"]
    lines = [f"{record['model']} · {n:,} parameters · {s['optimizer']} · {s['precision']}",
             f"batch {s['batch_size']} × seq {s['seq_len']} · {s['device']} · {s['gpus']} GPU"
             f"{'s' if s['gpus'] != 1 else ''} · ZeRO {s['zero']}"
             + (f" · offload {s['offload']}" if s["offload"] != "none" else "")]
    if result is not None:
        opt = result.optimizer
        lines.append(f"optimizer: {opt.implementation} ({opt.family.value})")
        lines.append(f"precision: {result.precision.description}")
    notes = _notes(record, result)
    rows = [("", "bytes/param", "per device", "")]
    states = record["model_states"]
    for cat in ("parameters", "gradients", "optimizer_states"):
        rows.append((_LABELS[cat], _per_param(states[cat], n), _bytes(states[cat]), notes.get(cat, "")))
    total = sum(states.values())
    rows.append(("model states", _per_param(total, n), _bytes(total), ""))
    peak = record["peak"]
    for cat in ("activations", "temporary", "cuda_context", "fragmentation"):
        value = peak["by_category"][cat]
        rows.append((_LABELS[cat], _per_param(value, n) if value is not None else ABSENT, _bytes(value),
                     "" if value is not None else "not modelled yet"))
    phase = f"at {peak['phase']}" if peak["phase"] else ""
    rows.append(("peak", "", _bytes(peak["device_total"]), phase))
    lines.append("")
    lines.extend(_align(rows))
    if record.get("cpu_offload"):
        lines.append(f"CPU RAM for offloaded states: {format_bytes(record['cpu_offload'])}")
    verdict = _verdict(record)
    if verdict:
        lines.append(verdict)
    return "\n".join(lines)


def _notes(record: dict[str, Any], result: Any) -> dict[str, str]:
    if result is None:
        return {}
    prec = result.precision
    breakdown = record["optimizer_state_breakdown"]
    parts = ", ".join(f"{key} {format_bytes(value)}" for key, value in breakdown.items())
    return {"parameters": prec.param_dtype, "gradients": prec.grad_dtype,
            "optimizer_states": parts or "none"}


def _align(rows: list[tuple[str, str, str, str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    out = []
    for label, per_param, size, note in rows:
        out.append(f"{label:<{widths[0]}}  {per_param:>{widths[1]}}  {size:>{widths[2]}}  {note}".rstrip())
    return out


def _verdict(record: dict[str, Any]) -> str:
    gpu = record["gpu"]
    if gpu is None:
        return ""
    capacity = f"{format_bytes(gpu['usable'])} usable"
    total = record["peak"]["device_total"]
    states = sum(record["model_states"].values())
    if gpu["fits"] is True:
        return f"fits {gpu['name']} ({capacity}): peak {format_bytes(total)}, {total / gpu['usable']:.0%} of it"
    if gpu["fits"] is False:
        if total is None:
            return (f"does not fit {gpu['name']} ({capacity}): model states alone need "
                    f"{format_bytes(states)}")
        return f"does not fit {gpu['name']} ({capacity}): peak {format_bytes(total)}"
    return (f"{gpu['name']} ({capacity}): model states take {format_bytes(states)} "
            f"({states / gpu['usable']:.0%}); whether the whole step fits is not known until the "
            "remaining categories are modelled")


def estimate_csv(record: dict[str, Any]) -> str:
    """One row per category: category, model_state_bytes, peak_bytes (empty where absent)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "category", "model_state_bytes", "peak_bytes"])
    for cat in CATEGORIES:
        state = record["model_states"].get(cat)
        peak = record["peak"]["by_category"].get(cat)
        writer.writerow([record["model"], cat, "" if state is None else state, "" if peak is None else peak])
    return buffer.getvalue()
