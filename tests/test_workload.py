"""memprof.Workload: what a factory hands the tracer, checked without torch."""

from __future__ import annotations

import pytest

from memprof import MemprofUserError, Workload


def test_a_mapping_with_the_same_keys_is_a_workload():
    # GIVEN a mapping, as a factory may return one
    model, inputs = object(), {"x": 1}
    w = Workload.from_value({"model": model, "inputs": inputs, "loss": None})
    # THEN it is the Workload with those fields, and a Workload is returned as it is
    assert w == Workload(model, inputs)
    assert Workload.from_value(w) is w


@pytest.mark.parametrize(
    "value, message",
    [
        ({"model": 1}, "returned a mapping without inputs"),
        ({"model": 1, "inputs": 1, "labels": 2}, "unknown keys labels"),
        (3, "returned a int; return a memprof.Workload(model, inputs"),
        ({"model": 1, "inputs": 1, "loss": "mse"}, "loss must be a function (output, inputs) -> scalar tensor or None"),
        ({"model": 1, "inputs": 1, "optimizer": "adamw"}, "optimizer must be a function (params) -> torch.optim"),
        ({"model": None, "inputs": 1}, "model is None"),
        ({"model": 1, "inputs": None}, "inputs is None; pass what the model is called with"),
    ],
)
def test_bad_workloads_say_what_to_pass(value, message):
    with pytest.raises(MemprofUserError, match=None) as err:
        Workload.from_value(value)
    assert message in str(err.value)


def test_workload_is_frozen():
    w = Workload(object(), ())
    with pytest.raises(AttributeError):
        w.model = None  # type: ignore[misc]
