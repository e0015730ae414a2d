"""The engines memprof.validate_distributed runs besides FSDP2 and DDP: DeepSpeed ZeRO 1-3.

Each engine is a `wrap` (runs on every rank after `init_process_group("gloo")`), a `step` when its
loop differs from `loss.backward(); optimizer.step()`, and the estimate's knobs for one rank; they are
registered in `memprof.validate_distributed.ENGINES`.

DeepSpeed (0.19) trains on the CPU with `DS_ACCELERATOR=cpu` (set here before deepspeed is imported):
its communication falls back to the gloo process group the worker opened. Its first run on a machine
compiles the shared-memory communication op (deepspeed/ops/csrc/cpu/comm, ~45 s on 2 cores) into
torch's extension cache (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions); later runs load it.
The case's options are the ds_config's `zero_optimization` settings (e.g. reduce_bucket_size); the
optimizer is torch's AdamW (`"torch_adam": true`), stepping the rank's flat fp32 partition.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["deepspeed_config", "deepspeed_rank_kwargs", "step_deepspeed", "wrap_deepspeed"]

# ds_config precision sections per memprof precision (what --ds-config reads back: configs.py)
_DS_PRECISION = {"32-true": {}, "bf16-master": {"bf16": {"enabled": True}}}


def deepspeed_config(case: Any) -> dict[str, Any]:
    """The ds_config of a case: its micro-batch, precision, ZeRO stage and zero_optimization options."""
    if case.precision not in _DS_PRECISION:
        raise ValueError(f"deepspeed cases run {', '.join(_DS_PRECISION)}, not {case.precision}")
    return {
        "train_micro_batch_size_per_gpu": case.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": case.zero, **dict(case.options)},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        **_DS_PRECISION[case.precision],
    }


def wrap_deepspeed(model: Any, case: Any) -> tuple[Any, Any]:
    """`deepspeed.initialize` on the tiny model: (the engine, the torch optimizer it steps)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import importlib
    import logging

    deepspeed = importlib.import_module("deepspeed")  # an optional dependency, untyped
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=deepspeed_config(case)
    )
    # memprof.track takes torch optimizers: the wrapped one that steps the rank's flat fp32 partition
    return engine, optimizer.optimizer


def step_deepspeed(engine: Any, optimizer: Any, inputs: dict) -> None:
    """DeepSpeed's loop: `engine.backward(loss)` and `engine.step()` (which zeroes the gradients)."""
    _show_zero3_buffers(engine)
    loss = engine(**inputs).loss
    engine.backward(loss)
    engine.step()
    _show_zero3_master_weights(engine, optimizer)


def _show_zero3_master_weights(engine: Any, optimizer: Any) -> None:
    """ZeRO-3 hands the torch optimizer its fp32 partitions only for the step (stage3.py
    `_optimizer_step`: `param_groups[g]["params"] = [fp32_param]`, then `[]`), so between steps the
    optimizer memprof.track is given names no parameter and the master weights would be counted
    as an unknown storage from their first read in the step. Putting them back after each step (the
    next step sets them again; nothing else reads the list) lets the profile count them as optimizer
    states from the start, as it does at stages 1-2; no tensor is allocated."""
    zero = getattr(engine, "optimizer", None)
    if zero is None or type(zero).__name__ != "DeepSpeedZeroOptimizer_Stage3" or zero.offload_optimizer:
        return
    for sub_group, fp32 in enumerate(zero.fp32_partitioned_groups_flat):
        group = optimizer.param_groups[zero.sub_group_to_group_id[sub_group]]
        if not group["params"]:
            group["params"] = [fp32]


def _show_zero3_buffers(engine: Any) -> None:
    """ZeRO-3 allocates its reduction bucket(s) and the gradient partitions when the optimizer is built
    (stage3.py `_setup_for_real_optimizer`) and keeps them; memprof.track sees a storage that existed
    before its region only from the first operator that reads it (memprof.profiler.tracker), which for
    these is in the backward. One read of each (an alias: no allocation) at the start of the step
    makes the profile count them from the start, as max_memory_allocated would on a GPU."""
    import torch

    zero = getattr(engine, "optimizer", None)
    if zero is None or type(zero).__name__ != "DeepSpeedZeroOptimizer_Stage3":
        return
    tensors = [getattr(b, "buffer", None) for b in getattr(zero, "ipg_buckets", {}).values()]
    tensors.append(getattr(zero, "grad_partitions_flat_buffer", None))
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            torch.ops.aten.alias.default(t)


def deepspeed_rank_kwargs(case: Any, rank: int) -> dict[str, Any]:
    """The estimate's knobs for `rank`: the ZeRO stage and DeepSpeed's engine with the case's options."""
    from memprof.estimators.parallel.deepspeed import DeepSpeedConfig, DeepSpeedZeRO

    config = DeepSpeedConfig(**dict(case.options))
    return {"zero": case.zero, "parallel": DeepSpeedZeRO(case.nproc, case.zero, config=config, rank=rank)}


# ------------------------------------------------------------------------------ pipeline parallel
#
# torch.distributed.pipelining on the tiny model, split by hand as torchtitan does (a stage module per
# rank holding its blocks; memprof.estimators.parallel.pipeline.split_layers decides which): the first
# stage embeds and runs its blocks, the last runs its blocks, the final norm and the head, and the
# schedule's loss_fn is the model's own loss (transformers' ForCausalLMLoss). Rotary cos / sin are
# recomputed on each stage (a (1, s, head_dim) pair); sdpa attention with no mask is causal, as the
# model's own forward runs it. The case's options: ("schedule", "gpipe" | "1f1b"), ("microbatches", M);
# case.batch_size is the micro-batch, the step feeds M of them.


class _Stage:
    """Builds the stage module of `rank` for a tiny Llama-like causal LM (lazily imports torch)."""

    @staticmethod
    def build(model: Any, rank: int, stages: int) -> Any:
        import torch

        from memprof.estimators.parallel.pipeline import split_layers

        inner = model.model
        layers = list(inner.layers)
        mine = split_layers(len(layers), stages)[rank]
        first, last = rank == 0, rank == stages - 1

        class StageModule(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed_tokens: Any = inner.embed_tokens if first else None
                self.rotary_emb = inner.rotary_emb
                self.layers = torch.nn.ModuleList(layers[i] for i in mine)
                self.norm: Any = inner.norm if last else None
                self.lm_head: Any = model.lm_head if last else None

            def forward(self, x: Any) -> Any:
                h = self.embed_tokens(x) if self.embed_tokens is not None else x
                pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
                cos_sin = self.rotary_emb(h, position_ids=pos)
                for layer in self.layers:
                    h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=cos_sin)
                if self.lm_head is not None:
                    h = self.lm_head(self.norm(h))
                return h

        return StageModule()


def wrap_pipeline(model: Any, case: Any) -> tuple[Any, Any]:
    """The rank's stage module (with its schedule attached as `.schedule`) and its AdamW."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    rank, stages = dist.get_rank(), dist.get_world_size()
    module = _Stage.build(model, rank, stages)
    vocab = model.config.vocab_size
    micro = int(case.option("microbatches", 2))
    shape = (case.batch_size, case.seq_len)
    hidden = model.config.hidden_size
    example = torch.zeros(shape, dtype=torch.long) if rank == 0 else torch.zeros((*shape, hidden), dtype=torch.float32)
    stage = PipelineStage(module, rank, stages, torch.device("cpu"), input_args=(example,))

    def loss_fn(logits: Any, labels: Any) -> Any:
        return model.loss_function(logits=logits, labels=labels, vocab_size=vocab)

    schedule_cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[case.option("schedule", "1f1b")]
    module.schedule = schedule_cls(stage, n_microbatches=micro, loss_fn=loss_fn)
    module.stage_rank, module.stages, module.microbatches = rank, stages, micro
    return module, torch.optim.AdamW(module.parameters(), lr=1e-3)


def step_pipeline(module: Any, optimizer: Any, inputs: dict) -> None:
    """One schedule step over M micro-batches (the batch repeated), then the optimizer's step."""
    import torch

    _register_schedule_buffers(module.schedule._stage)
    micro = module.microbatches
    ids = torch.cat([inputs["input_ids"]] * micro)
    labels = torch.cat([inputs["labels"]] * micro)
    if module.stage_rank == 0:
        module.schedule.step(ids)
    elif module.stage_rank == module.stages - 1:
        module.schedule.step(target=labels, losses=[])
    else:
        module.schedule.step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _register_schedule_buffers(stage: Any) -> None:
    """Count the stage's receive buffers from the start of a tracked step: they exist from the first
    step on (made by `_prepare_forward_infra` / `_prepare_backward_infra`), but the tracker would see
    each only when an operation first reads it (memprof.profiler.tracker: "a storage first seen as the
    input of an op is counted from that moment")."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    from memprof.profiler.tracker import INPUT, StorageTracker

    trackers = [m for m in _get_current_dispatch_mode_stack() if isinstance(m, StorageTracker)]
    infos = [*stage.args_recv_info.values(), *stage.grad_recv_info.values()]
    for tracker in trackers:
        for recv in infos:
            for info in recv:
                if getattr(info, "buffer", None) is not None:
                    tracker.classify(info.buffer, INPUT, only_new=True)


def pipeline_rank_kwargs(case: Any, rank: int) -> dict[str, Any]:
    """The estimate's knobs for `rank`: its stage of the schedule, no data parallelism."""
    from memprof.estimators.parallel.pipeline import PipelineStage

    stage = PipelineStage(case.nproc, rank, case.option("schedule", "1f1b"), int(case.option("microbatches", 2)))
    return {"gpus": 1, "pipeline": stage}


# ------------------------------------------------------------------------------ tensor parallel
#
# DTensor tensor parallelism (torch.distributed.tensor.parallel.parallelize_module) over every rank,
# Megatron's plan for a Llama-like block: q/k/v and gate/up ColwiseParallel (weights split by output
# rows), o and down RowwiseParallel (split by input columns, the output all-reduced); embeddings, norms
# and the head replicated. ColwiseParallel hands the local shard on (use_local_output=True), so the
# attention runs on the rank's heads.


def wrap_tensor_parallel(model: Any, case: Any) -> tuple[Any, Any]:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    plan = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    for layer in model.model.layers:
        parallelize_module(layer, mesh, plan)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def tensor_parallel_rank_kwargs(case: Any, rank: int) -> dict[str, Any]:
    return {"gpus": 1, "tp": case.nproc}
