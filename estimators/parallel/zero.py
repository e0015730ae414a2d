"""ZeRO (Rajbhandari et al. 2020) data parallelism as DeepSpeed runs it, with CPU offload.

ZeRO partitions across N data-parallel ranks: stage 1 the optimizer states (incl. fp32 master
weights), stage 2 + gradients, stage 3 + parameters. FSDP's strategies map onto the same stages
(NO_SHARD = 0, SHARD_GRAD_OP = 2, FULL_SHARD = 3) as far as model states go. A partition holds
ceil(bytes / N): flat buffers are padded to a multiple of N elements, which this rounds at byte
level (at most N - 1 elements per buffer; negligible and stated).

Offload (ZeRO-Offload / FSDP CPUOffload) moves the optimizer's partition (states and master weights)
to CPU RAM; the CPU optimizer steps an fp32 copy of the gradient partition kept there too (DeepSpeed
converts 16-bit gradients to fp32 on the host). With stage 2 or 3 the device keeps no gradient
partition, only reduction buckets (temporary buffers); with stage 1 it keeps full gradients.
Parameter offload (ZeRO-3 only) moves the parameter partition as well; each layer's full parameters
are gathered onto the device when used.

Engine buffers (several GPUs, stage 1 or more; DeepSpeed's defaults): the gradient reduction bucket
`reduce_bucket_size` = 5e8 elements in the gradient dtype and the parameter all-gather bucket
`allgather_bucket_size` = 5e8 elements in the parameter dtype, each capped at the model's size. These
constant-size buffers are ZeRO-R's answer to the fused fp32 buffer of the whole model (the ZeRO
paper's 6 GB for GPT-2 1.5B), which memprof does not assume. Under stage 3 each layer's full
parameters are gathered for compute; with one layer prefetched, two layers' worth are live.
"""

from __future__ import annotations

from ._base import Buffer, EngineBuffers, ModelStateBytes, ParallelStrategy, Placement, ceil_div

ZERO_REDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed zero_optimization.reduce_bucket_size default
ZERO_ALLGATHER_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed zero_optimization.allgather_bucket_size default
ZERO3_PREFETCHED_LAYERS = 2  # the layer running and the one prefetched


class ZeRO(ParallelStrategy):
    """ZeRO stage 1, 2 or 3 over `gpus` ranks, optimizer (and with stage 3 parameter) offload."""

    def __init__(self, gpus: int, stage: int, offload: str = "none") -> None:
        super().__init__(gpus)
        self.stage = stage
        self.offload = offload
        self.name = f"ZeRO-{stage}" + ("" if offload == "none" else f" + {offload} offload")

    def _shard(self, nbytes: int, from_stage: int) -> int:
        return ceil_div(nbytes, self.gpus) if self.stage >= from_stage else nbytes

    def place(self, states: ModelStateBytes) -> Placement:
        params = self._shard(states.parameters, 3)
        grads = self._shard(states.gradients, 2)
        optimizer_states = self._shard(states.optimizer_states, 1)
        cpu = 0
        if self.offload != "none":
            cpu += optimizer_states + ceil_div(states.fp32_gradients, self.gpus)
            optimizer_states = 0
            if self.stage >= 2:
                # the reduced gradient partition is copied to the host as it is produced; what stays
                # on the device is the reduction bucket, a temporary buffer
                grads = 0
        if self.offload == "optimizer+parameters":
            cpu += params
            params = 0
        return Placement(params, grads, optimizer_states, cpu)

    def buffers(self, sizes: EngineBuffers) -> list[Buffer]:
        out: list[Buffer] = []
        if self.gpus > 1:
            out.append(
                Buffer(
                    "zero_reduce_bucket",
                    min(sizes.num_parameters, ZERO_REDUCE_BUCKET_ELEMENTS) * sizes.grad_bytes,
                    "ZeRO gradient reduction bucket (DeepSpeed reduce_bucket_size=5e8 elements)",
                )
            )
            out.append(
                Buffer(
                    "zero_allgather_bucket",
                    min(sizes.num_parameters, ZERO_ALLGATHER_BUCKET_ELEMENTS) * sizes.param_bytes,
                    "ZeRO parameter all-gather bucket (DeepSpeed allgather_bucket_size=5e8 elements)",
                )
            )
        if self.stage == 3 and (self.gpus > 1 or self.offload == "optimizer+parameters"):
            out.append(
                Buffer(
                    "zero3_gathered_parameters",
                    ZERO3_PREFETCHED_LAYERS * sizes.largest_layer_parameters * sizes.param_bytes,
                    "full parameters of the running and the prefetched layer, gathered for compute",
                )
            )
        return out

    def step_temporaries(self, whole_model_bytes: int) -> int:
        # the rank steps its partition of the parameters: temporaries scale with the partition
        if self.optimizer_on_host:
            return 0
        return ceil_div(whole_model_bytes, self.gpus)

    @property
    def gathers_parameters_per_layer(self) -> bool:
        return self.stage == 3

    @property
    def states_as_flat_buffer(self) -> bool:
        # a partition (or, offloaded, nothing) rather than the optimizer's own per-parameter tensors
        return self.gpus > 1 or self.offload != "none"

    @property
    def optimizer_on_host(self) -> bool:
        return self.offload != "none"
