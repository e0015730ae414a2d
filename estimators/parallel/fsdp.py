"""PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`) as it runs, read from torch 2.13's
torch/distributed/fsdp/_fully_shard/ (_fsdp_param.py, _fsdp_param_group.py, _fsdp_collectives.py,
_fsdp_state.py).

Wrapping (`unit`): "block" is the torchtitan recipe, `fully_shard` on every transformer block and then
on the root model (which owns what is left: embeddings, final norm, head); "model" is one
`fully_shard(model)`, one unit holding every parameter.

Model states, per rank (`local_tensors`): every parameter is a DTensor sharded on dim 0. `torch.chunk`
splits dim 0 into `ceil(dim0 / N)`-row chunks and FSDPParam pre-pads the rank's chunk to that size
(`padded_sharded_param_size = chunks[0].size()`), so each rank's parameter storage holds
`ceil(dim0 / N) * (numel / dim0)` elements, rank 0 being never smaller. Gradients are views into the
unit's reduce-scatter output, the same padded shards; optimizer states are created by the optimizer
from the sharded parameters (`torch.zeros_like(param)`: the rank's chunk, whose rows are rank 0's
`ceil(dim0 / N)`), scalars (Adam's `step`) whole. The estimate describes rank 0, the largest.

Mixed precision (`MixedPrecisionPolicy(param_dtype, reduce_dtype)`, what `bf16-mixed` means under
FSDP): the sharded parameters stay fp32 (they are the master weights the optimizer steps), the
all-gather casts them to `param_dtype` and the forward and backward run on the gathered bf16 weights
with no autocast; gradients are produced in bf16 and reduce-scattered in `reduce_dtype` (float32,
torchtitan's default), landing as fp32 gradient shards.

The engine's own buffers through the step (the `EngineSchedule`), per unit u with P_u its gathered
(unsharded, padded) bytes in the gathered dtype and R_u its reduce-scatter input (padded, reduce dtype):
- forward: the unit's all-gather output (one flat tensor, P_u) is copied out into the unsharded
  parameters (P_u); the flat output is kept for implicit prefetching until the next unit's copy-out
  (`FSDPParamGroup.wait_for_unshard`, `comm_ctx.all_gather_state`); the root's post-forward frees the
  last one. With `reshard_after_forward` (`--zero 3`) each block frees its parameters after its
  forward (`free_storage`, a `storage.resize_(0)`); without (`--zero 2`) they stay until their backward.
  The root never reshards after forward.
- backward: a unit's pre-backward unshards it (if resharded) and prefetches the previous unit's
  all-gather (the flat output, P_prev, copied out when that unit's backward starts); its parameter
  gradients are produced whole in the gathered dtype, and its post-backward copies them into the
  reduce-scatter input (R_u), frees them, and reduces into the rank's gradient shard; the input
  stays referenced until the next unit's post-backward (`reduce_scatter_max_input_buffers` = 1).
  The root's post-backward runs when the whole backward ends, so the head's and embeddings'
  gradients stay whole until then.
- optimizer step: every unit is sharded again; no buffers.
The collectives themselves allocate nothing here, as NCCL's write into FSDP's buffers. (gloo's
reduce-scatter does not: it works on a full-size copy of its input kept by its Work and released by
gloo's worker thread at a moment that races with training; memprof.validate_distributed therefore
runs FSDP2 on the CPU with a reduce-scatter that allocates nothing, see `_InPlaceReduceScatter`.)

CPU offload (`CPUOffloadPolicy`, `--offload optimizer`): sharded parameters, gradients and optimizer
states live in (pinned) host memory and the optimizer steps there; each unit is copied to the
device for its all-gather. FSDP2 has no separate parameter offload: `optimizer+parameters` is the
same policy and is refused as ambiguous.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..tensors import ParamTensor
from ._base import (
    Buffer,
    EngineBuffers,
    EngineSchedule,
    ModelStateBytes,
    ParallelStrategy,
    Placement,
    Position,
    ceil_div,
    layer_of,
)

FSDP_UNITS = ("block", "model")
RS_INPUT_BUFFERS = 1  # FSDPCommContext.reduce_scatter_max_input_buffers default


def shard_tensor(t: ParamTensor, gpus: int) -> ParamTensor:
    """The rank-0 shard of `t` (dim 0 chunked into ceil(dim0 / N) rows, padded to that size)."""
    if not t.shape:
        return t
    rows = ceil_div(t.shape[0], gpus)
    return ParamTensor(t.name, (rows, *t.shape[1:]), t.dtype, t.trainable)


def padded_numel(t: ParamTensor, gpus: int) -> int:
    """Elements of the unsharded all-gather output / reduce-scatter input (dim 0 padded to N)."""
    return shard_tensor(t, gpus).numel * gpus


@dataclass(frozen=True)
class _Unit:
    key: str | int  # "root" or the block index
    numel: int  # padded elements gathered
    grad_numel: int  # padded elements reduce-scattered (trainable ones)


class FSDP2(ParallelStrategy):
    """`fully_shard` over `gpus` ranks; `reshard_after_forward` True is full-shard (`--zero 3`)."""

    def __init__(
        self,
        gpus: int,
        reshard_after_forward: bool,
        offload: str = "none",
        unit: str = "block",
    ) -> None:
        super().__init__(gpus)
        self.reshard_after_forward = reshard_after_forward
        self.offload = offload
        self.unit = unit
        self.name = "FSDP2 " + ("full-shard" if reshard_after_forward else "shard-grad-op")
        if offload != "none":
            self.name += " + CPU offload"

    # -- model states -----------------------------------------------------------------------
    def local_tensors(self, tensors: Sequence[ParamTensor]) -> tuple[ParamTensor, ...]:
        return tuple(shard_tensor(t, self.gpus) for t in tensors)

    def place(self, states: ModelStateBytes) -> Placement:
        assert states.per_rank is not None  # estimation computes it from local_tensors()
        params, grads, optimizer_states = states.per_rank
        if self.offload != "none":
            return Placement(0, 0, 0, params + grads + optimizer_states)
        return Placement(params, grads, optimizer_states, 0)

    def buffers(self, sizes: EngineBuffers) -> list[Buffer]:
        return []  # FSDP2's buffers come and go through the step: schedule()

    def step_temporaries(self, whole_model_bytes: int) -> int:
        if self.optimizer_on_host:
            return 0
        return ceil_div(whole_model_bytes, self.gpus)

    @property
    def optimizer_on_host(self) -> bool:
        return self.offload != "none"

    @property
    def gathers_parameters_per_layer(self) -> bool:
        return True  # the weights the layers see are the gathered ones, a buffer of the engine

    @property
    def compute_without_autocast(self) -> bool:
        return True  # MixedPrecisionPolicy casts the gathered weights; no autocast

    # -- the engine's buffers through the step ------------------------------------------------
    def _units(self, tensors: Iterable[ParamTensor]) -> list[_Unit]:
        sizes: dict[str | int, list[int]] = {}
        for t in tensors:
            layer = layer_of(t.name) if self.unit == "block" else None
            key: str | int = "root" if layer is None else layer
            row, padded = sizes.setdefault(key, [0, 0]), padded_numel(t, self.gpus)
            row[0] += padded
            if t.trainable:
                row[1] += padded
        order = sorted((k for k in sizes if k != "root"), key=int)
        out = [_Unit(k, *sizes[k]) for k in order]
        if "root" in sizes:
            out.append(_Unit("root", *sizes["root"]))
        return out

    def schedule(self, tensors: Sequence[ParamTensor], sizes: EngineBuffers) -> EngineSchedule:
        """The engine's bytes at each part of the step (module docstring), for the step timeline."""
        units = self._units(tensors)
        gathered = sizes.param_bytes if sizes.gathered_bytes is None else sizes.gathered_bytes
        reduce = sizes.grad_bytes if sizes.reduce_bytes is None else sizes.reduce_bytes
        root = next((u for u in units if u.key == "root"), None)
        root_p = 0 if root is None else root.numel * gathered
        if self.unit == "model":  # one unit: gathered for the whole forward and backward
            positions: list[Position] = [
                "embeddings",
                *sorted({i for t in tensors if (i := layer_of(t.name)) is not None}),
                "head",
            ]
            rs: dict[Position, int] = {"root": 0 if root is None else root.grad_numel * reduce}
            return EngineSchedule(
                forward=dict.fromkeys(positions, 2 * root_p),  # its flat output is kept until its post-forward
                backward=dict.fromkeys(positions, root_p),
                forward_end=root_p,
                unit_of=dict.fromkeys(positions, "root"),
                reduce_scatter_input=rs,
                resharded_at_reduce={"root": root_p},
                gathered_gradients=True,
            )
        blocks = [u for u in units if u.key != "root"]
        p = [u.numel * gathered for u in blocks]
        keep = not self.reshard_after_forward  # --zero 2: blocks stay gathered from forward to backward
        fwd: dict[Position, int] = {"embeddings": 2 * root_p}  # the root's flat output and its parameters
        fwd_enter: dict[Position, int] = {"embeddings": 2 * root_p}
        prev_flat, kept = root_p, 0
        for i, u in enumerate(blocks):
            # all-gather into the flat output beside the previous unit's, which the copy-out then frees
            fwd_enter[u.key] = root_p + kept + max(prev_flat + p[i], 2 * p[i])
            fwd[u.key] = root_p + kept + 2 * p[i]
            prev_flat = p[i]
            kept += p[i] if keep else 0
        fwd["head"] = fwd_enter["head"] = root_p + kept + (prev_flat if blocks else root_p)
        forward_end = root_p + kept  # the root keeps its parameters gathered until its backward
        last = p[-1] if blocks and not keep else 0  # the root's pre-backward prefetches the last block
        bwd: dict[Position, int] = {"head": root_p + kept + last}
        bwd_enter: dict[Position, int] = {"head": root_p + kept + last}
        for i in range(len(blocks) - 1, -1, -1):
            key = blocks[i].key
            if keep:
                bwd[key] = bwd_enter[key] = root_p + sum(p[: i + 1])
            else:
                prefetch = p[i - 1] if i > 0 else 0
                bwd_enter[key] = root_p + max(2 * p[i], p[i] + prefetch)  # copy-out, then the prefetch
                bwd[key] = root_p + p[i] + prefetch
        bwd["embeddings"] = bwd_enter["embeddings"] = root_p
        unit_of: dict[Position, Position] = {"embeddings": "root", "head": "root"}
        for u in blocks:
            unit_of[u.key] = u.key if self.unit == "block" else "root"
        return EngineSchedule(
            forward=fwd,
            backward=bwd,
            forward_end=forward_end,
            step=0,
            forward_enter=fwd_enter,
            backward_enter=bwd_enter,
            unit_of=unit_of,
            reduce_scatter_input={u.key: u.grad_numel * reduce for u in units},
            resharded_at_reduce={u.key: u.numel * gathered for u in units},
            gathered_gradients=True,
        )
