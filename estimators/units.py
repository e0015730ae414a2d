"""Byte sizes: parse what users type ("80GiB", "80GB", "512MiB", "1234") and format what we print.

Binary units (KiB, MiB, GiB, TiB) are powers of 1024; SI units (KB, MB, GB, TB) are powers of 1000,
as their names say. Units are matched case-insensitively and may follow a space; a plain integer
is a number of bytes. Output always uses binary units, like PyTorch's own OOM messages.
"""

from __future__ import annotations

import re

from .errors import MemprofUserError

_UNITS: dict[str, int] = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_VALID = "B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)"
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
MAX_SIZE = 1 << 64  # 16 EiB: more than any memory; bigger numbers are typos (and overflow downstream)
_TOO_BIG = "sizes above 2**64 bytes (16 EiB) are not memory sizes"


def parse_size(text: str | int) -> int:
    """Bytes in `text`: "80GiB" -> 85899345920, "80GB" -> 80000000000, "4096" -> 4096.

    Fractions are allowed with a unit ("1.5GiB") and rounded down to a whole byte.
    Raises MemprofUserError naming the valid units when the text is not a size.
    """
    if isinstance(text, bool):
        raise MemprofUserError(f"invalid size {text!r}; expected a number with a unit: {_VALID}")
    if isinstance(text, int):
        if text < 0:
            raise MemprofUserError(f"invalid size {text}; a size cannot be negative")
        if text > MAX_SIZE:
            raise MemprofUserError(f"invalid size {str(text)[:20]}... ({len(str(text))} digits); {_TOO_BIG}")
        return text
    if len(str(text)) > 64:
        raise MemprofUserError(f"invalid size {str(text)[:20]!r}... ({len(str(text))} characters); {_TOO_BIG}")
    match = _PATTERN.match(str(text))
    if not match:
        raise MemprofUserError(
            f"invalid size {text!r}; expected a number with a unit, e.g. 80GiB or 512MiB; units: {_VALID}"
        )
    number: str = match.group(1)
    unit: str = match.group(2)  # "" when there is none
    factor = _UNITS.get(unit.lower() if unit else "b")
    if factor is None:
        raise MemprofUserError(f"unknown size unit {unit!r} in {text!r}; valid units: {_VALID}")
    if "." in number:
        if not unit:
            raise MemprofUserError(f"invalid size {text!r}; a size without a unit is a whole number of bytes")
        # exact decimal arithmetic: "1.1GB" must be 1100000000, not a float approximation
        whole, _, frac = number.partition(".")
        scale: int = 10 ** len(frac)
        size = (int(whole or "0") * scale + int(frac or "0")) * factor // scale
    else:
        size = int(number) * factor
    if size > MAX_SIZE:
        raise MemprofUserError(f"invalid size {text!r}; {_TOO_BIG}")
    return size


def format_bytes(n: int) -> str:
    """Human-readable binary size with two decimals: 1556925644 -> "1.45 GiB", 512 -> "512 B"."""
    sign = "-" if n < 0 else ""
    value = abs(int(n))
    if value < 1024:
        return f"{sign}{value} B"
    scaled = float(value)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        scaled /= 1024.0
        if scaled < 1024 or unit == "PiB":
            return f"{sign}{scaled:.2f} {unit}"
    raise AssertionError("unreachable")
