"""Render a GPU validation record (`memprof validate --device cuda --out ...`) as the README's Markdown table.

    python scripts/render_cuda_validation.py profiles/measurements/validation-cuda-a100-sxm4-80gb.json
    python scripts/render_cuda_validation.py RECORD --readme   # replace the block in README.md

The README block lies between `<!-- cuda-validation:start -->` and `<!-- cuda-validation:end -->`;
with --readme and no such block, nothing is written and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- cuda-validation:start -->", "<!-- cuda-validation:end -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md's block")
    args = parser.parse_args(argv)
    from memprof.validate_cuda import cuda_table

    table = cuda_table(json.loads(args.record.read_text(encoding="utf-8")))
    if not args.readme:
        print(table)
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    readme.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
