"""`memprof validate --published`: the published GPU measurements scored from the command line."""

import json

from memprof.cli import main
from memprof.published import score_published


def test_the_cli_scores_what_the_library_scores(capsys, tmp_path):
    out = tmp_path / "published.json"
    assert main(["validate", "--published", "--format", "json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) == json.loads(json.dumps(score_published().to_dict()))
    assert printed["schema"] == "memprof.published/1" and printed["summary"]["total"]["rows"] >= 60


def test_the_table_ends_with_the_summary_and_only_selects_a_source(capsys):
    assert main(["validate", "--published", "--only", "hf-perf-train-gpu-one"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("hf-perf") for line in lines[: lines.index("")])
    assert lines[lines.index("") + 1].startswith("9 published measurements; 9 expressible, 9 compared")


def test_training_options_do_not_mix_with_published(capsys):
    assert main(["validate", "--published", "--quick"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "memprof: error: --quick selects training cases; drop it with --published"
    ]
