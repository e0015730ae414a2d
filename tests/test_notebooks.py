"""The report notebooks are stored executed, with their figures, and their outputs are current.

Notebooks are committed with their outputs (`python scripts/run_notebooks.py` executes and saves them),
so a code-hosting site shows their tables and figures. The fast test checks what is stored: every code
cell executed in order, the figures embedded as image/png, nothing on stderr (third-party warnings are
filtered where memprof imports those packages). The slow test re-executes each notebook in a fresh
kernel (nbclient, kernel python3) and compares what a reader sees as text with what is stored, like the
README's generated blocks (scripts/run_notebooks.py `stale`: timings and addresses normalized, figures
compared by presence); the notebooks' own cells assert the facts they state (16Ψ exactly, model states
exact and peaks within 3% on the CPU, the GPU verdicts), so a change that breaks a claim fails too.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUDGET_S = 60  # each notebook must stay fast enough for CI
EXPECTED = {"gpt2_1.5b_on_one_gpu.ipynb", "predicted_vs_measured.ipynb", "optimizer_under_a_budget.ipynb"}


def run_notebooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figures(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]


def test_the_three_notebooks_are_stored_executed_with_embedded_figures() -> None:
    assert {p.name for p in NOTEBOOKS} >= EXPECTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        # executed top to bottom in one kernel: run `python scripts/run_notebooks.py` after editing
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{path.name} is not executed"
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], f"{path.name} stored an error"
        # rendered by a code-hosting site: the figures are in the file, as PNG
        assert figures(nb) and all(len(o["data"]["image/png"]) > 1000 for o in figures(nb)), path.name
        # nothing on stderr: no third-party warning or log line among memprof's tables
        stderr = [o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
        assert not stderr, f"{path.name} prints on stderr: {stderr[0][:200]}"


def test_the_notebooks_speak_to_a_reader_not_about_the_repository() -> None:
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        prose = "\n".join(c.source for c in nb.cells)
        for internal in ("seed", "in the tests", "the project's"):
            assert internal not in prose, f"{path.name} mentions {internal!r}"
        # each figure is followed by a note saying how to read it
        notes = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("**Reading")]
        assert len(notes) >= len(figures(nb)) - 1, path.name


def test_staleness_ignores_timings_and_image_bytes_but_not_numbers() -> None:
    rn = run_notebooks()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="peak 7.38 MiB in 1.2 s at 0x7f00deadbeef\n"),
        nbformat.v4.new_output("display_data", data={"image/png": "AAAA", "text/plain": "<Image>"}),
    ]
    stored = nbformat.v4.new_notebook(cells=[cell])
    fresh = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    fresh.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="peak 7.38 MiB in 3.4 s at 0x7f11cafef00d\n"),
        nbformat.v4.new_output("display_data", data={"image/png": "BBBB", "text/plain": "<Image>"}),
    ]
    assert rn.stale(stored, fresh) == []
    fresh.cells[0].outputs[0]["text"] = "peak 7.39 MiB in 3.4 s\n"
    assert rn.stale(stored, fresh) and "code cell 1" in rn.stale(stored, fresh)[0]
    fresh.cells[0].outputs.pop()
    assert rn.stale(stored, fresh)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_what_the_notebook_prints_today(path: Path) -> None:
    rn = run_notebooks()
    start = time.perf_counter()
    fresh = rn.execute(path)  # raises CellExecutionError, with the failing cell, on any error
    elapsed = time.perf_counter() - start
    assert figures(fresh), f"{path.name} drew no figure"
    problems = rn.stale(nbformat.read(path, as_version=4), fresh)
    assert not problems, f"{path.name} is stale (run `python scripts/run_notebooks.py`): {problems}"
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s (budget {BUDGET_S} s)"
