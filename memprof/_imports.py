"""Importing the third-party packages memprof drives (optimizer libraries, transformers) quietly.

Some print warnings or log lines when imported (bitsandbytes logs that an optional CPU kernel package
is missing; tqdm warns about ipywidgets in a notebook): news about their installation, not about the
user's memory. memprof imports them through `import_quietly`, so those lines never land among
memprof's tables or in the notebooks' outputs. Errors still raise.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from types import ModuleType


def import_quietly(name: str) -> ModuleType:
    """`importlib.import_module(name)` with the package's import-time warnings and log lines
    (below ERROR) silenced; the package's logging level is restored afterwards."""
    logger = logging.getLogger(name.split(".")[0])
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    finally:
        logger.setLevel(level)
