"""DeepSpeed ZeRO stages 1-3 as DeepSpeed 0.19 allocates them, rank by rank.

Read from deepspeed/runtime/zero/stage_1_and_2.py (`DeepSpeedZeroOptimizer`), stage3.py
(`DeepSpeedZeroOptimizer_Stage3`), partition_parameters.py and config.py (the defaults below).

Stages 1 and 2 (`DeepSpeedZeroOptimizer`), one parameter group of Ψ trainable elements over N ranks:
- the 16-bit (or, without bf16/fp16, fp32) parameters are flattened into one buffer padded to a
  multiple of 2·N elements (`nccl_start_alignment_factor` = 2), and the model's parameters become views
  of it: the parameters are whole on every rank (`bit16_groups_flat`);
- partition r is the r-th N-th of that buffer (P = padded Ψ / N elements); the rank keeps an fp32
  clone of it (`single_partition_of_fp32_groups`, the master weights; DeepSpeed clones it also when
  the model is fp32) and the wrapped torch optimizer steps that one flat tensor, so its states are
  those of one P-element parameter (AdamW: exp_avg, exp_avg_sq and one `step`);
- gradients: `contiguous_gradients` (default true) allocates the reduction bucket of
  `reduce_bucket_size` elements (5e8 by default, whatever the model's size) in the gradient dtype when
  the first gradient hook of a backward fires (`setup_buckets`), a second one with `overlap_comm`, and
  frees them when the backward ends. Stage 2 copies each gradient into the bucket as it is produced and
  frees it; when the next gradient does not fit, the bucket is reduced and the rank copies the
  gradients of the parameters in its partition into `grads_in_partition` (allocated at the first
  such reduction: the whole numel of every parameter overlapping the partition, gradient dtype), which
  lives until the step has made the fp32 gradient partition from it. Stage 1 keeps the gradients whole
  through the backward (as DDP without buckets) and reduces them when it ends;
- the step: the fp32 gradient partition (`flat_grad_partition.to(float32)`: a copy in bf16/fp16, the
  same tensor in fp32), then the optimizer's own step on the P-element tensor, then the updated
  partition is copied into the flat 16-bit buffer and all-gathered in place
  (`allgather_bucket_size` only sizes the chunks of that all-gather).

Stage 3 (`DeepSpeedZeroOptimizer_Stage3`, stage3.py; partition_parameters.py; partitioned_param_coordinator.py):
- every trainable parameter is partitioned itself: its `ds_tensor` holds ceil(numel / N) elements
  (`_padding_size` pads numel to a multiple of N), a view of the rank's flat 16-bit buffer
  (`lp_param_buffer`, P = the sum of those elements, in the model's dtype);
- a parameter of at most `stage3_param_persistence_threshold` elements (100,000 by default;
  `ds_persist`, partition_parameters.py `_convert_to_zero_parameters` and parameter_offload.py
  `mark_persistent_parameters`) also keeps its whole data on every rank, all step, besides its
  partition; the others are empty placeholders between uses;
- the fp32 partition the optimizer steps (`fp32_partitioned_groups_flat`, P elements) is a copy of the
  flat buffer, also for an fp32 model: `_create_fp32_partitions` would reuse an fp32 buffer when
  `tensor.device == self.device`, but `self.device` is the accelerator's device *name* (a str,
  `current_device_name()`) and torch 2.13 compares a torch.device with a str as unequal, so it always
  clones (checked on a real run: two storages); the optimizer's states are those of that one
  P-element tensor;
- gradients: with `contiguous_gradients` (default) the reduction bucket of `reduce_bucket_size`
  elements in the communication dtype (the model's; `IPGBucketZ3`, allocated when the optimizer is
  built) and the gradient partitions (`grad_partitions_flat_buffer`, P elements in the gradient
  accumulation dtype, the model's unless `grad_accum_dtype` says otherwise) live all step; a
  parameter's gradient is copied into the bucket by its hook and freed (`param.grad = None`), the
  reduced bucket's slice of this rank added into its partition. The fp32 gradient the optimizer steps
  (`_prepare_fp32_grad_for_sub_group`: the flattened partitions, P elements) is the model state
  `gradients`, as at stages 1-2; it is freed after the sub-group's step (`.grad = None`);
- non-persistent parameters are all-gathered per module for compute (`_all_gather_params`: a buffer
  of ceil(numel / N) * N elements per parameter in the model's dtype) and released after the module
  unless they are used again within `stage3_max_reuse_distance` elements of parameters
  (`__params_to_release`: the trace of the step is walked from the current module; default 1e9). With
  a model whose trainable elements are below half that distance, a parameter gathered in the forward
  is used again in its backward within it: every gathered parameter stays until its module's
  backward (the forward ends with all of them gathered); otherwise the running module and the
  prefetched ones (`stage3_prefetch_bucket_size`, at most `stage3_max_live_parameters`) are live.

The estimate describes one rank (`rank`, default the last: the partition that owns the head's
gradients, reduced first, so its gradient partition appears earliest in the backward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from ..errors import ParameterError
from ..tensors import ParamTensor
from ._base import Buffer, EngineBuffers, ModelStateBytes, ParallelStrategy, Placement, ceil_div

__all__ = ["DS_DEFAULTS", "DeepSpeedConfig", "DeepSpeedZeRO", "flat_layout", "params_in_partition_numel"]

ALIGNMENT_FACTOR = 2  # stage_1_and_2.py: nccl_start_alignment_factor = 2 (4-byte alignment / sizeof(fp16))


@dataclass(frozen=True)
class DeepSpeedConfig:
    """The zero_optimization settings that size memory, with DeepSpeed 0.19's defaults (config.py)."""

    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    contiguous_gradients: bool = True
    overlap_comm: bool | None = None  # None: DeepSpeed's default, true at stage 3 only
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_param_persistence_threshold: int = 100_000
    stage3_max_reuse_distance: int = 1_000_000_000
    offload_device: str = "none"  # where offloaded states go: none, cpu, nvme (a figure only)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("contiguous_gradients",):
                if not isinstance(value, bool):
                    raise ParameterError(f"{{{f.name}}} must be true or false, got {value!r}", f.name)
            elif f.name == "overlap_comm":
                if value is not None and not isinstance(value, bool):
                    raise ParameterError(f"{{{f.name}}} must be true or false, got {value!r}", f.name)
            elif f.name == "offload_device":
                if value not in ("none", "cpu", "nvme"):
                    raise ParameterError(f"invalid {{{f.name}}} {value!r}; valid: none, cpu, nvme", f.name)
            elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 48:
                raise ParameterError(f"{{{f.name}}} must be a whole number of elements >= 0, got {value!r}", f.name)
        if self.reduce_bucket_size < 1:
            raise ParameterError(
                "{reduce_bucket_size} must be at least 1 element (DeepSpeed: gt=0)", "reduce_bucket_size"
            )
        if self.allgather_bucket_size % ALIGNMENT_FACTOR:
            raise ParameterError(
                f"{{allgather_bucket_size}} must be a multiple of {ALIGNMENT_FACTOR} (DeepSpeed asserts it), "
                f"got {self.allgather_bucket_size}",
                "allgather_bucket_size",
            )

    def overlap(self, stage: int) -> bool:
        return stage == 3 if self.overlap_comm is None else self.overlap_comm


DS_DEFAULTS = DeepSpeedConfig()


def flat_layout(numel: int, gpus: int) -> tuple[int, int]:
    """(padded elements of the flat buffer, elements of one partition) for `numel` over `gpus` ranks."""
    alignment = ALIGNMENT_FACTOR * gpus
    padded = ceil_div(numel, alignment) * alignment
    return padded, padded // gpus


def params_in_partition_numel(numels: Sequence[int], partition: int, rank: int) -> int:
    """Elements of every parameter overlapping partition `rank` (`get_partition_info`): what
    `grads_in_partition` holds (whole parameters, also where they straddle a boundary)."""
    start, end = partition * rank, partition * (rank + 1)
    total, offset = 0, 0
    for n in numels:
        if start <= offset < end or offset < start < offset + n:
            total += n
        offset += n
    return total


@dataclass
class _Bound:
    """What the strategy knows of the run once bound to a model and precision."""

    numels: tuple[int, ...]  # trainable parameters, in model order (DeepSpeed's flat order)
    names: tuple[str, ...]
    param_bytes: int  # bytes per element of the model's weights (bf16/fp16 or fp32)
    grad_bytes: int
    largest_layer: int = 0
    all_numels: tuple[int, ...] = field(default_factory=tuple)


class DeepSpeedZeRO(ParallelStrategy):
    """DeepSpeed's ZeRO stage 1, 2 or 3 over `gpus` ranks (module docstring), rank `rank`."""

    def __init__(
        self,
        gpus: int,
        stage: int,
        offload: str = "none",
        config: DeepSpeedConfig = DS_DEFAULTS,
        rank: int | None = None,
    ) -> None:
        super().__init__(gpus)
        if stage not in (1, 2, 3):
            raise ParameterError(f"invalid ZeRO stage {stage!r} for DeepSpeed; valid: 1, 2, 3", "zero")
        config.validate()
        if rank is None:
            rank = gpus - 1
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < gpus:
            raise ParameterError(f"{{rank}} must be a whole number from 0 to {gpus - 1}, got {rank!r}", "rank")
        self.stage = stage
        self.offload = offload
        self.config = config
        self.rank = rank
        self.name = f"DeepSpeed ZeRO-{stage}" + ("" if offload == "none" else f" + {offload} offload")
        self._bound: _Bound | None = None

    # -- binding: the model's tensors and dtypes ---------------------------------------------
    def bind(self, tensors: Sequence[ParamTensor], param_bytes: int, grad_bytes: int) -> None:
        from . import largest_layer_parameters

        trainable = [t for t in tensors if t.trainable]
        self._bound = _Bound(
            tuple(t.numel for t in trainable),
            tuple(t.name for t in trainable),
            param_bytes,
            grad_bytes,
            largest_layer=largest_layer_parameters(tensors),
            all_numels=tuple(t.numel for t in tensors),
        )

    @property
    def trainable_numel(self) -> int:
        assert self._bound is not None
        return sum(self._bound.numels)

    @property
    def partition(self) -> int:
        """Elements of one rank's partition of the flat buffer."""
        return flat_layout(self.trainable_numel, self.gpus)[1]

    def optimizer_tensors(self, trainable: Sequence[ParamTensor]) -> list[ParamTensor]:
        """What the wrapped optimizer steps: the rank's flat fp32 partition, one tensor."""
        if not trainable:
            return []
        if self.stage == 3:  # one partition per parameter, flattened (module docstring)
            numel = sum(ceil_div(t.numel, self.gpus) for t in trainable)
        else:
            numel = flat_layout(sum(t.numel for t in trainable), self.gpus)[1]
        return [ParamTensor("deepspeed fp32 partition", (numel,), "float32", True)]

    # -- model states ---------------------------------------------------------------------------
    def place(self, states: ModelStateBytes) -> Placement:
        if self._bound is None:
            # unbound (the ZeRO paper's arithmetic): partition each state over the ranks
            params = ceil_div(states.parameters, self.gpus) if self.stage >= 3 else states.parameters
            grads = ceil_div(states.gradients, self.gpus) if self.stage >= 2 else states.gradients
            return self._offloaded(params, grads, ceil_div(states.optimizer_states, self.gpus), states)
        b = self._bound
        padded, _part = flat_layout(self.trainable_numel, self.gpus)
        frozen = sum(b.all_numels) - sum(b.numels)
        if self.stage <= 2:
            params = padded * b.param_bytes + frozen * b.param_bytes
            grads = self._grads_at_step()
        else:
            # the flat 16-bit partitions plus the persistent parameters' whole data; the step's fp32
            # gradient partition (module docstring)
            held = self._stage3_partition_numel() + self._stage3_persistent_numel()
            params = held * b.param_bytes + frozen * b.param_bytes
            grads = self._stage3_partition_numel() * 4
        # states.optimizer_states: the optimizer's states on the flat partition, plus the fp32 copy
        return self._offloaded(params, grads, states.optimizer_states, states)

    def _offloaded(self, params: int, grads: int, optimizer_states: int, states: ModelStateBytes) -> Placement:
        cpu = 0
        if self.offload != "none":
            cpu = optimizer_states + ceil_div(states.fp32_gradients, self.gpus)
            optimizer_states = 0
            if self.stage >= 2:
                grads = 0
        if self.offload == "optimizer+parameters":
            cpu += params
            params = 0
        return Placement(params, grads, optimizer_states, cpu)

    def _grads_at_step(self) -> int:
        """Gradient bytes in the optimizer's step: the fp32 gradient partition it steps
        (`single_partition_of_fp32_groups[i].grad`); the 16-bit gradients (stage 1) and
        `grads_in_partition` (stage 2) are released before (`free_grad_in_param_list`,
        `averaged_gradients[i] = None`)."""
        return self.partition * 4

    def _stage3_partition_numel(self) -> int:
        """P: the rank's flat 16-bit buffer, ceil(numel / N) elements of every trainable parameter."""
        b = self._bound
        assert b is not None
        return sum(ceil_div(n, self.gpus) for n in b.numels)

    def _stage3_persistent_numel(self) -> int:
        """Elements of the parameters kept whole (`ds_persist`: at most the persistence threshold)."""
        b = self._bound
        assert b is not None
        return sum(n for n in b.numels if n <= self.config.stage3_param_persistence_threshold)

    def _stage3_gathered_bytes(self) -> int:
        """The gathered parameters live at the end of the forward (module docstring): every
        non-persistent parameter's all-gather buffer when the reuse distance spans the step, else
        those of the largest layer twice (the running module and the prefetched one)."""
        b = self._bound
        assert b is not None
        threshold = self.config.stage3_param_persistence_threshold
        gathered = [ceil_div(n, self.gpus) * self.gpus for n in b.numels if n > threshold]
        if not gathered:
            return 0
        if 2 * self.trainable_numel < self.config.stage3_max_reuse_distance:
            return sum(gathered) * b.param_bytes
        return min(sum(gathered), 2 * b.largest_layer) * b.param_bytes

    # -- the step's buffers ---------------------------------------------------------------------
    def buffers(self, sizes: EngineBuffers) -> list[Buffer]:
        """Stage 3's reduction bucket and gradient partitions, allocated when the optimizer is built
        (stage3.py `_setup_for_real_optimizer`) and kept; stages 1 and 2 allocate their bucket in each
        backward (gradient_residency, itemized())."""
        b = self._bound
        if self.stage != 3 or b is None:
            return []
        out = []
        if self.config.contiguous_gradients:
            out.append(self._bucket("allocated with the optimizer and kept (stage3.py, IPGBucketZ3)"))
        out.append(
            Buffer(
                "deepspeed_grad_partitions",
                self._stage3_partition_numel() * b.grad_bytes,
                "ZeRO-3 gradient partitions (grad_partitions_flat_buffer): the rank's reduced gradients, "
                "allocated with the optimizer and kept",
            )
        )
        return out

    def itemized(self) -> list[Buffer]:
        """Buffers to name in the estimate that the step timeline already counts (stages 1-2's bucket)."""
        if self.stage == 3 or self._bound is None or not self.reduce_bucket_bytes():
            return []
        return [self._bucket("from the backward's first gradient hook to its end (setup_buckets)")]

    def _bucket(self, when: str) -> Buffer:
        copies = 2 if self.config.overlap(self.stage) and self.stage < 3 else 1
        return Buffer(
            "deepspeed_reduce_bucket",
            self.reduce_bucket_bytes(),
            f"ZeRO gradient reduction bucket: reduce_bucket_size={self.config.reduce_bucket_size:,} elements"
            f"{' x 2 (overlap_comm)' if copies == 2 else ''}, {when}",
        )

    def phase_buffers(self) -> dict[str, list[Buffer]]:
        """Stage 3: the non-persistent parameters gathered for compute (`_stage3_gathered_bytes`),
        counted through the forward and the backward at their largest (the forward's end)."""
        b = self._bound
        if b is None or self.stage != 3:
            return {}
        nbytes = self._stage3_gathered_bytes()
        if not nbytes:
            return {}
        spans = 2 * self.trainable_numel < self.config.stage3_max_reuse_distance
        gathered = Buffer(
            "deepspeed_zero3_gathered_parameters",
            nbytes,
            "every non-persistent parameter, gathered in the forward and kept until its backward "
            f"(stage3_max_reuse_distance={self.config.stage3_max_reuse_distance:,} spans the step)"
            if spans
            else "full parameters of the running and the prefetched layer, gathered for compute",
        )
        forward = [gathered]
        flat = self._stage3_prefetch_flat_bytes()
        if flat:
            forward.append(
                Buffer(
                    "deepspeed_zero3_prefetch_flat_buffer",
                    flat,
                    "the forward's coalesced all-gather of the prefetched parameters (partition_parameters.py "
                    "`_all_gather_dtype`): one flat buffer, unpacked by `torch.cat` per parameter in the "
                    "handle's wait and kept while the handle is registered for a parameter not yet waited",
                )
            )
        return {"forward": forward, "backward": [gathered]}

    def _stage3_prefetch_flat_bytes(self) -> int:
        """The flat all-gather buffer of the forward's prefetch (measured: it is what put a partitioned
        ZeRO-3 forward 12 % above the gathered parameters alone).

        DeepSpeed fetches the first module's parameters alone, then prefetches the next ones in one
        coalesced all-gather (partitioned_param_coordinator.py `fetch_sub_module`: up to
        `stage3_prefetch_bucket_size` elements, bounded by `stage3_max_live_parameters`), into a flat
        buffer of sum(ceil(numel / N)) * N elements (`_all_gather_dtype`); the handle's `wait` copies
        each parameter out of it (`param.data = torch.cat(partitions)`), and the handle holding its
        views stays in the in-flight registry until the last of its parameters is waited, i.e. until
        the last module of the forward runs. Counted only where the whole model is one prefetch and is
        kept gathered for the backward (the reuse distance spans the step, measured); the first module
        is taken to be the first trainable tensor (the embedding)."""
        b = self._bound
        assert b is not None
        threshold = self.config.stage3_param_persistence_threshold
        rest = [n for n in b.numels[1:] if n > threshold]
        if not rest or 2 * self.trainable_numel >= self.config.stage3_max_reuse_distance:
            return 0
        numel = sum(ceil_div(n, self.gpus) for n in rest) * self.gpus
        if numel > min(self.config.stage3_prefetch_bucket_size, self.config.stage3_max_live_parameters):
            return 0
        return numel * b.param_bytes

    @property
    def warnings(self) -> list[str]:
        b = self._bound
        if self.stage == 3 and b is not None and self._stage3_gathered_bytes():
            return [
                "DeepSpeed ZeRO-3: the gathered parameters are counted at their largest through the forward "
                "and the backward (the backward releases them module by module)"
            ]
        return []

    def reduce_bucket_bytes(self) -> int:
        """The reduction bucket(s): `reduce_bucket_size` elements in the gradient dtype, two with
        overlap_comm, whatever the model's size (`setup_buckets`, contiguous_gradients)."""
        b = self._bound
        if b is None:  # one GPU too: setup_buckets does not look at the world size
            return 0
        if not (self.config.contiguous_gradients or self.stage == 3):
            return 0
        # stages 1-2 double it with overlap_comm (setup_buckets); stage 3 keeps one per dtype
        copies = 2 if self.config.overlap(self.stage) and self.stage < 3 else 1
        return copies * self.config.reduce_bucket_size * b.grad_bytes

    def gradient_residency(self) -> Callable[[Sequence[str]], int] | None:
        """Live gradient bytes in the backward, given the parameters whose gradients were produced so
        far, in backward order (their hooks have run; module docstring): the reduction bucket from the
        first hook on; stage 1 every gradient produced; stage 2 `grads_in_partition` from the first
        reduction of a bucket that holds a gradient of this rank's partition (a bucket is reduced when
        the next gradient does not fit in it, or when the backward ends)."""
        b = self._bound
        if b is None:
            return None
        if self.stage == 3:  # the bucket and the partitions are buffers kept all step (buffers())
            return lambda done: 0
        bucket = self.reduce_bucket_bytes()
        numel = dict(zip(b.names, b.numels))
        if self.stage == 1 or self.gpus == 1:
            return lambda done: (sum(numel.get(n, 0) for n in done) * b.grad_bytes + bucket) if done else 0
        part = self.partition
        in_partition = params_in_partition_numel(b.numels, part, self.rank) * b.grad_bytes
        start, end = part * self.rank, part * (self.rank + 1)
        owned_names: set[str] = set()
        offset = 0
        for name, n in zip(b.names, b.numels):
            if offset < end and offset + n > start:
                owned_names.add(name)
            offset += n
        limit = self.config.reduce_bucket_size
        first_reduction: list[int | None] = [None]  # hooks run when this rank's partition first appears
        walked = [0, 0, False]  # hooks walked, elements in the bucket, whether it holds an owned gradient

        def resident(done: Sequence[str]) -> int:
            if not done:
                return 0
            if first_reduction[0] is None:
                while walked[0] < len(done):
                    n = numel.get(done[walked[0]], 0)
                    if walked[1] and walked[1] + n > limit:  # the bucket is reduced before this one goes in
                        if walked[2]:
                            first_reduction[0] = walked[0] + 1
                            break
                        walked[1], walked[2] = 0, False
                    walked[1] += n
                    walked[2] = walked[2] or done[walked[0]] in owned_names
                    walked[0] += 1
            reduced = first_reduction[0] is not None and len(done) >= first_reduction[0]
            return bucket + (in_partition if reduced else 0)

        return resident

    def step_temporaries(self, whole_model_bytes: int) -> int:
        if self.optimizer_on_host:
            return 0
        if self._bound is not None:
            return whole_model_bytes  # already computed on the flat partition (optimizer_tensors)
        return ceil_div(whole_model_bytes, self.gpus)

    @property
    def gathers_parameters_per_layer(self) -> bool:
        return self.stage == 3

    @property
    def states_as_flat_buffer(self) -> bool:
        return True

    @property
    def optimizer_on_host(self) -> bool:
        return self.offload != "none"
