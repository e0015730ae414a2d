"""Precisions: names, aliases and the two 16Ψ splits."""

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.precision import get_precision


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("fp32", "32-true"),
        ("32-true", "32-true"),
        ("fp16-mixed", "16-mixed"),
        ("BF16-Mixed", "bf16-mixed"),
        ("bf16-true", "bf16-true"),
        ("16-true", "16-true"),
        ("fp16-master", "16-master"),
    ],
)
def test_names_and_aliases(name, canonical):
    assert get_precision(name).name == canonical


def test_amp_split_is_4_4_and_fp32_states():
    p = get_precision("bf16-mixed")
    assert (p.param_bytes, p.grad_bytes, p.master_bytes, p.optimizer_dtype) == (4, 4, 0, "float32")


def test_master_weight_split_is_2_2_plus_4_master():
    p = get_precision("16-master")
    assert (p.param_bytes, p.grad_bytes, p.master_bytes, p.optimizer_dtype) == (2, 2, 4, "float32")


def test_true_half_precision_keeps_half_states():
    p = get_precision("bf16-true")
    assert (p.param_bytes, p.grad_bytes, p.master_bytes, p.optimizer_dtype) == (2, 2, 0, "bfloat16")


def test_unknown_precision_suggests_close_names():
    with pytest.raises(MemprofUserError, match=r"unknown precision 'bf16-mixd'; did you mean bf16-mixed"):
        get_precision("bf16-mixd")
