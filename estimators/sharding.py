"""Data-parallel sharding of model states (ZeRO stages, FSDP strategies) and CPU offload.

ZeRO (Rajbhandari et al. 2020) partitions across N data-parallel devices:
  stage 1: optimizer states (incl. fp32 master weights), stage 2: + gradients, stage 3: + parameters.
FSDP's strategies map onto the same stages: NO_SHARD = 0, SHARD_GRAD_OP = 2, FULL_SHARD = 3.
A partition holds ceil(bytes / N): flat buffers are padded to a multiple of N elements, which this
rounds at byte level (at most N - 1 elements per buffer; negligible and stated).

Offload (ZeRO-Offload / FSDP CPUOffload) moves the optimizer's partition (states and master weights)
to CPU RAM; the CPU optimizer steps an fp32 copy of the gradient partition kept there too
(DeepSpeed converts 16-bit gradients to fp32 on the host). With stage 2 or 3 the device keeps no
gradient partition, only reduction buckets (temporary buffers); with stage 1 it keeps full gradients. Parameter offload (ZeRO-3 only) moves the
parameter partition as well; each layer's full parameters are gathered onto the device when used.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import MemprofUserError

ZERO_STAGES = (0, 1, 2, 3)
OFFLOADS = ("none", "optimizer", "optimizer+parameters")
FSDP_STRATEGIES = {"no_shard": 0, "shard_grad_op": 2, "full_shard": 3}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Sharding:
    gpus: int = 1
    zero: int = 0
    offload: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.gpus, int) or self.gpus < 1 or self.gpus > 1_000_000:
            raise MemprofUserError(f"--gpus must be a whole number from 1 to 1000000, got {self.gpus!r}")
        if self.zero not in ZERO_STAGES:
            raise MemprofUserError(f"invalid ZeRO stage {self.zero!r}; valid: 0, 1, 2, 3 "
                                   "(FSDP: shard_grad_op = 2, full_shard = 3)")
        if self.offload not in OFFLOADS:
            raise MemprofUserError(f"invalid offload {self.offload!r}; valid: {', '.join(OFFLOADS)}")
        if self.offload == "optimizer+parameters" and self.zero != 3:
            raise MemprofUserError("parameter offload needs ZeRO stage 3 (--zero 3); "
                                   "use --offload optimizer with stages 1 and 2")
        if self.offload != "none" and self.zero == 0:
            raise MemprofUserError("CPU offload needs a ZeRO stage of 1 or more (--zero 1|2|3)")

    def shard(self, nbytes: int, sharded_from_stage: int) -> int:
        """Bytes one device holds of a state that ZeRO partitions from `sharded_from_stage` on."""
        return _ceil_div(nbytes, self.gpus) if self.zero >= sharded_from_stage else nbytes


@dataclass(frozen=True)
class Placement:
    """Where the model states of one data-parallel rank live, in bytes."""

    parameters: int
    gradients: int
    optimizer_states: int
    cpu: int                     # host RAM this rank needs for offloaded states


def place_model_states(parameters: int, gradients: int, optimizer_states: int,
                       fp32_gradient_bytes: int, sharding: Sharding) -> Placement:
    """Per-device model-state bytes for full-model sizes `parameters`, `gradients`, `optimizer_states`.

    `fp32_gradient_bytes` is the size of an fp32 copy of all gradients: the host copy the CPU
    optimizer steps when the optimizer is offloaded.
    """
    params = sharding.shard(parameters, 3)
    grads = sharding.shard(gradients, 2)
    states = sharding.shard(optimizer_states, 1)
    cpu = 0
    if sharding.offload != "none":
        cpu += states + _ceil_div(fp32_gradient_bytes, sharding.gpus)
        states = 0
        if sharding.zero >= 2:
            # the reduced gradient partition is copied to the host as it is produced; what stays on
            # the device is the reduction bucket, a temporary buffer
            grads = 0
    if sharding.offload == "optimizer+parameters":
        cpu += params
        params = 0
    return Placement(params, grads, states, cpu)
