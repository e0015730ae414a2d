"""Issue 14: estimate figures that mean what they say — the largest temporaries at the peak are
named, the activations line explains itself, CSV carries what a spreadsheet needs, `memprof
optimizers` states its assumptions, offloaded host memory is per GPU and per node, and `fit
--seq-len auto` says what bounds it."""

from __future__ import annotations

import csv
import io
import json

import memprof
from memprof.cli import main
from memprof.estimators.units import format_bytes
from memprof.render import estimate_csv, estimate_table, fit_table

GiB = 2**30


def test_the_largest_temporary_at_the_peak_is_named() -> None:
    # GIVEN llama-3.1-8b at 131,072 tokens: the loss's fp32 gradients w.r.t. the logits dominate
    record = memprof.estimate("llama-3.1-8b", seq_len=131_072, gpu="h100-80gb").record
    logits_fp32 = 131_072 * 128_256 * 4
    # THEN the record names them, at the peak, and the table shows them
    at_peak = dict(record.temporary_at_peak)
    name, size = next(iter(at_peak.items()))
    assert "logits" in name and size == logits_fp32
    assert sum(at_peak.values()) >= 2 * logits_fp32  # two of them: 125 GiB
    assert record.temporary_breakdown[name] == logits_fp32
    assert f"{name} {format_bytes(logits_fp32)}" in estimate_table(record)
    # and the JSON round-trips
    again = memprof.EstimateRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again.temporary_at_peak == record.temporary_at_peak


def test_the_activations_line_explains_the_difference_from_what_was_saved() -> None:
    record = memprof.estimate("llama-3.1-8b", seq_len=131_072).record
    at_peak, saved = record.peak.by_category["activations"], record.activations_saved
    assert at_peak is not None and saved is not None and at_peak > saved
    line = next(x for x in estimate_table(record).splitlines() if x.strip().startswith("activations"))
    assert f"{format_bytes(saved)} saved for backward at forward end" in line
    assert f"+ {format_bytes(at_peak - saved)} the loop holds" in line
    # a peak in the step, after backward freed most of them, says so
    record = memprof.estimate("gpt2-1.5b").record
    at_peak, saved = record.peak.by_category["activations"], record.activations_saved
    assert at_peak is not None and saved is not None and at_peak < saved
    line = next(x for x in estimate_table(record).splitlines() if x.strip().startswith("activations"))
    assert f"backward has freed {format_bytes(saved - at_peak)} by the peak" in line


def test_csv_has_the_totals_phase_settings_and_verdict_on_every_row() -> None:
    record = memprof.estimate("gpt2-1.5b", gpu="a100-80gb").record
    rows = list(csv.DictReader(io.StringIO(estimate_csv(record))))
    assert [r["category"] for r in rows][:3] == ["parameters", "gradients", "optimizer_states"]
    for row in rows:
        assert row["peak_phase"] == record.peak.phase
        assert int(row["peak_allocated"]) == record.peak.allocated
        assert int(row["peak_reserved"]) == record.peak.reserved
        assert int(row["device_total"]) == record.peak.device_total
        assert row["optimizer"] == "adamw" and row["precision"] == "bf16-mixed"
        assert int(row["batch_size"]) == 1 and int(row["seq_len"]) == 1024 and row["zero"] == "0"
        assert row["gpu"] == "a100-80gb" and row["fits"] == "yes"


def test_optimizers_states_its_assumptions_and_labels_per_device_columns(capsys) -> None:
    assert main(["optimizers", "gpt2-124m", "--zero", "2", "--gpus", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "gpt2-124m · bf16-mixed · batch 1 × seq 1024 · none checkpointing · 4 GPUs · ZeRO 2"
    header = next(x for x in out if x.startswith("family"))
    assert "state B/param (unsharded)" in header and "optimizer states (per device)" in header
    assert "peak (per device)" in header


def test_offloaded_host_memory_is_per_gpu_and_per_node() -> None:
    record = memprof.estimate("llama-3.1-8b", gpus=16, zero=3, offload="optimizer").record
    assert record.cpu_offload
    line = next(x for x in estimate_table(record).splitlines() if x.startswith("CPU RAM"))
    assert f"{format_bytes(record.cpu_offload)} per GPU" in line
    assert f"{format_bytes(8 * record.cpu_offload)} per node of 8 GPUs" in line


def test_fit_seq_len_auto_says_when_positions_not_memory_bound_it() -> None:
    # gpt2's 1,024 learned positions end long before an A100's memory does
    result = memprof.fit("gpt2-124m", "a100-80gb", seq_len="auto").to_dict()
    assert result["seq_len_limited_by"] == "positions" and result["max_seq_len"] == 1024
    assert "limited by the model's 1,024 positions" in fit_table(result)


def test_fit_seq_len_auto_rounds_a_memory_bound_answer() -> None:
    result = memprof.fit("qwen2.5-0.5b", "a10", seq_len="auto").to_dict()
    assert result["seq_len_limited_by"] == "memory"
    assert result["max_seq_len"] % 64 == 0
    assert result["max_seq_len"] <= result["max_seq_len_exact"] < result["max_seq_len"] + 64
    assert result["best"]["seq_len"] == result["max_seq_len"]
    if result["max_seq_len_exact"] != result["max_seq_len"]:
        assert f"rounded down to a multiple of 64 from {result['max_seq_len_exact']:,}" in fit_table(result)
