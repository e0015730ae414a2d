"""Temporary buffers outside the model's own tensors, itemized: what a training setup adds and why.

Each buffer is live for the whole step unless said otherwise, and counts as `temporary` (it is a tensor
in the caching allocator, not a model state). The loss and logits temporaries and the optimizer's own
step temporaries are part of the step timeline (estimators/timeline.py); this module names the rest:

- cuBLAS / cuBLASLt workspace (CUDA only): one allocation per (handle, stream) through the caching
  allocator, 8,519,680 B by default and 32 MiB on Hopper and Blackwell (estimators/overheads.py has the
  rules of torch 2.13's CublasHandlePool.cpp).
- DDP gradient buckets (several GPUs, ZeRO 0): `DistributedDataParallel`'s Reducer allocates flat bucket
  tensors (25 MiB each, the first 1 MiB) that together cover every gradient, so with the default
  `gradient_as_bucket_view=False` a second copy of all gradients lives from construction on (pytorch
  PR #41954 measured ~1 GB saved on a ~1 GB model by turning the views on).
- ZeRO reduction and gather buckets (several GPUs, stage 1 or more; DeepSpeed's defaults): the gradient
  reduction bucket `reduce_bucket_size` = 5e8 elements in the gradient dtype and the parameter all-gather
  bucket `allgather_bucket_size` = 5e8 elements in the parameter dtype, each capped at the model's size.
  These constant-size buffers are ZeRO-R's answer to the fused fp32 buffer of the whole model (the
  ZeRO paper's 6 GB for GPT-2 1.5B), which memprof does not assume.
- ZeRO-3 / FSDP full-shard gathered parameters: during forward and backward each layer's full
  parameters are gathered onto the device; with one layer prefetched, two layers' worth are live.
"""
from __future__ import annotations

from dataclasses import dataclass

DDP_BUCKET_CAP_BYTES = 25 * 2**20           # torch.nn.parallel.DistributedDataParallel bucket_cap_mb=25
ZERO_REDUCE_BUCKET_ELEMENTS = 500_000_000   # DeepSpeed zero_optimization.reduce_bucket_size default
ZERO_ALLGATHER_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed zero_optimization.allgather_bucket_size default
ZERO3_PREFETCHED_LAYERS = 2                 # the layer running and the one prefetched


@dataclass(frozen=True)
class Buffer:
    """One itemized temporary buffer on the device."""

    name: str
    nbytes: int
    why: str


def training_buffers(*, device: str, gpus: int, zero: int, num_parameters: int, grad_bytes: int,
                     param_bytes: int, largest_layer_parameters: int, blas_workspaces: tuple[int, ...],
                     parameters_offloaded: bool = False) -> list[Buffer]:
    """The temporary buffers of one data-parallel rank, largest first.

    grad_bytes / param_bytes: bytes per element of gradients and parameters on the device.
    largest_layer_parameters: elements of the largest transformer layer (ZeRO-3 gathers layer by layer).
    blas_workspaces: the cuBLAS/cuBLASLt workspace allocations (empty on the CPU).
    """
    out: list[Buffer] = []
    if device == "cuda" and blas_workspaces:
        out.append(Buffer("cublas_workspace", sum(blas_workspaces),
                          "cuBLAS/cuBLASLt workspace, allocated through the caching allocator on first matmul"))
    if gpus > 1 and zero == 0:
        out.append(Buffer("ddp_gradient_buckets", num_parameters * grad_bytes,
                          "DDP's flat gradient buckets cover every gradient "
                          "(gradient_as_bucket_view=False, the default)"))
    if gpus > 1 and zero >= 1:
        out.append(Buffer("zero_reduce_bucket", min(num_parameters, ZERO_REDUCE_BUCKET_ELEMENTS) * grad_bytes,
                          "ZeRO gradient reduction bucket (DeepSpeed reduce_bucket_size=5e8 elements)"))
        out.append(Buffer("zero_allgather_bucket",
                          min(num_parameters, ZERO_ALLGATHER_BUCKET_ELEMENTS) * param_bytes,
                          "ZeRO parameter all-gather bucket (DeepSpeed allgather_bucket_size=5e8 elements)"))
    if zero == 3 and (gpus > 1 or parameters_offloaded):
        out.append(Buffer("zero3_gathered_parameters",
                          ZERO3_PREFETCHED_LAYERS * largest_layer_parameters * param_bytes,
                          "full parameters of the running and the prefetched layer, gathered for compute"))
    return sorted(out, key=lambda b: -b.nbytes)


def largest_layer_parameters(spec) -> int:
    """Elements of the largest module ZeRO-3 gathers at once: a transformer layer, or the embeddings.

    Parameter names carry the layer index as the first all-digit component ("transformer.h.3.attn..."),
    the embeddings and head have none; each non-layer tensor is its own gather unit.
    """
    layers: dict[int, int] = {}
    largest_other = 0
    for t in spec.parameter_tensors():
        index = next((int(p) for p in t.name.split(".") if p.isdigit()), None)
        if index is None:
            largest_other = max(largest_other, t.numel)
        else:
            layers[index] = layers.get(index, 0) + t.numel
    return max([largest_other, *layers.values()])
