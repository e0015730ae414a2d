"""What memprof raises on purpose, as one tree (docs/architecture.md, "Errors"):

    MemprofError                     anything memprof raises deliberately
    ├── MemprofUserError (ValueError)  a value the caller supplied is wrong; the message says what is valid
    │   ├── UnknownNameError           an unknown preset, optimizer, GPU, precision, dtype, ... name
    │   ├── ParameterError             one argument of a function is out of range or contradicts another
    │   └── RecordError                a file or dict is not a valid memprof record (profile, estimate, snapshot)
    └── UserCodeError                  the caller's own code (a model factory, a profiled script) raised

Library messages name the Python parameters (`batch_size must be ...`), because a notebook user calls
`memprof.estimate(batch_size=0)`. The CLI is the one place that knows flags: it catches `MemprofError`,
prints `cli_message(flag_of)` as one line and exits 2 (memprof/cli.py). A `ParameterError` keeps its
parameter names as `{name}` placeholders so the CLI can say `--batch-size` where the library says
`batch_size`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "MemprofError",
    "MemprofUserError",
    "ParameterError",
    "RecordError",
    "UnknownNameError",
    "UserCodeError",
    "unknown_name",
]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class MemprofError(Exception):
    """Base of everything memprof raises on purpose."""

    def cli_message(self, flag_of: Callable[[str], str]) -> str:
        """The message as the CLI prints it; `flag_of("batch_size")` -> "--batch-size"."""
        return str(self)


class MemprofUserError(MemprofError, ValueError):
    """A user-supplied value is wrong; the message names it and what would be valid."""


class UnknownNameError(MemprofUserError):
    """A registry name (preset, optimizer, GPU, precision, dtype, ...) that memprof does not know."""

    def __init__(self, message: str, *, kind: str, name: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.suggestions = tuple(suggestions)


class ParameterError(MemprofUserError):
    """An argument out of range, or two that contradict each other.

    `template` names the parameters as `{name}` placeholders (only those listed in `params` are
    replaced): `str(error)` reads `batch_size must be ...`, the CLI's line `--batch-size must be ...`.
    """

    def __init__(self, template: str, *params: str) -> None:
        self.template = template
        self.params = params
        super().__init__(self._render(lambda name: name))

    def _render(self, spell: Callable[[str], str]) -> str:
        names = set(self.params)
        return _PLACEHOLDER.sub(lambda m: spell(m.group(1)) if m.group(1) in names else m.group(0), self.template)

    def cli_message(self, flag_of: Callable[[str], str]) -> str:
        return self._render(flag_of)


class RecordError(MemprofUserError):
    """A file or mapping that is not a valid memprof record (or not the one expected)."""


class UserCodeError(MemprofError):
    """The caller's own code raised (a model factory, a workload, a profiled script).

    The message names where and repeats the original exception's type and message; the original is
    kept as `original` (and as `__cause__` where the traceback is useful)."""

    def __init__(self, message: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.original = original


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UnknownNameError:
    """An error for an unknown registry name, suggesting close matches or listing the valid ones."""
    names = sorted(set(valid))
    close = difflib.get_close_matches(name.lower(), [v.lower() for v in names], n=3, cutoff=0.6)
    by_lower = {v.lower(): v for v in names}
    suggestions = [by_lower[c] for c in close]
    hint = "did you mean " + ", ".join(suggestions) + "?" if suggestions else "valid: " + ", ".join(names)
    return UnknownNameError(f"unknown {kind} {name!r}; {hint}", kind=kind, name=name, suggestions=suggestions)
