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
             f"batch {s['batch_size']} × seq {s['seq_len']} · {s['device']}"
             + (f" · {s['gpus']} GPU{'s' if s['gpus'] != 1 else ''} · ZeRO {s['zero']}" if s["device"] == "cuda" else "")
             + (f" · offload {s['offload']}" if s["offload"] != "none" else "")
             + (f" · {s['grad_accumulation']} micro-batches per step" if s.get("grad_accumulation", 1) > 1 else "")]
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
    rows.append(("", "", "", ""))
    phase = f" ({peak['phase']})" if peak["phase"] else ""
    rows.append((f"at the peak{phase}", "", "", ""))
    for cat in CATEGORIES:
        value = peak["by_category"][cat]
        rows.append(("  " + _LABELS[cat], _per_param(value, n), _bytes(value),
                     notes.get("peak:" + cat, "") if value is not None else notes.get("absent:" + cat,
                                                                                  "not modelled")))
    rows.append(("peak allocated", "", _bytes(peak["allocated"]), "tensors (max_memory_allocated)"))
    rows.append(("peak reserved", "", _bytes(peak["reserved"]), "+ fragmentation (max_memory_reserved)"))
    rows.append(("device total", "", _bytes(peak["device_total"]), "+ CUDA context (nvidia-smi)"
                 if record["settings"]["device"] == "cuda" else ""))
    lines.append("")
    lines.extend(_align(rows))
    for warning in record.get("warnings") or ():
        lines.append(f"warning: {warning}")
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
    s = record["settings"]
    breakdown = record["optimizer_state_breakdown"]            # whole model
    device, whole = record["model_states"]["optimizer_states"], record["model_states_unsharded"]["optimizer_states"]
    share = device / whole if whole else 1.0                     # ZeRO partitions / offload: this device's part
    parts = ", ".join(f"{key} {format_bytes(round(value * share))}" for key, value in breakdown.items())
    if whole and not device:
        parts = "offloaded to CPU RAM (below)"
    notes = {"parameters": prec.param_dtype, "gradients": prec.grad_dtype,
             "optimizer_states": parts or "none"}
    ckpt = "" if s["checkpointing"] == "none" else f", {s['checkpointing']} checkpointing"
    notes["peak:activations"] = (f"{s['attention']} attention ({s['attention_kernel']} kernel){ckpt}; "
                                 f"{format_bytes(record['activations_saved'])} saved at forward end")
    temps = dict(record["temporary_breakdown"])
    step = temps.pop("optimizer_step", None)
    parts = [f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in temps.items() if v]
    if step is not None:
        impl = (s["optimizer_impl"] or "").replace("_", "-")
        where = "at the peak" if record["peak"]["phase"] == "optimizer_step" else "in step()"
        parts.append(f"{impl} optimizer scratch {format_bytes(step)} {where}")
    notes["peak:temporary"] = "; ".join(parts)
    if record.get("cuda_context"):
        notes["peak:cuda_context"] = record["cuda_context"]["basis"]
    elif s["device"] == "cpu":
        notes["peak:cuda_context"] = notes["peak:fragmentation"] = "none on the CPU"
    frag, reserved = record["peak"]["by_category"]["fragmentation"], record["peak"]["reserved"]
    if record.get("allocator") and frag is not None and reserved:
        notes["peak:fragmentation"] = f"{frag / reserved:.1%} of reserved, from a caching-allocator replay of the step"
    notes["absent:fragmentation"] = "allocator replay not available"
    return notes


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
    missing = [c for c, v in record["peak"]["by_category"].items() if v is None]
    return (f"{gpu['name']} ({capacity}): model states take {format_bytes(states)} "
            f"({states / gpu['usable']:.0%}); whether the whole step fits is not known "
            f"({', '.join(missing)} not estimated)")


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


def fit_table(record: dict[str, Any]) -> str:
    """The human table of `memprof fit`, from its JSON record."""
    s = record["settings"]
    budget = (f"{format_bytes(record['usable'])} usable, {format_bytes(record['headroom'])} headroom: "
              f"budget {format_bytes(record['budget'])}")
    lines = [f"{record['model']} on {record['gpu']} ({budget})",
             f"{s.get('optimizer', 'adamw')} · {s.get('precision', 'bf16-mixed')} · checkpointing "
             f"{s.get('checkpointing', 'none')} · attention {s.get('attention', 'auto')} · "
             f"{s.get('gpus', 1)} GPU{'s' if s.get('gpus', 1) != 1 else ''} · ZeRO {s.get('zero', 0)}", ""]
    best, nxt = record["best"], record["next_up"]
    if record["searched"] == "seq_len":
        lines.append(f"longest sequence that fits at batch {best['batch_size']}: {record['max_seq_len']:,} "
                     f"(peak {format_bytes(best['device_total'])} at {best['phase']})")
        if nxt:
            lines.append(f"  sequence {nxt['seq_len']:,} would need {format_bytes(nxt['device_total'])}")
    else:
        lines.append(f"largest batch size that fits at sequence {best['seq_len']:,}: {record['max_batch_size']} "
                     f"(peak {format_bytes(best['device_total'])} at {best['phase']})")
        if nxt:
            lines.append(f"  batch {nxt['batch_size']} would need {format_bytes(nxt['device_total'])}")
    ref = record["reference"]
    if record["knobs"]:
        lines += ["", f"one knob at a time, at batch {ref['batch_size']} × sequence {ref['seq_len']:,} "
                      f"(peak {format_bytes(ref['device_total'])}):"]
        rows = [("knob", "peak", "saves", "fits")]
        for k in record["knobs"]:
            rows.append((k["knob"], format_bytes(k["peak"]), format_bytes(k["saves"]), "yes" if k["fits"] else "no"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}")
    return "\n".join(lines)
