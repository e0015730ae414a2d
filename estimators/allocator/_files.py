"""Reading an input file of `memprof replay` with one-line errors for the usual failures
(regular files only, at most MAX_INPUT_BYTES: memprof.estimators.files)."""

from __future__ import annotations

import os

from ..errors import MemprofUserError
from ..files import read_input


def read_bytes(path: str | os.PathLike[str], what: str, expected: str) -> tuple[str, bytes]:
    """(the path as a string, the file's bytes); `what` names the input ("snapshot"), `expected`
    what a directory is not ("a snapshot pickle")."""
    name = os.fspath(path)
    try:
        return name, read_input(name)
    except FileNotFoundError:
        raise MemprofUserError(f"{what} file not found: {name}") from None
    except IsADirectoryError:
        raise MemprofUserError(f"{name} is a directory, not {expected}") from None
    except OSError as exc:
        raise MemprofUserError(f"cannot read {what} {name}: {exc.strerror or exc}") from None
