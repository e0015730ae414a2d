"""CUDA autocast's cast policies, op by op, as PyTorch 2.13 registers them (data; torch-free).

Under `torch.autocast("cuda", dtype=...)` every op registered for the AutocastCUDA dispatch key runs
with one cast policy (aten/src/ATen/autocast_mode.cpp, `TORCH_LIBRARY_IMPL(aten, AutocastCUDA, m)`;
the lists are macros of aten/src/ATen/autocast_mode.h, which torch wheels ship under
torch/include/ATen/):

- `lower_precision_fp` (AT_FORALL_LOWER_PRECISION_FP, plus cudnn_convolution and
  cudnn_convolution_transpose registered beside it): floating inputs cast to the autocast dtype,
  float16 or bfloat16 alike (the lists do not depend on the dtype); fp32 leaf weights that require
  grad are cast once and cached until the autocast region exits (`cached_cast`);
- `fp32` (AT_FORALL_FP32): inputs cast to float32, so outputs (and saved tensors) are float32;
- `fp32_set_opt_dtype` (AT_FORALL_FP32_SET_OPT_DTYPE): run in float32 by passing dtype=float32
  when the caller gave none (softmax, log_softmax, sum, cumsum, prod, norms);
- `fp32_append_dtype` (AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE): norm.Scalar and
  norm.ScalarOpt_dim, redispatched with dtype=float32 appended;
- `promote` (AT_FORALL_PROMOTE): inputs cast to the widest floating type among them;
- banned: binary_cross_entropy raises under CUDA autocast ("unsafe to autocast").
Every other op runs in the dtype its inputs have (an add of two float16 tensors stays float16).

CPU autocast is a different table (`TORCH_LIBRARY_IMPL(aten, AutocastCPU, m)` with its own
KERNEL_CPU lists): for example layer_norm, softmax and exp are not registered there, so under CPU
bfloat16 autocast they run in the input's dtype, while CUDA autocast runs them in float32. A CPU
measurement of activation dtypes does not carry over to CUDA for these ops.
tests/test_autocast.py checks these tuples against the installed torch: the header's macros, the
AutocastCUDA registrations, and the output dtypes of real autocast calls on fake CUDA tensors.

The activation replay reads them for `device="cuda"` with a mixed precision
(memprof.estimators.autograd: `Trace.fp32_input`, `softmax`, `cross_entropy`);
tests/test_cuda_autocast_replay.py compares its saved tensors with a tiny model's forward run under
CUDA autocast's policy on CPU tensors (tests/cuda_autocast_policy.py, from torch's own lists).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BANNED",
    "CAST_POLICIES",
    "FP32",
    "FP32_APPEND_DTYPE",
    "FP32_SET_OPT_DTYPE",
    "LOWER_PRECISION_FP",
    "PROMOTE",
    "TORCH_VERSION",
    "cast_policy",
    "output_dtype",
]

TORCH_VERSION = "2.13.0"  # the torch these lists were read from (git cf30153c)

# cast to the autocast dtype (float16 or bfloat16)
LOWER_PRECISION_FP: tuple[str, ...] = (
    "aten::_convolution.deprecated",
    "aten::_convolution",
    "aten::conv1d",
    "aten::conv2d",
    "aten::conv3d",
    "aten::conv_tbc",
    "aten::conv_transpose1d",
    "aten::conv_transpose2d.input",
    "aten::conv_transpose3d.input",
    "aten::convolution",
    "aten::prelu",
    "aten::addmm",
    "aten::addmv",
    "aten::addr",
    "aten::matmul",
    "aten::einsum",
    "aten::mm",
    "aten::mv",
    "aten::linalg_vecdot",
    "aten::linear",
    "aten::addbmm",
    "aten::baddbmm",
    "aten::bmm",
    "aten::chain_matmul",
    "aten::linalg_multi_dot",
    "aten::_thnn_fused_lstm_cell",
    "aten::_thnn_fused_gru_cell",
    "aten::lstm_cell",
    "aten::gru_cell",
    "aten::rnn_tanh_cell",
    "aten::rnn_relu_cell",
    "aten::_scaled_dot_product_flash_attention",
    "aten::scaled_dot_product_attention",
    "aten::cudnn_convolution",
    "aten::cudnn_convolution_transpose",
)
# cast to float32
FP32: tuple[str, ...] = (
    "aten::acos",
    "aten::asin",
    "aten::cosh",
    "aten::erfinv",
    "aten::exp",
    "aten::expm1",
    "aten::log",
    "aten::log10",
    "aten::log2",
    "aten::log1p",
    "aten::reciprocal",
    "aten::rsqrt",
    "aten::sinh",
    "aten::tan",
    "aten::pow.Tensor_Scalar",
    "aten::pow.Tensor_Tensor",
    "aten::pow.Scalar",
    "aten::softplus",
    "aten::layer_norm",
    "aten::native_layer_norm",
    "aten::rms_norm",
    "aten::group_norm",
    "aten::frobenius_norm.dim",
    "aten::nuclear_norm",
    "aten::nuclear_norm.dim",
    "aten::cosine_similarity",
    "aten::poisson_nll_loss",
    "aten::cosine_embedding_loss",
    "aten::nll_loss",
    "aten::nll_loss2d",
    "aten::hinge_embedding_loss",
    "aten::kl_div",
    "aten::l1_loss",
    "aten::smooth_l1_loss",
    "aten::huber_loss",
    "aten::mse_loss",
    "aten::margin_ranking_loss",
    "aten::multilabel_margin_loss",
    "aten::soft_margin_loss",
    "aten::triplet_margin_loss",
    "aten::multi_margin_loss",
    "aten::binary_cross_entropy_with_logits",
    "aten::dist",
    "aten::pdist",
    "aten::cdist",
    "aten::renorm",
    "aten::logsumexp",
    "aten::upsample_nearest1d",
    "aten::_upsample_nearest_exact1d",
    "aten::upsample_nearest2d",
    "aten::_upsample_nearest_exact2d",
    "aten::upsample_nearest3d",
    "aten::_upsample_nearest_exact3d",
    "aten::upsample_linear1d",
    "aten::upsample_bilinear2d",
    "aten::_upsample_bilinear2d_aa",
    "aten::upsample_trilinear3d",
    "aten::upsample_bicubic2d",
    "aten::_upsample_bicubic2d_aa",
)
# dtype=float32 passed when the caller gave no dtype
FP32_SET_OPT_DTYPE: tuple[str, ...] = (
    "aten::prod",
    "aten::prod.dim_int",
    "aten::softmax.int",
    "aten::log_softmax.int",
    "aten::cumprod",
    "aten::cumsum",
    "aten::linalg_vector_norm",
    "aten::linalg_matrix_norm",
    "aten::linalg_matrix_norm.str_ord",
    "aten::sum",
    "aten::sum.dim_IntList",
)
# redispatched to the overload with a dtype argument, float32
FP32_APPEND_DTYPE: tuple[str, ...] = (
    "aten::norm.Scalar",
    "aten::norm.ScalarOpt_dim",
)
# cast to the widest floating input type
PROMOTE: tuple[str, ...] = (
    "aten::addcdiv",
    "aten::addcmul",
    "aten::atan2",
    "aten::bilinear",
    "aten::cross",
    "aten::dot",
    "aten::vdot",
    "aten::grid_sampler",
    "aten::index_put",
    "aten::tensordot",
    "aten::scatter_add",
)
# raise under CUDA autocast
BANNED: tuple[str, ...] = ("aten::binary_cross_entropy",)

CAST_POLICIES: dict[str, tuple[str, ...]] = {
    "lower_precision_fp": LOWER_PRECISION_FP,
    "fp32": FP32,
    "fp32_set_opt_dtype": FP32_SET_OPT_DTYPE,
    "fp32_append_dtype": FP32_APPEND_DTYPE,
    "promote": PROMOTE,
    "banned": BANNED,
}
_POLICY_OF: dict[str, str] = {op: policy for policy, ops in CAST_POLICIES.items() for op in ops}
_FLOATS = ("float16", "bfloat16", "float32", "float64")  # narrowest to widest for promote


def _qualified(op: str) -> str:
    name = op.strip()
    return name if name.startswith("aten::") else f"aten::{name}"


def cast_policy(op: str) -> str | None:
    """The CUDA autocast policy of an aten op ("mm", "aten::softmax.int"), or None (not autocast).

    An overload-less name matches its default overload only: "softmax" is not "softmax.int".
    """
    return _POLICY_OF.get(_qualified(op))


def output_dtype(op: str, autocast_dtype: str, input_dtypes: Iterable[str]) -> str:
    """The dtype the op computes in under CUDA autocast, given its floating inputs' dtypes.

    autocast_dtype: "float16" or "bfloat16". Ops without a policy keep their inputs' dtype (the
    widest one, as type promotion does). Raises ValueError for a banned op, as PyTorch does.
    """
    if autocast_dtype not in ("float16", "bfloat16"):
        raise ValueError(f"autocast_dtype must be float16 or bfloat16, got {autocast_dtype!r}")
    dtypes = [d for d in input_dtypes if d in _FLOATS]
    widest = max(dtypes, key=_FLOATS.index) if dtypes else "float32"
    policy = cast_policy(op)
    if policy == "banned":
        raise ValueError(f"{op} is unsafe to autocast (PyTorch raises); use binary_cross_entropy_with_logits")
    if policy == "lower_precision_fp":
        return autocast_dtype
    if policy in ("fp32", "fp32_set_opt_dtype", "fp32_append_dtype"):
        return "float32"
    return widest  # promote, or no policy
