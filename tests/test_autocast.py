"""CUDA autocast's op lists (memprof.estimators.autocast) against the installed torch.

Three checks, none needing a GPU: the macros of the shipped header torch/include/ATen/autocast_mode.h,
the ops registered for the AutocastCUDA dispatch key, and the output dtypes of real CUDA-autocast
calls on fake CUDA tensors (FakeTensorMode builds them on a CPU-only torch).
"""

import os
import re

import pytest

from memprof.estimators import autocast
from memprof.estimators.autocast import CAST_POLICIES, cast_policy, output_dtype

torch = pytest.importorskip("torch")

HEADER = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "autocast_mode.h")


def _macro(text, name):
    body = re.search(r"#define " + name + r"\(_\)(.*?)\n\n", text, re.S)
    assert body, name
    return tuple(
        "aten::" + ".".join(p.strip() for p in a.split(",")) for a in re.findall(r"_\(([^()]*?)\)", body.group(1))
    )


@pytest.mark.skipif(not os.path.exists(HEADER), reason="torch wheel without headers")
def test_lists_are_the_header_macros():
    with open(HEADER, encoding="utf-8") as f:
        text = f.read()
    # the CUDA registration adds cudnn_convolution(_transpose) after the macro (autocast_mode.cpp)
    expected = {
        "LOWER_PRECISION_FP": (
            *_macro(text, "AT_FORALL_LOWER_PRECISION_FP"),
            "aten::cudnn_convolution",
            "aten::cudnn_convolution_transpose",
        ),
        "FP32": _macro(text, "AT_FORALL_FP32"),
        "FP32_SET_OPT_DTYPE": _macro(text, "AT_FORALL_FP32_SET_OPT_DTYPE"),
        "PROMOTE": _macro(text, "AT_FORALL_PROMOTE"),
    }
    for name, ops in expected.items():
        assert getattr(autocast, name) == ops, name
    redispatch = re.search(r"#define AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE\(_\)(.*?)\n\n", text, re.S).group(1)
    names = tuple("aten::" + n for n in re.findall(r'"(norm\.[A-Za-z_]+)"', redispatch))
    assert names == autocast.FP32_APPEND_DTYPE


def test_lists_are_exactly_the_autocast_cuda_registrations():
    registered = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA"))
    ours = [op for ops in CAST_POLICIES.values() for op in ops]
    assert len(ours) == len(set(ours)), "an op in two policies"
    assert set(ours) == registered


def test_cpu_autocast_is_a_different_table():
    cuda = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA"))
    cpu = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCPU"))
    assert cuda != cpu
    # fp32 on CUDA, not autocast at all on the CPU: they run in the input's dtype there
    for op in ("aten::layer_norm", "aten::softmax.int", "aten::exp", "aten::sum"):
        assert op in cuda and op not in cpu, op


@pytest.fixture
def cuda_autocast():
    """Enable CUDA autocast the way torch.autocast does, without its CUDA-availability check."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    was = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

    def run(dtype, fn):
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", dtype)
        torch.autocast_increment_nesting()
        try:
            with mode:
                return fn()
        finally:
            if torch.autocast_decrement_nesting() == 0:
                torch.clear_autocast_cache()
            torch.set_autocast_enabled("cuda", was[0])
            torch.set_autocast_dtype("cuda", was[1])

    return run


LOW = {"dtype": torch.float16}  # the autocast dtype of the running test (promote rejects the other 16-bit type)


def _t(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="cuda", dtype=dtype)


def _low(*shape):
    return _t(*shape, dtype=LOW["dtype"])


CALLS = {
    "aten::mm": lambda: torch.mm(_t(4, 4), _t(4, 4)),
    "aten::linear": lambda: torch.nn.functional.linear(_t(2, 4), _t(3, 4), _t(3)),
    "aten::bmm": lambda: torch.bmm(_t(2, 4, 4), _t(2, 4, 4)),
    "aten::baddbmm": lambda: torch.baddbmm(_t(2, 4, 4), _t(2, 4, 4), _t(2, 4, 4)),
    "aten::matmul": lambda: torch.matmul(_t(2, 4, 4), _t(4, 4)),
    "aten::scaled_dot_product_attention": lambda: torch.nn.functional.scaled_dot_product_attention(
        _t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16)
    ),
    "aten::layer_norm": lambda: torch.nn.functional.layer_norm(_t(2, 8, dtype=torch.float16), (8,)),
    "aten::rms_norm": lambda: torch.nn.functional.rms_norm(_t(2, 8, dtype=torch.float16), (8,)),
    "aten::exp": lambda: torch.exp(_t(4, dtype=torch.float16)),
    "aten::pow.Tensor_Scalar": lambda: torch.pow(_t(4, dtype=torch.float16), 2),
    "aten::mse_loss": lambda: torch.nn.functional.mse_loss(_t(4, dtype=torch.float16), _t(4, dtype=torch.float16)),
    "aten::softmax.int": lambda: torch.softmax(_t(2, 4, dtype=torch.float16), -1),
    "aten::log_softmax.int": lambda: torch.log_softmax(_t(2, 4, dtype=torch.float16), -1),
    "aten::sum": lambda: torch.sum(_t(4, dtype=torch.float16)),
    "aten::cumsum": lambda: torch.cumsum(_t(4, dtype=torch.float16), 0),
    "aten::atan2": lambda: torch.atan2(_low(4), _t(4)),
    "aten::addcmul": lambda: torch.addcmul(_low(4), _t(4), _low(4)),
    "aten::dot": lambda: torch.dot(_low(4), _t(4)),
    "aten::relu": lambda: torch.relu(_t(4, dtype=torch.float16)),  # no policy: input dtype
    "aten::gelu": lambda: torch.nn.functional.gelu(_t(4, dtype=torch.float16)),
}
INPUTS = {
    "aten::mm": ["float32"],
    "aten::linear": ["float32"],
    "aten::bmm": ["float32"],
    "aten::baddbmm": ["float32"],
    "aten::matmul": ["float32"],
    "aten::scaled_dot_product_attention": ["float32"],
    "aten::atan2": ["low", "float32"],
    "aten::addcmul": ["low", "float32"],
    "aten::dot": ["low", "float32"],
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", sorted(CALLS))
def test_output_dtype_matches_real_cuda_autocast(cuda_autocast, op, dtype, monkeypatch):
    monkeypatch.setitem(LOW, "dtype", getattr(torch, dtype))
    out = cuda_autocast(getattr(torch, dtype), CALLS[op])
    inputs = [dtype if d == "low" else d for d in INPUTS.get(op, ["float16"])]
    expected = output_dtype(op, dtype, inputs)
    assert str(out.dtype).removeprefix("torch.") == expected, (op, dtype, cast_policy(op))


def test_promote_rejects_the_other_16_bit_type(cuda_autocast):
    # at::autocast::prioritize: a float16 input under bfloat16 autocast is an error, not a promotion
    with pytest.raises(RuntimeError, match="prioritize"):
        cuda_autocast(torch.bfloat16, lambda: torch.atan2(_t(4, dtype=torch.float16), _t(4)))


def test_policies_and_output_dtypes():
    assert cast_policy("mm") == cast_policy("aten::mm") == "lower_precision_fp"
    assert cast_policy("softmax.int") == "fp32_set_opt_dtype" and cast_policy("softmax") is None
    assert cast_policy("layer_norm") == "fp32" and cast_policy("norm.Scalar") == "fp32_append_dtype"
    assert cast_policy("relu") is None and cast_policy("binary_cross_entropy") == "banned"
    assert output_dtype("linear", "bfloat16", ["float32"]) == "bfloat16"
    assert output_dtype("aten::add.Tensor", "float16", ["float16", "float32"]) == "float32"
    assert output_dtype("relu", "float16", ["bfloat16"]) == "bfloat16"
    with pytest.raises(ValueError, match="unsafe"):
        output_dtype("binary_cross_entropy", "float16", ["float32"])
    with pytest.raises(ValueError, match="autocast_dtype"):
        output_dtype("mm", "float32", ["float32"])


def test_binary_cross_entropy_is_banned_by_torch(cuda_autocast):
    with pytest.raises(RuntimeError, match="unsafe to autocast"):
        cuda_autocast(torch.float16, lambda: torch.nn.functional.binary_cross_entropy(_t(4).sigmoid(), _t(4).sigmoid()))
