"""CUDA autocast's casting policy, applied to real CPU tensors through torch's own dispatcher.

A measurement for the activation replay's CUDA autocast that is not circular: it reads nothing of
memprof.estimators.autocast. The policies come from torch itself, the macros of the header the wheel
ships (torch/include/ATen/autocast_mode.h: AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE, AT_FORALL_PROMOTE) and the
set of ops registered for the AutocastCUDA dispatch key; and they run at the dispatch key CUDA
autocast runs at. `cuda_policy_on_cpu()` (memprof.tracer.cuda_autocast.CudaAutocast, which the tracer uses
for `device="cuda"` `*-mixed` steps) registers, for the AutocastCPU key, one Python kernel per op
registered for AutocastCUDA that does what aten/src/ATen/autocast_mode.h's WrapFunction_ does for
that policy (cached_cast, set_opt_dtype, promote_type, the banned list), and a pass-through kernel for
fallthrough for every op only CPU autocast registers (so a composite op such as cross_entropy_loss
decomposes and its parts meet the policy, as on CUDA); `torch.autocast("cpu", dtype)` then runs CUDA's policy on CPU
tensors, above autograd, so autograd records the casts and saves what the policy produces.

What it checks is the policy's application (which op runs in which dtype, which casts autograd
keeps), not a GPU: the kernels below autocast are the CPU's (dropout keeps a noise tensor, not a bool
mask; SDPA runs its CPU kernel), so comparisons use eager attention in eval mode, where the CPU and
CUDA kernels save the same tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from memprof.tracer.cuda_autocast import HEADER, CudaAutocast, torch_cuda_policies

__all__ = ["HEADER", "cuda_policy_on_cpu", "torch_cuda_policies"]


@contextlib.contextmanager
def cuda_policy_on_cpu(dtype: torch.dtype = torch.bfloat16) -> Iterator[dict[str, str]]:
    """torch.autocast("cpu", dtype) running CUDA autocast's policies (yields them, op -> policy)."""
    with CudaAutocast(dtype) as autocast:
        yield autocast.policies
