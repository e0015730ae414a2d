"""Lay out this checkout's packages under their installed names, as a tree of symlinks.

setup.cfg's `package_dir` installs `estimators/` as `memprof.estimators` and `profiles/` as
`memprof.profiles`. The editable install resolves that with an import hook, which static tools cannot
follow: mypy and import-linter (grimp) look for `memprof/estimators/` on disk and find nothing. This
builds DEST/memprof/ with one symlink per entry of `memprof/` plus one per `package_dir` mapping, so
those tools see every module under the name it is imported by.

    python .ci/package_tree.py DEST              # DEST is emptied first; it only ever holds symlinks
    TOOL | python .ci/package_tree.py --paths DEST   # DEST/memprof/estimators/x.py: -> estimators/x.py:
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def package_dirs(setup_cfg: Path) -> dict[str, Path]:
    """`package_dir` of setup.cfg: dotted package name -> its source directory (absolute)."""
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    mapping: dict[str, Path] = {}
    for line in config.get("options", "package_dir", fallback="").splitlines():
        if line.strip():
            name, _, directory = line.partition("=")
            mapping[name.strip()] = REPO / directory.strip()
    return mapping


def build(dest: Path) -> None:
    mapped = package_dirs(REPO / "setup.cfg")
    if "" in mapped:
        raise SystemExit("package_tree: a root package_dir ('= src') is not supported")
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)  # symlinks inside are removed, never followed
    roots = sorted({name.split(".")[0] for name in mapped})
    for root in roots:
        (dest / root).mkdir(parents=True)
        for entry in sorted((REPO / root).iterdir()):
            if entry.name != "__pycache__" and f"{root}.{entry.name}" not in mapped:
                (dest / root / entry.name).symlink_to(entry)
    for name, source in sorted(mapped.items()):
        link = dest.joinpath(*name.split("."))
        if not link.parent.is_dir():
            raise SystemExit(f"package_tree: {name}: its parent package is not laid out")
        link.symlink_to(source, target_is_directory=True)


def checkout_paths(dest: Path, lines: Iterable[str]) -> Iterator[str]:
    """Each line with a leading path inside DEST given as the checkout's own file it links to."""
    prefix = os.path.relpath(dest)
    pattern = re.compile(rf"^({re.escape(prefix)}/[^:\s]+)")

    def real(match: re.Match[str]) -> str:
        target = Path(match.group(1)).resolve()
        return str(target.relative_to(REPO)) if target.is_relative_to(REPO) else match.group(1)

    for line in lines:
        yield pattern.sub(real, line)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--paths":
        sys.stdout.writelines(checkout_paths(Path(args[1]).resolve(), sys.stdin))
    elif len(args) == 1 and not args[0].startswith("-"):
        build(Path(args[0]).resolve())
    else:
        raise SystemExit(__doc__)
