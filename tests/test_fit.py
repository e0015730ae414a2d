"""`memprof fit`: the boundary it finds is the estimator's own, and every knob row is a real estimate."""

from __future__ import annotations

import json

import pytest

from memprof.cli import main
from memprof.estimators.estimation import estimate
from memprof.estimators.fit import fit, parse_headroom
from memprof.estimators.gpus import get_gpu


def _budget(gpu: str, share: float = 0.05) -> int:
    spec = get_gpu(gpu)
    usable = spec.torch_total_memory or spec.memory_bytes
    return usable - int(usable * share)


def test_largest_batch_is_the_boundary_of_the_estimate():
    result = fit("gpt2-1.5b", "a100-80gb")
    b = result.max_batch_size
    assert b is not None and b > 1
    # THEN batch b fits the 5 % headroom budget and batch b + 1 does not, by the estimator itself
    limit = _budget("a100-80gb")
    assert estimate("gpt2-1.5b", batch_size=b, gpu="a100-80gb").device_total <= limit
    assert estimate("gpt2-1.5b", batch_size=b + 1, gpu="a100-80gb").device_total > limit
    assert result.next_up.settings.batch_size == b + 1


def test_longest_sequence_is_the_boundary_of_the_estimate():
    result = fit("gpt2-355m", "t4", seq_len="auto", batch_size=4, checkpointing="full")
    s = result.max_seq_len
    limit = _budget("t4")
    assert 1 < s <= 1024
    assert estimate("gpt2-355m", batch_size=4, seq_len=s, gpu="t4", checkpointing="full").device_total <= limit
    if s < 1024:
        assert estimate("gpt2-355m", batch_size=4, seq_len=s + 1, gpu="t4", checkpointing="full").device_total > limit


def test_every_knob_row_is_an_estimate_with_that_knob():
    result = fit("gpt2-1.5b", "a100-80gb", batch_size=16)
    ref = estimate("gpt2-1.5b", batch_size=16, gpu="a100-80gb")
    assert result.reference.device_total == ref.device_total
    labels = {r.label: r for r in result.rows}
    assert {"--checkpointing full", "--precision bf16-true", "--gpus 8 --zero 3"} <= set(labels)
    row = labels["--checkpointing full"]
    with_knob = estimate("gpt2-1.5b", batch_size=16, gpu="a100-80gb", checkpointing="full")
    assert row.peak == with_knob.device_total and row.saves == ref.device_total - with_knob.device_total
    assert row.fits == (with_knob.device_total <= _budget("a100-80gb"))
    # sorted by what they save, most first
    assert [r.saves for r in result.rows] == sorted((r.saves for r in result.rows), reverse=True)


def test_cli_table_and_json(capsys):
    assert main(["fit", "gpt2-1.5b", "--gpu", "a100-80gb", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["max_batch_size"] == fit("gpt2-1.5b", "a100-80gb").max_batch_size
    assert record["budget"] == _budget("a100-80gb")
    assert main(["fit", "gpt2-1.5b", "--gpu", "a100-80gb"]) == 0
    out = capsys.readouterr().out
    assert f"largest batch size that fits at sequence 1,024: {record['max_batch_size']} " in out


def test_a_gpu_too_small_even_for_batch_1_is_one_line_with_what_would_fit(capsys):
    # 8B parameters with AdamW take 128 GB of model states: no 80 GB GPU holds them alone
    assert main(["fit", "llama-3.1-8b", "--gpu", "h100-80gb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memprof: error: llama-3.1-8b does not fit h100-80gb")
    assert "even at batch size 1" in err and "what fits: " in err and "--gpus 8 --zero 3" in err


@pytest.mark.parametrize("text, expected", [("5%", 1000), ("0%", 0), ("2KiB", 2048), (512, 512)])
def test_headroom(text, expected):
    assert parse_headroom(text, 20_000) == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "gpt2-1.5b", "--gpu", "a100-80gb", "--headroom", "150%"], "must be a percentage from 0% to 99%"),
        (["fit", "gpt2-1.5b", "--gpu", "a100-80gb", "--headroom", "lots"], "must be a percentage like 5%"),
        (["fit", "gpt2-1.5b", "--gpu", "a100-80gb", "--headroom", "100GiB"], "leaves nothing"),
        (["fit", "gpt2-1.5b", "--gpu", "a100-80gb", "--seq-len", "long"], "--seq-len must be a whole number or 'auto'"),
        (["fit", "vit-b-16", "--gpu", "a100-80gb", "--seq-len", "auto"], "fixed sequence"),
        (["fit", "gpt2-1.5b", "--gpu", "a1000"], "unknown GPU 'a1000'"),
    ],
)
def test_bad_input(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_fit_requires_a_gpu(capsys):
    assert main(["fit", "gpt2-1.5b"]) == 2
    assert "--gpu" in capsys.readouterr().err


@pytest.mark.parametrize("curve", ["convex", "concave", "step"])
def test_the_search_finds_the_exact_boundary_whatever_the_curve(curve):
    # GIVEN peaks that are not a line in the batch size (the linear guess is off), a budget of 1000
    from types import SimpleNamespace

    from memprof.estimators.fit import Budget, _Search

    peak = {
        "convex": lambda b: 100 + b * b,
        "concave": lambda b: 100 + 200 * b**0.5,
        "step": lambda b: 100 + 10 * b + (500 if b > 37 else 0),
    }[curve]

    class Curve(_Search):
        def run(self, **changes):
            self.count += 1
            return SimpleNamespace(device_total=peak(changes["batch_size"]))

    search = Curve(None, {}, Budget("test", usable=1000, headroom=0))
    best, fits_e, first_over = search.largest("batch_size", 10_000)
    # THEN it is the largest batch whose peak is within the budget, and the next one is not
    expected = max(b for b in range(1, 10_001) if peak(b) <= 1000)
    assert best == expected and fits_e.device_total == peak(expected)
    assert first_over.device_total == peak(expected + 1) > 1000
    assert search.count < 40
