"""`memprof report` of several ranks' profiles: predicted vs measured per rank, the worst marked and
drawn (memprof.comparison.ranks), in the text and the HTML page; one line without the estimate."""

from __future__ import annotations

import json

import pytest

from memprof.cli import main


@pytest.fixture(scope="module")
def rank_files(tmp_path_factory):
    """A real profile of the tiny Llama on the CPU saved as rank 0 of 2, and as rank 1 with 4,096 more
    bytes of temporaries at its peak (what a rank holding a larger shard measures), and its estimate."""
    import torch

    import memprof
    from memprof.estimators.estimation import estimate
    from memprof.tiny_models import batch, build

    folder = tmp_path_factory.mktemp("ranks")
    model, spec = build("llama", "eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with memprof.track(model, opt) as run:
        model(**batch("llama", 1, 8)).loss.backward()
        opt.step()
    run.save(str(folder / "p.json"))
    data = json.loads((folder / "p.json").read_text())
    paths = []
    for rank, extra in ((0, 0), (1, 4096)):
        d = json.loads(json.dumps(data))
        d["rank"], d["world_size"] = rank, 2
        d["peak"]["allocated"] += extra
        d["peak"]["by_category"]["temporary"] += extra
        path = folder / f"p.rank{rank}.json"
        path.write_text(json.dumps(d))
        paths.append(str(path))
    est = estimate(spec, "sgd", "32-true", batch_size=1, seq_len=8, attention="eager", device="cpu")
    (folder / "est.json").write_text(json.dumps(est.to_dict()))
    return paths, str(folder / "est.json"), data["peak"]["allocated"], est.record.peak.allocated


def test_the_text_report_has_a_row_per_rank_and_marks_the_worst(capsys, rank_files):
    paths, est, measured, predicted = rank_files
    assert main(["report", *paths, "--estimate", est]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out[1:3]]
    assert [r[0] for r in rows] == ["0", "1"]
    for row, meas in zip(rows, (measured, measured + 4096)):
        assert row[5] == f"{100.0 * (predicted - meas) / meas:+.2f}%"
    assert not out[1].endswith("<- worst") and out[2].endswith("<- worst")  # the larger measured peak
    assert out[3] == "worst rank: 1 of 2"
    assert "rank 1 (the worst):" in out


def test_the_html_page_has_the_rank_table_and_draws_the_worst(capsys, rank_files, tmp_path):
    paths, est, _measured, _predicted = rank_files
    page = tmp_path / "r.html"
    assert main(["report", *paths, "--estimate", est, "--out", str(page)]) == 0
    assert capsys.readouterr().out == f"wrote {page} (rank 1, the worst, drawn)\n"
    html = page.read_text()
    assert "Rank by rank (2 of world size 2; the worst: rank 1, drawn below)" in html
    table = html[html.index("Rank by rank") : html.index("<img")]
    assert table.count("<tr>") == 3 and table.count(">worst<") == 1


def test_several_ranks_without_the_estimate_is_one_line(capsys, rank_files):
    paths, _est, _m, _p = rank_files
    assert main(["report", *paths]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("memprof: error: a report of several ranks needs the per-rank estimate") and err.count("\n") == 1
    )
