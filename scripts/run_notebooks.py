"""Execute the notebooks in notebooks/ and store them with their outputs (or check they are current).

    python scripts/run_notebooks.py            # run every notebook, write its outputs into the file
    python scripts/run_notebooks.py --check    # run into memory, exit 1 if a stored output is stale
    python scripts/run_notebooks.py NAME ...   # only these notebooks (file names or stems)

The notebooks are committed executed, so a code-hosting site shows their tables and figures (the
figures as embedded image/png outputs). Each runs top to bottom in a fresh python3 kernel from the
repository root, one CPU thread, the Agg backend, and a fixed hash seed, so reruns print the same text.

`--check` (and tests/test_notebooks.py) compares what a reader sees as text: each code cell's printed
output and text results, in order, after `normalized()` removes what legitimately changes between runs
(timings, object addresses); figures are compared by presence (one image/png where one is stored),
not by their bytes, which differ with matplotlib and font versions.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TIMEOUT_S = 300  # per cell
# what varies between two runs of the same notebook and says nothing about the result
VOLATILE = (
    (re.compile(r"0x[0-9a-f]{6,}"), "0x…"),  # object addresses in reprs
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:s|ms|µs|seconds)\b"), "<time>"),  # durations
)


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not names:
        return paths
    wanted = {Path(n).name.removesuffix(".ipynb") for n in names}  # not .stem: "gpt2_1.5b_..." has a dot
    chosen = [p for p in paths if p.name.removesuffix(".ipynb") in wanted]
    missing = wanted - {p.name.removesuffix(".ipynb") for p in chosen}
    if missing:
        raise SystemExit(f"no notebook named {', '.join(sorted(missing))} in {NOTEBOOKS}")
    return chosen


def execute(path: Path) -> Any:
    """The notebook at `path`, executed in a fresh kernel (nbformat NotebookNode)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "PYTHONWARNINGS": "default"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return _without_volatile_metadata(nb)


def _without_volatile_metadata(nb: Any) -> Any:
    """Drop what changes on every run without changing what a reader sees (execution timestamps)."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def normalized(text: str) -> str:
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def visible_outputs(nb: Any) -> list[list[str]]:
    """What a reader sees of each code cell, as comparable text: printed and text outputs, a marker
    per figure, and any error."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        seen = []
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                seen.append(f"{out['name']}: {normalized(out['text'])}")
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if "image/png" in data:
                    seen.append("<figure image/png>")
                elif "text/plain" in data:
                    seen.append(normalized(data["text/plain"]))
            elif kind == "error":
                seen.append(f"error: {out.get('ename')}: {out.get('evalue')}")
        cells.append(seen)
    return cells


def stale(stored: Any, fresh: Any) -> list[str]:
    """Differences between the stored notebook's outputs and a fresh run's, one line each."""
    before, after = visible_outputs(stored), visible_outputs(fresh)
    if len(before) != len(after):
        return [f"{len(before)} code cells stored, {len(after)} run"]
    problems = []
    for i, (old, new) in enumerate(zip(before, after), start=1):
        if old != new:
            first = next((f"{o!r:.120} -> {n!r:.120}" for o, n in zip(old, new) if o != n), "outputs added or removed")
            problems.append(f"code cell {i}: {first}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a stored notebook's outputs are stale")
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    args = parser.parse_args(argv)
    import nbformat

    failed = False
    for path in notebook_paths(args.names):
        start = time.perf_counter()
        fresh = execute(path)
        took = time.perf_counter() - start
        if args.check:
            problems = stale(nbformat.read(path, as_version=4), fresh)
            for line in problems:
                print(f"{path.name}: {line}", file=sys.stderr)
            failed |= bool(problems)
            print(f"{path.name}: {'stale' if problems else 'current'} ({took:.0f} s)")
        else:
            nbformat.validate(fresh)
            nbformat.write(fresh, path)
            print(f"{path.name}: executed and saved ({took:.0f} s)")
    if failed:
        print("run `python scripts/run_notebooks.py` and commit the notebooks", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
