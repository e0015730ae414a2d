"""Rendering of estimates for people (aligned tables) and for tools (CSV). Plain records in, text out."""

from __future__ import annotations

import csv
import io
from typing import Any

from memprof.estimators.records import EstimateRecord
from memprof.estimators.units import format_bytes
from memprof.estimators.vocabulary import CATEGORIES

ABSENT = "—"
_LABELS = {
    "parameters": "parameters",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "activations": "activations",
    "temporary": "temporary buffers",
    "cuda_context": "CUDA context",
    "fragmentation": "fragmentation",
}


def _bytes(value: int | None) -> str:
    return ABSENT if value is None else format_bytes(value)


def _per_param(value: int | None, parameters: int) -> str:
    return ABSENT if value is None else f"{value / parameters:.2f}"


def _model_parallel_line(s: Any) -> str:
    """ "pipeline stage 1 of 2 (1f1b, 8 micro-batches) · tensor parallel: one rank of 2", or "" without
    either."""
    parts = []
    if s.pp is not None:
        virtual = f", {s.virtual_stages} virtual stages per rank" if (s.virtual_stages or 1) > 1 else ""
        parts.append(
            f"pipeline stage {s.pp_stage} of {s.pp} ({s.pp_schedule}, {s.microbatches} "
            f"micro-batch{'es' if s.microbatches != 1 else ''}{virtual})"
        )
    if s.tp is not None:
        parts.append(f"tensor parallel: one rank of {s.tp}")
    return " · ".join(parts)


def engine_label(engine: str | None, zero: int) -> str:
    """How the record's data-parallel engine reads: "ZeRO 0" alone, "DDP", "FSDP2 full-shard", "DeepSpeed ZeRO-2"."""
    if engine == "fsdp":
        return "FSDP2 " + ("full-shard" if zero == 3 else "shard-grad-op")
    if engine == "deepspeed":
        return f"DeepSpeed ZeRO-{zero}"
    if engine == "ddp":
        return "DDP"
    return f"ZeRO {zero}"


def estimate_table(record: EstimateRecord) -> str:
    """The human table of `memprof estimate`, from the estimate record alone."""
    s = record.settings
    n = record.parameters or 0
    lines = [
        f"{record.model} · {n:,} parameters · {s.optimizer} · {s.precision}",
        f"batch {s.batch_size} × seq {s.seq_len}"
        + ("" if s.target_len is None else f" (decoder {s.target_len})")
        + f" · {s.device}"
        + (
            f" · {s.gpus} GPU{'s' if s.gpus != 1 else ''} · {engine_label(s.engine, s.zero)}"
            if s.device == "cuda"
            else ""
        )
        + (f" · offload {s.offload}" if s.offload != "none" else "")
        + (f" · {s.grad_accumulation} micro-batches per step" if s.grad_accumulation > 1 else ""),
    ]
    split = _model_parallel_line(s)
    if split:
        lines.append(split)
    if s.population is not None:
        lines.append(
            f"population {s.population}: each member evaluated by a forward under torch.no_grad; "
            "no backward, so no gradients and nothing saved for backward"
        )
    labels = record.labels
    if labels.optimizer_implementation is not None:
        family = f" ({labels.optimizer_family})" if labels.optimizer_family else ""
        lines.append(f"optimizer: {labels.optimizer_implementation}{family}")
    if labels.precision_description is not None:
        lines.append(f"precision: {labels.precision_description}")
    notes = _notes(record)
    rows = [("", "bytes/param", "per device", "")]
    states = record.model_states.to_dict()
    for cat in ("parameters", "gradients", "optimizer_states"):
        rows.append((_LABELS[cat], _per_param(states[cat], n), _bytes(states[cat]), notes.get(cat, "")))
    total = record.model_states.total
    rows.append(("model states", _per_param(total, n), _bytes(total), ""))
    peak = record.peak
    rows.append(("", "", "", ""))
    phase = f" ({peak.phase})" if peak.phase else ""
    rows.append((f"at the peak{phase}", "", "", ""))
    for cat in CATEGORIES:
        value = peak.by_category.get(cat)
        note = notes.get("peak:" + cat, "") if value is not None else notes.get("absent:" + cat, "not modelled")
        rows.append(("  " + _LABELS[cat], _per_param(value, n), _bytes(value), note))
    rows.append(("peak allocated", "", _bytes(peak.allocated), "tensors (max_memory_allocated)"))
    rows.append(("peak reserved", "", _bytes(peak.reserved), "+ fragmentation (max_memory_reserved)"))
    rows.append(
        ("device total", "", _bytes(peak.device_total), "+ CUDA context (nvidia-smi)" if s.device == "cuda" else "")
    )
    lines.append("")
    lines.extend(_align(rows))
    lines.extend(allocator_lines(record))
    for warning in record.warnings:
        lines.append(f"warning: {warning}")
    if record.cpu_offload:
        lines.append(_offload_line(record.cpu_offload, s.gpus))
    verdict = _verdict(record)
    if verdict:
        lines.append(verdict)
    return "\n".join(lines)


def allocator_lines(record: EstimateRecord) -> list[str]:
    """What the simulated caching allocator did (the estimate's allocator.explain and .range), in words."""
    allocator = record.allocator or {}
    explain, span = allocator.get("explain"), allocator.get("range")
    out: list[str] = []
    if isinstance(span, dict) and span.get("low") is not None and record.peak.reserved is not None:
        base = (allocator.get("peak") or {}).get("reserved") or 0
        low, high = record.peak.reserved + span["low"] - base, record.peak.reserved + span["high"] - base
        out.append(
            f"reserved over allocation orders memprof cannot know: {format_bytes(low)} to {format_bytes(high)} "
            f"({len(span.get('replays', {}))} replays: segment addresses, allocations made together)"
        )
    if not isinstance(explain, dict):
        return out
    seg = explain["segments"]
    request = explain.get("request") or {}
    asked = f" for {request.get('name')} ({format_bytes(request.get('bytes') or 0)})" if request else ""
    out.append(
        f"allocator at the peak ({explain.get('where') or 'measured step'}; {explain['moment']}{asked}): "
        f"{seg['count']:,} segments, {format_bytes(seg['bytes'])}; free inside them "
        f"{format_bytes(explain['free_in_split_segments'])} in split segments, "
        f"{format_bytes(explain['free_whole_segments'])} in whole cached segments"
    )
    for block in explain.get("largest_free_blocks", [])[:3]:
        out.append(
            f"  free {format_bytes(block['bytes'])} of a {format_bytes(block['segment_bytes'])} segment, "
            f"split by {', '.join(block['split_by'])}"
        )
    return out


GPUS_PER_NODE = 8  # what a node holds when the host-RAM line multiplies per GPU


def _offload_line(per_gpu: int, gpus: int) -> str:
    """Host RAM for offloaded states: per GPU (each rank's process), and per node."""
    on_node = min(gpus, GPUS_PER_NODE)
    node = f"{format_bytes(per_gpu * on_node)} per node of {on_node} GPU{'s' if on_node != 1 else ''}"
    if gpus > GPUS_PER_NODE:
        node += f" (assuming {GPUS_PER_NODE} GPUs per node)"
    return f"CPU RAM for offloaded states: {format_bytes(per_gpu)} per GPU, {node}"


def _activations_note(record: EstimateRecord, prefix: str) -> str:
    """Why the activations at the peak differ from what autograd saved at the end of the forward."""
    saved, at_peak = record.activations_saved, record.peak.by_category.get("activations")
    if record.settings.population is not None:
        return f"{prefix}nothing saved for backward (no backward); outputs the loop holds"
    if saved is None:
        return f"{prefix}saved at forward end not estimated"
    text = f"{prefix}{format_bytes(saved)} saved for backward at forward end"
    if at_peak is None or at_peak == saved:
        return text
    if at_peak > saved:
        return text + f" + {format_bytes(at_peak - saved)} the loop holds (logits, loss) or recomputes"
    return text + f", of which backward has freed {format_bytes(saved - at_peak)} by the peak"


def _notes(record: EstimateRecord) -> dict[str, str]:
    labels, s = record.labels, record.settings
    if labels.param_dtype is None or record.model_states_unsharded is None:
        return {}
    device = record.model_states.optimizer_states
    whole = record.model_states_unsharded.optimizer_states
    share = device / whole if whole and device is not None else 1.0  # ZeRO partitions / offload: this device's part
    parts = ", ".join(
        f"{key} {format_bytes(round(value * share))}" for key, value in record.optimizer_state_breakdown.items()
    )
    if whole and not device:
        parts = "offloaded to CPU RAM (below)"
    notes = {
        "parameters": labels.param_dtype,
        "gradients": "none: no backward" if s.population is not None else labels.grad_dtype or "",
        "optimizer_states": parts or "none",
    }
    # a traced step of a model memprof has no architecture for knows neither (null): say nothing of them
    setting = [f"{s.attention} attention" if s.attention else ""]
    if s.attention and s.attention_kernel:
        setting[0] += f" ({s.attention_kernel} kernel)"
    if s.checkpointing not in (None, "none"):
        setting.append(f"{s.checkpointing} checkpointing")
    described = ", ".join(x for x in setting if x)
    notes["peak:activations"] = _activations_note(record, f"{described}; " if described else "")
    notes["peak:temporary"] = _temporary_note(record)
    if record.cuda_context is not None:
        notes["peak:cuda_context"] = record.cuda_context.basis
    elif s.device == "cpu":
        notes["peak:cuda_context"] = notes["peak:fragmentation"] = "none on the CPU"
    frag, reserved = record.peak.by_category.get("fragmentation"), record.peak.reserved
    if record.allocator and frag is not None and reserved:
        notes["peak:fragmentation"] = f"{frag / reserved:.1%} of reserved, from a caching-allocator replay of the step"
    notes["absent:fragmentation"] = "allocator replay not available"
    return notes


def _temporary_note(record: EstimateRecord) -> str:
    """The temporaries: the largest tensors live at the peak, named, then the optimizer's scratch."""
    s = record.settings
    at_peak = dict(record.temporary_at_peak)
    parts = []
    if at_peak:
        parts.append(
            "largest at the peak: "
            + ", ".join(f"{_temporary_label(k, s.optimizer_impl)} {format_bytes(v)}" for k, v in at_peak.items())
        )
    else:  # a record written before temporary_at_peak existed
        others = {k: v for k, v in record.temporary_breakdown.items() if k != "optimizer_step"}
        parts += [f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in others.items() if v]
    step = record.temporary_breakdown.get("optimizer_step")
    if step is not None and (record.peak.phase != "optimizer_step" or not at_peak):
        where = "at the peak" if record.peak.phase == "optimizer_step" else "in step(), not at the peak"
        parts.append(f"{_temporary_label('optimizer step scratch', s.optimizer_impl)} {format_bytes(step)} {where}")
    return "; ".join(parts)


def _temporary_label(key: str, optimizer_impl: str | None) -> str:
    if key == "optimizer step scratch":
        impl = "" if optimizer_impl in (None, "none", "n/a") else optimizer_impl.replace("_", "-") + " "
        return f"{impl}optimizer scratch"
    return key if " " in key else key.replace("_", " ")  # "cublas_workspace" -> "cublas workspace"


def _align(rows: list[tuple[str, str, str, str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    out = []
    for label, per_param, size, note in rows:
        out.append(f"{label:<{widths[0]}}  {per_param:>{widths[1]}}  {size:>{widths[2]}}  {note}".rstrip())
    return out


def _verdict(record: EstimateRecord) -> str:
    gpu = record.gpu
    if gpu is None:
        return ""
    capacity = f"{format_bytes(gpu.usable)} usable"
    total = record.peak.device_total
    states = record.model_states.total or 0
    if gpu.fits is True and total is not None:
        return f"fits {gpu.name} ({capacity}): peak {format_bytes(total)}, {total / gpu.usable:.0%} of it"
    if gpu.fits is False:
        if total is None:
            return f"does not fit {gpu.name} ({capacity}): model states alone need {format_bytes(states)}"
        return f"does not fit {gpu.name} ({capacity}): peak {format_bytes(total)}"
    missing = [c for c, v in record.peak.by_category.items() if v is None]
    return (
        f"{gpu.name} ({capacity}): model states take {format_bytes(states)} "
        f"({states / gpu.usable:.0%}); whether the whole step fits is not known "
        f"({', '.join(missing)} not estimated)"
    )


CSV_SETTINGS = (
    "optimizer",
    "precision",
    "batch_size",
    "seq_len",
    "checkpointing",
    "attention",
    "device",
    "gpus",
    "zero",
    "offload",
    "grad_accumulation",
    "optimizer_impl",
    "population",
)
CSV_COLUMNS = (
    "model",
    "category",
    "model_state_bytes",
    "peak_bytes",
    "peak_phase",
    "peak_allocated",
    "peak_reserved",
    "device_total",
    "activations_saved",
    "cpu_offload",
    *CSV_SETTINGS,
    "gpu",
    "gpu_usable",
    "fits",
)


def estimate_csv(record: EstimateRecord) -> str:
    """One row per category (docs/architecture.md, the CSV contract): the category's model-state and
    at-peak bytes, then the figures of the whole estimate repeated on every row, so that a
    spreadsheet filter or pivot needs no second table: peak phase and totals, settings, GPU verdict.
    Empty cells are absent figures."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    states = record.model_states.to_dict()
    settings = record.to_dict()["settings"]
    gpu = record.gpu
    common = [
        record.peak.phase,
        record.peak.allocated,
        record.peak.reserved,
        record.peak.device_total,
        record.activations_saved,
        record.cpu_offload,
        *(settings.get(k) for k in CSV_SETTINGS),
        None if gpu is None else gpu.name,
        None if gpu is None else gpu.usable,
        None if gpu is None or gpu.fits is None else ("yes" if gpu.fits else "no"),
    ]
    for cat in CATEGORIES:
        row = [record.model, cat, states.get(cat), record.peak.by_category.get(cat), *common]
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def fit_table(record: dict[str, Any]) -> str:
    """The human table of `memprof fit`, from its JSON record."""
    s = record["settings"]
    budget = (
        f"{format_bytes(record['usable'])} usable, {format_bytes(record['headroom'])} headroom: "
        f"budget {format_bytes(record['budget'])}"
    )
    lines = [
        f"{record['model']} on {record['gpu']} ({budget})",
        f"{s.get('optimizer', 'adamw')} · {s.get('precision', 'bf16-mixed')} · checkpointing "
        f"{s.get('checkpointing', 'none')} · attention {s.get('attention', 'auto')} · "
        f"{s.get('gpus', 1)} GPU{'s' if s.get('gpus', 1) != 1 else ''} · ZeRO {s.get('zero', 0)}",
        "",
    ]
    best, nxt = record["best"], record["next_up"]
    if record["searched"] == "seq_len":
        lines.append(
            f"longest sequence that fits at batch {best['batch_size']}: {record['max_seq_len']:,} "
            f"(peak {format_bytes(best['device_total'])} at {best['phase']})"
        )
        exact, multiple = record.get("max_seq_len_exact"), record.get("seq_multiple")
        if record.get("seq_len_limited_by") == "positions":
            lines.append(
                f"  limited by the model's {record['max_seq_len']:,} positions (the context its config states), "
                f"not by memory: {format_bytes(record['budget'] - best['device_total'])} of the budget is left"
            )
        elif exact is not None and multiple and exact != record["max_seq_len"]:
            lines.append(f"  rounded down to a multiple of {multiple} from {exact:,}, the exact limit memory sets")
        if nxt:
            lines.append(f"  sequence {nxt['seq_len']:,} would need {format_bytes(nxt['device_total'])}")
    else:
        lines.append(
            f"largest batch size that fits at sequence {best['seq_len']:,}: {record['max_batch_size']} "
            f"(peak {format_bytes(best['device_total'])} at {best['phase']})"
        )
        if best.get("cache_flushes"):
            lines.append(
                f"  only by flushing the allocator's cache ({best['cache_flushes']} retries per step: slower, "
                "not an out-of-memory error)"
            )
        if nxt:
            lines.append(f"  batch {nxt['batch_size']} would need {format_bytes(nxt['device_total'])}")
    ref = record["reference"]
    if record["knobs"]:
        lines += [
            "",
            f"one knob at a time, at batch {ref['batch_size']} × sequence {ref['seq_len']:,} "
            f"(peak {format_bytes(ref['device_total'])}):",
        ]
        rows = [("knob", "peak", "saves", "fits")]
        for k in record["knobs"]:
            fits = ("yes, flushing the cache" if k.get("cache_flushes") else "yes") if k["fits"] else "no"
            rows.append((k["knob"], format_bytes(k["peak"]), format_bytes(k["saves"]), fits))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}")
    if record.get("policy"):
        lines += ["", f"verdict policy: {record['policy']}"]
    return "\n".join(lines)


def optimizers_table(rows: list[dict[str, Any]], assumptions: EstimateRecord | None = None) -> str:
    """The human table of `memprof optimizers`: one line per optimizer, a blank line between families.

    `assumptions`: an estimate of the same knobs; its settings head the table (precision, batch,
    sequence, devices), so the reader knows what every row assumes."""
    lines: list[str] = []
    if assumptions is not None:
        s = assumptions.settings
        gpus = f"{s.gpus} GPU{'s' if s.gpus != 1 else ''} · ZeRO {s.zero}" if s.device == "cuda" else "CPU"
        lines += [
            f"{assumptions.model} · {s.precision} · batch {s.batch_size} × seq {s.seq_len} · {s.checkpointing} "
            f"checkpointing · {gpus}" + (f" · offload {s.offload}" if s.offload != "none" else ""),
            "per device: optimizer states, model states, peak (what one GPU holds, after ZeRO / offload); "
            "unsharded: state B/param (the whole model)",
            "",
        ]
    header = (
        "family",
        "optimizer",
        "state B/param (unsharded)",
        "optimizer states (per device)",
        "model states (per device)",
        "peak (per device)",
        "fits",
    )
    table = [header]
    for row in rows:
        fits = {True: "yes", False: "no", None: ""}[row["fits"]]
        peak = "—" if row["peak"] is None else format_bytes(row["peak"])
        table.append(
            (
                row["family"],
                row["optimizer"],
                f"{row['state_bytes_per_param']:.2f}",
                format_bytes(row["optimizer_states"]),
                format_bytes(row["model_states"]),
                peak,
                fits,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    previous_family = None
    for i, r in enumerate(table):
        if i > 0 and r[0] != previous_family:
            lines.append("")
        previous_family = r[0] if i > 0 else None
        family = r[0] if i == 0 or r[0] != table[i - 1][0] else ""
        cells = [f"{family:<{widths[0]}}", f"{r[1]:<{widths[1]}}"] + [f"{c:>{w}}" for c, w in zip(r[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def replay_table(out: dict[str, Any]) -> str:
    """The replay report as aligned text lines (plain records in, lines out)."""

    def size(n: int | None) -> str:
        return "-" if n is None else f"{format_bytes(n)} ({n:,} B)"

    conf = out["config"] or "(defaults)"
    profile = out.get("source") == "profile"
    lines = []
    if profile and out["as_if_cuda"]:
        lines.append(
            f"profile of a {out['device']} run replayed as if on CUDA: what the caching allocator "
            f"would reserve for the same tensors on a GPU"
        )
    lines += [
        f"device {out['device']}   PYTORCH_CUDA_ALLOC_CONF {conf}   [{out['config_source']}]",
        f"capacity               {size(out['capacity']) if out['capacity'] is not None else 'unlimited'}",
        f"events replayed        {out['events']:,}",
        f"peak allocated         {size(out['peak']['allocated'])}",
        f"peak reserved          {size(out['peak']['reserved'])}",
        f"reserved at the peak   {size(out['at_peak']['reserved'])}",
        f"inactive split at peak {size(out['inactive_split'])}",
        f"fragmentation at peak  {out['fragmentation']:.1%}   (1 - allocated/reserved)",
        f"alloc retries          {out['num_alloc_retries']}",
    ]
    oom = out["oom"]
    if oom:
        lines.append(
            f"OUT OF MEMORY          at event {oom['event_index']:,}: asked {size(oom['requested'])} "
            f"with {size(oom['allocated'])} allocated, {size(oom['reserved'])} reserved "
            f"(the figures above stop there)"
        )
    if profile:
        measured = out["profile"]
        lines.append(
            f"profiled peak          {size(measured['peak_allocated'])} of live tensors (unrounded)"
            + (
                f", {size(measured['measured_reserved'])} reserved as measured"
                if measured["measured_reserved"] is not None
                else ""
            )
        )
    else:
        trace = out["trace"]
        if not trace["complete"]:
            lines.append(
                f"note                   the trace starts mid-run: {trace['unmatched_frees']} frees of "
                f"earlier allocations were skipped (raise max_entries of _record_memory_history)"
            )
        agreement = out["segment_agreement"]
        if agreement["trace_events"]:
            lines.append(
                f"segment events         {agreement['matching']} of {agreement['trace_events']} in the "
                f"trace reproduced ({agreement['simulated_events']} simulated)"
            )
        lines.append(
            f"snapshot at dump       {size(out['snapshot']['allocated'])} allocated, "
            f"{size(out['snapshot']['reserved'])} reserved"
        )
    whatif = out.get("what_if")
    if whatif:
        lines.append("")
        lines.append(f"{'what if':<52} {'peak reserved':>14} {'frag':>6} {'retries':>7} {'oom':>4}")
        for row in [whatif["baseline"], *whatif["candidates"]]:
            label = row["change"] or "current settings"
            lines.append(
                f"{label:<52} {format_bytes(row['peak_reserved']):>14} {row['fragmentation']:>6.1%} "
                f"{row['num_alloc_retries']:>7} {'yes' if row['oom'] else 'no':>4}"
            )
        lines.append(whatif["recommendation"])
    return "\n".join(lines)


def published_table(record: dict[str, Any]) -> str:
    """`memprof validate --published`: each scored row against its source, then the summary."""
    lines = []
    for row in record["rows"]:
        if row["predicted"] is None and not row["oom_measured"]:
            continue
        if row["oom_measured"]:
            verdict = {True: "agrees", False: "DISAGREES", None: "inconclusive"}[row["oom_agrees"]]
            fits = {True: "fits", False: "does not fit", None: "-"}[row["predicted_fits"]]
            if row["predicted_fits"] is None and row["reason"]:
                continue
            lines.append(f"{row['id']:<44} OOM measured; predicted {fits}: {verdict}")
        else:
            lines.append(
                f"{row['id']:<44} {row['metric']:<22} measured {_bytes(row['measured']):>10}  "
                f"predicted {_bytes(row['predicted']):>10}  {row['error_pct']:+.1f}%"
            )
    total = record["summary"]["total"]
    median, worst = total["median_abs_error_pct"], total["max_abs_error_pct"]
    lines += [
        "",
        f"{total['rows']} published measurements; {total['scored']} expressible, {total['compared']} compared"
        + ("" if median is None else f": median abs. error {median}%, max {worst}%")
        + f"; OOM reports predicted as not fitting: {total['oom_agree']} of {total['oom_scored']} scored",
    ]
    reasons = record["summary"]["not_expressible_reasons"]
    if reasons:
        lines.append("not expressible: " + ", ".join(f"{why or 'other'} ({n})" for why, n in reasons.items()))
    return "\n".join(lines)
