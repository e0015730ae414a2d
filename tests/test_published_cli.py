"""`memprof validate --published`: the published GPU measurements scored from the command line."""

import json

from memprof.cli import main
from memprof.published import score_published


def test_the_cli_scores_what_the_library_scores(capsys, tmp_path):
    # one source (the whole set is scored by tests/test_published.py; litgpt's LoRA rows replay up to 128
    # micro-batches each, so scoring everything twice more here would cost minutes)
    out = tmp_path / "published.json"
    argv = ["validate", "--published", "--only", "llama-7b-oom-issues", "--format", "json", "--out", str(out)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    library = score_published(only="llama-7b-oom-issues").to_dict()
    assert printed == json.loads(out.read_text()) == json.loads(json.dumps(library))
    assert printed["schema"] == "memprof.published/1" and printed["summary"]["total"]["rows"] == 3


def test_the_table_ends_with_the_summary_and_only_selects_a_source(capsys):
    assert main(["validate", "--published", "--only", "hf-perf-train-gpu-one"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("hf-perf") for line in lines[: lines.index("")])
    assert lines[lines.index("") + 1].startswith("9 published measurements; 9 expressible, 9 compared")


def test_lora_rows_not_expressible_are_listed_with_their_reason(capsys):
    # llama-cookbook PR #41: LoRA under FSDP on 4 GPUs, which memprof refuses: nothing is estimated
    assert main(["validate", "--published", "--only", "llama-cookbook-fsdp-prs", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    reasons = {r["id"]: r["reason_category"] for r in data["rows"]}
    assert data["summary"]["total"]["scored"] == 0
    assert {k for k, v in reasons.items() if v == "LoRA with sharding not modelled"} == {
        f"cookbook-41-{run}-{metric}"
        for run in ("limit-all-gathers-false", "limit-all-gathers-true", "final")
        for metric in ("active", "reserved")
    }


def test_training_options_do_not_mix_with_published(capsys):
    assert main(["validate", "--published", "--quick"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "memprof: error: --quick selects training cases; drop it with --published"
    ]
