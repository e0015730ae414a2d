"""The one error type for user mistakes.

Raised anywhere a user-supplied value (preset name, optimizer, precision, size, file) is wrong.
The CLI turns it into one line on stderr and exit code 2; the Python API lets it propagate.
Its message must say what is wrong and what is valid.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class MemprofUserError(ValueError):
    """A user-supplied value is wrong; the message names it and what would be valid."""

    exit_code = 2


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> MemprofUserError:
    """An error for an unknown registry name, suggesting close matches or listing the valid ones."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name.lower(), [v.lower() for v in valid], n=3, cutoff=0.6)
    by_lower = {v.lower(): v for v in valid}
    if close:
        hint = "did you mean " + ", ".join(by_lower[c] for c in close) + "?"
    else:
        hint = "valid: " + ", ".join(valid)
    return MemprofUserError(f"unknown {kind} {name!r}; {hint}")
