"""Reading the files users hand memprof (config.json, profiles, estimates, snapshots), safely.

Every input file is checked before it is read: it must be a regular file (not a directory, a device
such as /dev/zero, a named pipe or a socket, which would exhaust memory or block forever) and at
most `MAX_INPUT_BYTES`. JSON is parsed with a bounded nesting depth (`MAX_JSON_DEPTH`), so a
maliciously or accidentally deep document is one error, not a RecursionError somewhere later.
The limits are documented in docs/architecture.md ("Input files").

Missing files, directories and unreadable files raise the usual `OSError` subclasses
(FileNotFoundError, IsADirectoryError, PermissionError) so that each caller words them for its
input; what is new here raises MemprofUserError.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Any

from .errors import MemprofUserError

__all__ = ["MAX_INPUT_BYTES", "MAX_JSON_DEPTH", "JSONDepthError", "check_input", "loads_json", "read_input"]

# 1 GiB: a profile saved with a million allocation events is ~40 MB, a CUDA snapshot with stack
# frames a few hundred MB; a file beyond this is not one of memprof's inputs, and reading it whole
# would cost several times its size in memory.
MAX_INPUT_BYTES = 1 << 30

# memprof's own JSON nests 5 deep; a Hugging Face config.json rarely more than 4. 100 is far above
# any real input and far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 100  # checked on the text before parsing (~0.03 s per MB)

_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _too_big(name: str) -> str:
    return f"{name} is larger than {MAX_INPUT_BYTES >> 30} GiB, the most memprof reads from one input file"


def check_input(path: str | os.PathLike[str]) -> None:
    """Raise unless `path` is a regular file of at most MAX_INPUT_BYTES (see `read_input`); opens nothing."""
    name = os.fspath(path)
    info = os.stat(name)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    if not stat.S_ISREG(info.st_mode):
        kind = next((text for test, text in _KINDS if test(info.st_mode)), "a special file")
        raise MemprofUserError(f"{name} is {kind}, not a file; memprof reads regular files only")
    if info.st_size > MAX_INPUT_BYTES:
        raise MemprofUserError(_too_big(name))


def read_input(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file at `path` (at most MAX_INPUT_BYTES).

    Raises FileNotFoundError / IsADirectoryError / PermissionError (OSError) as open() would, and
    MemprofUserError for a file that is not regular or is too large. Nothing is opened before the
    file is known to be regular, so a named pipe never blocks.
    """
    name = os.fspath(path)
    check_input(name)
    with open(name, "rb") as handle:
        data = handle.read(MAX_INPUT_BYTES + 1)  # the file may have grown since stat()
    if len(data) > MAX_INPUT_BYTES:
        raise MemprofUserError(_too_big(name))
    return data


class JSONDepthError(json.JSONDecodeError):
    """JSON nested deeper than MAX_JSON_DEPTH (a JSONDecodeError, so callers' handlers word it)."""

    def __str__(self) -> str:
        return self.msg  # the position (the first character) says nothing here


def loads_json(text: str | bytes) -> Any:
    """json.loads with the nesting depth bounded by MAX_JSON_DEPTH (JSONDepthError beyond it)."""
    doc = text if isinstance(text, str) else text.decode("utf-8-sig")
    # measured on the text, before parsing: the parser's own recursion at the interpreter's limit can
    # fail in ways that print to stderr (a finalizer running out of stack), not only raise
    message = f"nested deeper than {MAX_JSON_DEPTH} levels, more than memprof reads"
    if _too_deep(doc, MAX_JSON_DEPTH):
        raise JSONDepthError(message, doc, 0)
    try:
        return json.loads(doc)
    except RecursionError:  # not expected after the check above; still one line, not a traceback
        raise JSONDepthError(message, doc, 0) from None


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')  # brackets inside strings do not nest
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_AS_PARENS = str.maketrans("[]{}", "()()")


def _too_deep(doc: str, limit: int) -> bool:
    """Whether arrays and objects in `doc` nest deeper than `limit` (at C speed: no parsing).

    The brackets outside strings, as parentheses, lose their innermost pairs on each pass of
    `replace("()", "")`: after `limit` passes, a pair left means deeper nesting (so does a run of
    `limit + 1` openings, for text that never closes them)."""
    if doc.count("[") + doc.count("{") <= limit:
        return False  # too few brackets to nest that deep (most configs)
    nesting = _NOT_BRACKETS.sub("", _STRINGS.sub("", doc)).translate(_AS_PARENS)
    for _ in range(limit):
        if not nesting:
            return False
        nesting = nesting.replace("()", "")
    return "()" in nesting or "(" * (limit + 1) in nesting
