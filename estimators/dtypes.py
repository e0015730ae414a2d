"""Element sizes of the dtypes memprof reasons about, by torch's names (without importing torch)."""

from __future__ import annotations

from .errors import unknown_name

DTYPE_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype named like torch does ("float32", or "torch.float32")."""
    name = dtype.removeprefix("torch.")
    try:
        return DTYPE_BYTES[name]
    except KeyError:
        raise unknown_name("dtype", dtype, DTYPE_BYTES) from None
