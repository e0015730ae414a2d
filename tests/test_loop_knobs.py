"""The training loop's own choices as knobs: `--keep-output/--no-keep-output` and `--zero-grad
set-to-none|zeros` (estimators/timeline.py), measured on real CPU runs, read back by the profiler
(settings.output_kept / settings.zero_grad) and used by the comparison, in the records and on the CLI."""

from __future__ import annotations

import json

import pytest

from memprof.cli import main
from memprof.estimators.errors import ParameterError, RecordError
from memprof.estimators.estimation import estimate
from memprof.estimators.records import EstimateRecord, ProfileRecord

LOOPS = [(True, "set-to-none"), (False, "set-to-none"), (True, "zeros"), (False, "zeros")]


# -- real runs ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize(("keep", "zero_grad"), LOOPS)
def test_each_loop_is_predicted_on_a_real_cpu_run_and_the_profiler_reads_it(family, keep, zero_grad):
    pytest.importorskip("transformers")
    from memprof.validate import Case, run_case

    # GIVEN a tiny model trained for real with the loop (`out = model(**batch)` or `loss =
    # model(**batch).loss`; zero_grad(set_to_none=True) or (False)), in fp32, where every tensor is replayed
    result = run_case(Case(family, keep_output=keep, zero_grad=zero_grad))
    # THEN model states are exact and the peak is the measured one within a few bytes (scalars)
    assert result["status"] == "pass", result
    assert abs(result["rows"]["peak.allocated"]["error_pct"]) < 0.01, result["rows"]["peak.allocated"]
    # AND the profiler saw which loop ran: the comparison of the profile alone predicts with it
    assert result["inferred_mismatch"] == {}, result["inferred_mismatch"]


def test_the_knobs_move_the_peak_the_way_the_loop_does():
    kw = dict(device="cpu", batch_size=2, seq_len=256, precision="32-true")
    keep = estimate("gpt2-124m", **kw).record
    drop = estimate("gpt2-124m", keep_output=False, **kw).record
    zeros = estimate("gpt2-124m", zero_grad="zeros", **kw).record
    logits = 2 * 256 * 50257 * 4
    # use_cache: each layer's key copy (sdpa's math path, dropout on, saves a scaled copy of the keys
    # instead; the value copy it saves itself, so that one stays)
    cache = 12 * (2 * 256 * 768 * 4)
    # the logits and the unsaved cache copies are gone from backward when only the loss is kept
    assert keep.peak.allocated - drop.peak.allocated == logits + cache
    # zeroed gradients are resident from the first forward moment on
    first = zeros.timeline[0].by_category
    assert first["gradients"] == zeros.model_states.gradients
    assert keep.timeline[0].by_category["gradients"] == 0
    assert zeros.peak.allocated > keep.peak.allocated
    # with accumulation the second micro-batch already holds gradients: zeros changes only micro-batch 1
    ga = estimate("gpt2-124m", grad_accumulation=2, **kw).record
    ga_zeros = estimate("gpt2-124m", grad_accumulation=2, zero_grad="zeros", **kw).record
    assert ga.peak.allocated == ga_zeros.peak.allocated


def test_bad_values_name_the_knob():
    with pytest.raises(ParameterError, match="invalid zero_grad 'none'; valid: set-to-none, zeros"):
        estimate("gpt2-124m", zero_grad="none")
    with pytest.raises(ParameterError, match="keep_output must be true or false"):
        estimate("gpt2-124m", keep_output="no")


# -- the profiler and the comparison --------------------------------------------------------------------


@pytest.mark.slow
def test_the_profiler_records_the_loop_and_the_comparison_follows_it():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import memprof
    from memprof.comparison import compare_observed
    from memprof.comparison.observed import observe
    from memprof.tiny_models import batch, build

    model, _ = build("gpt2", "eager")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(inputs):
        loss = model(**inputs).loss  # the output dies here
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # the gradients stay, zeroed

    step(batch("gpt2", 2, 32))
    with memprof.track(model, opt, events=False) as run:
        step(batch("gpt2", 2, 32))
    settings = run.record.settings.values
    assert settings["output_kept"] is False and settings["zero_grad"] == "zeros"
    obs = observe(run.record)
    assert obs.estimate_kwargs()["keep_output"] is False and obs.estimate_kwargs()["zero_grad"] == "zeros"
    frame = compare_observed(run.record)
    assert any("--no-keep-output" in n for n in frame.attrs["notes"])
    assert any("--zero-grad zeros" in n for n in frame.attrs["notes"])
    peak = frame.loc[("peak", "allocated")]
    assert abs(peak["error_pct"]) < 0.01, peak
    from memprof.comparison import format_comparison

    assert "note: the run kept only the loss" in format_comparison(frame)
    # the record keeps them through JSON
    again = ProfileRecord.from_dict(json.loads(json.dumps(run.record.to_dict())))
    assert again.settings.values["output_kept"] is False


def test_a_profile_with_a_malformed_loop_setting_is_refused():
    from memprof.estimators.records.profile import ProfileSettings

    with pytest.raises(RecordError, match="output_kept"):
        ProfileSettings.from_dict({"output_kept": "yes"})
    with pytest.raises(RecordError, match="zero_grad"):
        ProfileSettings.from_dict({"zero_grad": 0})


# -- records and the CLI --------------------------------------------------------------------------------


def test_the_estimate_json_carries_the_loop_and_the_head_and_round_trips():
    record = estimate("gpt2-124m", device="cpu", keep_output=False, zero_grad="zeros", seq_len=64).record
    data = record.to_dict()
    assert data["settings"]["keep_output"] is False
    assert data["settings"]["zero_grad"] == "zeros"
    assert data["settings"]["head"] == "causal-lm"
    assert EstimateRecord.from_dict(data).to_dict() == data
    # a file written before the keys existed was an estimate of today's default loop
    for key in ("keep_output", "zero_grad", "head"):
        del data["settings"][key]
    old = EstimateRecord.from_dict(data).settings
    assert old.keep_output is True and old.zero_grad == "set-to-none" and old.head is None


def test_cli_flags(capsys):
    assert main(["estimate", "gpt2-124m", "--no-keep-output", "--zero-grad", "zeros", "--format", "json"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["keep_output"] is False and settings["zero_grad"] == "zeros"
    assert main(["estimate", "bert-base", "--head", "seq-cls", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["head"] == "seq-cls"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["estimate", "gpt2-124m", "--zero-grad", "never"], "Invalid value for '--zero-grad'"),
        (["estimate", "opt-350m", "--head", "token-cls"], "--head 'token-cls' is not modelled for opt; its heads:"),
        (["estimate", "gpt2-124m", "--trace", "--head", "seq-cls"], "--head picks a head for a preset"),
    ],
)
def test_bad_flags_are_one_line_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_fit_takes_the_knobs(capsys):
    assert main(["fit", "gpt2-124m", "--gpu", "rtx-4090", "--no-keep-output", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["keep_output"] is False
    kept = json.loads(_fit_json(capsys))
    assert data["max_batch_size"] >= kept["max_batch_size"]
    # and the knob table offers dropping the output where the loop keeps it
    knob = next(k for k in kept["knobs"] if k["knob"] == "--no-keep-output")
    assert knob["changes"] == {"keep_output": False} and knob["saves"] > 0
    assert all(k["knob"] != "--no-keep-output" for k in data["knobs"])


def _fit_json(capsys) -> str:
    assert main(["fit", "gpt2-124m", "--gpu", "rtx-4090", "--format", "json"]) == 0
    return capsys.readouterr().out
