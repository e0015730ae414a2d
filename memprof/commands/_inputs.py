"""The estimate file `memprof compare --estimate` and `memprof report --estimate` read, checked once.

Read through memprof.estimators.files (a regular file of bounded size, JSON of bounded depth), then
refused with one line if it is a profile or anything else that is not `memprof estimate --format
json`'s output.
"""

from __future__ import annotations

import json
from typing import Any

from memprof.estimators.errors import MemprofUserError, RecordError

_HINT = "write one with `memprof estimate MODEL --format json`"


def load_estimate(path: str) -> dict[str, Any]:
    """The estimate JSON at `path` as a dict; MemprofUserError (one line) for anything else."""
    from memprof.comparison import as_estimate_record
    from memprof.estimators.files import loads_json, read_input

    try:
        record = loads_json(read_input(path))
    except FileNotFoundError:
        raise MemprofUserError(f"estimate file {path!r} does not exist") from None
    except IsADirectoryError:
        raise MemprofUserError(f"{path!r} is a directory, not a memprof estimate") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MemprofUserError(f"{path!r} is not a memprof estimate (not readable JSON: {exc})") from None
    if isinstance(record, dict) and record.get("schema"):  # a profile, say: it has model_states and peak too
        what = ": that is a profile, not an estimate" if str(record["schema"]).startswith("memprof.profile") else ""
        raise MemprofUserError(
            f"{path!r} is not a memprof estimate (it is a {record['schema']!r} record){what}; {_HINT}"
        )
    try:
        as_estimate_record(record)  # the estimate record's own check of the JSON
    except (MemprofUserError, RecordError) as exc:
        raise MemprofUserError(f"{path!r} is not a memprof estimate ({exc}); {_HINT}") from None
    missing = [k for k in ("model", "parameters", "settings") if k not in record]
    if missing:
        raise MemprofUserError(f"{path!r} is not a memprof estimate (missing {', '.join(missing)}); {_HINT}")
    estimate: dict[str, Any] = record
    return estimate
