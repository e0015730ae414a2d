"""Data shipped with memprof: model presets, GPU presets, recorded measurement profiles."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(*parts: str) -> Path:
    """Path of a file shipped in this package (works from a checkout and from an installed wheel)."""
    return Path(str(resources.files(__name__).joinpath(*parts)))
