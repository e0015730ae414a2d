"""memprof's pytest plugin: memory budgets for training tests (loaded by the `pytest11` entry point).

    @pytest.mark.limit_training_memory("12 GiB", device="cuda")
    def test_one_step_fits():
        train_one_step()                      # runs under memprof.track: its peak is measured

    @pytest.mark.limit_training_memory("80 GiB", predicted=True)
    def test_the_estimate_fits(memprof_estimate):
        memprof_estimate(memprof.estimate("llama-3.1-8b", batch_size=4))   # the prediction is checked

A test whose peak exceeds the budget fails with the peak, its phase and the top categories:
"Test was limited to 12.00 GiB but its training peak was 14.20 GiB (measured, at backward; top:
activations 8.10 GiB, parameters 3.00 GiB, optimizer_states 2.00 GiB)". `pytest --memprof` profiles
every test and prints a per-test table at the end.

The measured peak is the profiler's: on a CUDA device, `max_memory_allocated`; on the CPU (and when
`device="cuda"` has no GPU here) the peak of live tensor bytes, so budgets work in CPU CI. A test that
opens its own `memprof.track` cannot be measured by the plugin too (one session at a time): use
`predicted=True` or drop the marker there. Invalid sizes fail the test with memprof's size error.
"""

from __future__ import annotations

from typing import Any

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.units import format_bytes, parse_size

__all__ = ["MARKERS", "limit_training_memory"]

_ROWS = pytest.StashKey[list]()
_ESTIMATE = pytest.StashKey[list]()
TOP = 3  # categories named in a failure


def limit_training_memory(limit: str | int, *, device: str = "cuda", predicted: bool = False) -> None:
    """limit_training_memory(limit, *, device="cuda", predicted=False): fail the test when its
    training peak exceeds `limit` ("12 GiB", "512MB", bytes). The test body runs under
    memprof.track on `device` (the CPU's tensor bytes when there is no GPU); with predicted=True the
    estimate the test registers through the `memprof_estimate` fixture is checked instead."""


# marker name -> the function whose signature and docstring are its `pytest --markers` help
MARKERS = {"limit_training_memory": limit_training_memory}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memprof", "memprof: training-memory budgets")
    group.addoption(
        "--memprof", action="store_true", default=False, help="profile every test and print a per-test memory table"
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, fn in MARKERS.items():
        import inspect

        config.addinivalue_line("markers", f"{name}{inspect.signature(fn)}: {(fn.__doc__ or '').split('.')[0]}")
    config.stash[_ROWS] = []


@pytest.fixture
def memprof_estimate(request: pytest.FixtureRequest) -> Any:
    """Register the estimate (a memprof Estimate, EstimateRecord or its dict) a
    `limit_training_memory(..., predicted=True)` test checks against its budget."""
    registered: list[Any] = []
    request.node.stash[_ESTIMATE] = registered
    return registered.append


def _marker_options(item: pytest.Item) -> dict[str, Any] | None:
    marker = item.get_closest_marker("limit_training_memory")
    if marker is None:
        return None
    try:
        return {
            **_bind(*marker.args, **marker.kwargs),
            "limit_text": marker.args[0] if marker.args else marker.kwargs.get("limit"),
        }
    except TypeError as exc:
        raise pytest.UsageError(f"limit_training_memory{marker.args}: {exc}") from None


def _bind(limit: Any, *, device: str = "cuda", predicted: bool = False) -> dict[str, Any]:
    return {"limit": limit, "device": device, "predicted": predicted}


def _top(by_category: Any) -> str:
    cats = [(k, v) for k, v in dict(by_category or {}).items() if isinstance(v, int) and v > 0]
    cats.sort(key=lambda kv: -kv[1])
    return ", ".join(f"{k} {format_bytes(v)}" for k, v in cats[:TOP]) or "no category"


def _from_estimate(item: pytest.Item) -> tuple[int | None, str | None, Any]:
    from memprof.comparison.frame import as_estimate_record

    registered = item.stash.get(_ESTIMATE, [])
    if not registered:
        pytest.fail(
            "limit_training_memory(predicted=True) needs an estimate: call the memprof_estimate fixture "
            "with memprof.estimate(...)",
            pytrace=False,
        )
    rec = as_estimate_record(registered[-1])
    peak = rec.peak
    value = peak.device_total if peak.device_total is not None else peak.allocated
    return value, peak.phase, peak.by_category


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    options = _marker_options(item)
    table = item.config.getoption("memprof", False)
    if options is None and not table:
        return (yield)
    limit = None
    if options is not None:
        problem = None
        try:
            limit = parse_size(options["limit"])
        except MemprofUserError as exc:
            problem = str(exc)
        if problem is not None:
            pytest.fail(f"limit_training_memory: {problem}", pytrace=False)
    source = "predicted" if options is not None and options["predicted"] else "measured"
    session = None
    if source == "measured":
        from memprof.profiler.api import track

        session = track(device=options["device"] if options else None, events=False)
        session.__enter__()
    try:
        result = yield  # raises when the test body raised: nothing to check then
    finally:
        if session is not None:
            session.__exit__(None, None, None)
    if session is not None:
        rec = session.profile.record
        peak, phase, by_cat = rec.peak.allocated, rec.peak.phase, rec.peak.by_category
        where = rec.device or "cpu"
    else:
        peak, phase, by_cat = _from_estimate(item)
        where = "estimate"
    item.config.stash[_ROWS].append((item.nodeid, peak, phase, limit, source, where, _top(by_cat)))
    if limit is not None and peak is not None and peak > limit:
        pytest.fail(
            f"Test was limited to {format_bytes(limit)} but its training peak was {format_bytes(peak)} "
            f"({source} on {where}, at {phase or 'no phase'}; top: {_top(by_cat)})",
            pytrace=False,
        )
    return result


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "memprof: training memory per test")
    width = max(len(r[0]) for r in rows)
    tr.write_line(f"{'test':<{width}}  {'peak':>12}  {'phase':<15} {'limit':>12}  source")
    for nodeid, peak, phase, limit, source, where, _ in sorted(rows, key=lambda r: -(r[1] or 0)):
        tr.write_line(
            f"{nodeid:<{width}}  {format_bytes(peak) if peak is not None else '-':>12}  {phase or '-':<15} "
            f"{format_bytes(limit) if limit is not None else '-':>12}  {source} ({where})"
        )
