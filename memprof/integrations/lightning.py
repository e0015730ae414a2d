"""memprof inside a PyTorch Lightning `Trainer`: predict before step 1, measure chosen steps, log both.

    from memprof.integrations.lightning import MemprofCallback

    trainer = pl.Trainer(max_steps=100, precision="bf16-mixed", callbacks=[MemprofCallback()])

The same behaviour as memprof.integrations.transformers.MemprofCallback, read from Lightning:
- the model: the Hugging Face model inside the LightningModule (the first submodule with a
  `config.model_type`; the module's own parameters must be exactly that model's);
- precision: `trainer.precision` ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true" are
  memprof's own names; others are named in a warning and the peak is not predicted);
- strategy (`strategy_knobs`): a single device; DDP as `gpus` = world size (its gradient buckets);
  DeepSpeed through its config (`knobs_from_ds_config`: ZeRO stage, offload, master-weight precision);
  FSDP as memprof's engine fsdp (FULL_SHARD zero 3, SHARD_GRAD_OP zero 2; NO_SHARD is DDP); any other strategy
  is named in a warning and the figure is for one device without sharding;
- `accumulate_grad_batches`, the optimizer `configure_optimizers` returned (registry match by class
  and hyperparameters; several optimizers are named in a warning), gradient checkpointing as the
  Hugging Face model reports it, the device;
- the batch and sequence from the first batch (`on_train_batch_start` sees it before step 1's
  forward), or `max_seq_len`.
Profiled steps (default: the second optimizer step) run under `memprof.track`; predicted vs measured
is logged with `pl_module.log_dict` (the trainer's loggers, `trainer.callback_metrics`) as
`memprof/predicted_peak_bytes`, `memprof/measured_peak_bytes`, `memprof/peak_error_pct`, and saved under
`<trainer.default_root_dir>/memprof/`. Every failure inside the callback is a warning.

Lightning's automatic optimization calls `zero_grad` inside the next step's closure, after its
forward: the previous step's gradients are alive during that forward. memprof's step model calls
zero_grad after the step, so the callback adds the gradients to every forward moment of the estimate's
timeline (from the second step on, which is why step 2 is the default); the larger of that and the
estimate's own peak is the prediction (`Monitor.peak_of`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - the unified package
    try:
        import lightning.pytorch as pl  # type: ignore[no-redef, import-not-found, unused-ignore]
    except ImportError as _exc:
        raise ImportError(
            "memprof.integrations.lightning needs PyTorch Lightning: pip install pytorch-lightning (or lightning)"
        ) from _exc

from memprof.integrations._monitor import (
    MemprofCallbackWarning,
    Monitor,
    guarded,
    input_shape,
    registry_of,
    set_impl,
)

__all__ = ["MemprofCallback", "MemprofCallbackWarning"]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
SINGLE_DEVICE = ("SingleDeviceStrategy",)


def _hf_model(module: Any) -> Any:
    """The first submodule (the module itself included) with a Hugging Face config."""
    for sub in module.modules():
        if getattr(getattr(sub, "config", None), "model_type", None):
            return sub
    return None


class MemprofCallback(pl.Callback):
    """Predict the Lightning run's peak before step 1, profile `profile_steps`, log predicted vs
    measured. Arguments as memprof.integrations.transformers.MemprofCallback."""

    def __init__(
        self,
        max_seq_len: int | None = None,
        *,
        profile_steps: Iterable[int] = (2,),
        gpu: str | None = None,
        out_dir: str | None = None,
    ) -> None:
        from memprof.estimators.errors import ParameterError

        bad = isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1
        if max_seq_len is not None and bad:
            raise ParameterError(f"{{max_seq_len}} must be a whole number >= 1, got {max_seq_len!r}", "max_seq_len")
        self.max_seq_len = max_seq_len
        self._profile_steps = tuple(profile_steps)
        self._gpu = gpu
        self._out_dir = out_dir
        self.monitor = Monitor(profile_steps=self._profile_steps, gpu=gpu, out_dir=out_dir)
        self._planned = False
        self._accumulate = 1

    @property
    def estimate(self) -> Any:
        return self.monitor.estimate

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.monitor.results

    @property
    def messages(self) -> list[str]:
        return self.monitor.messages

    @guarded
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        out_dir = self._out_dir if self._out_dir is not None else os.path.join(trainer.default_root_dir, "memprof")
        self.monitor.close()  # a step of an earlier fit() that raised
        self.monitor = Monitor(
            profile_steps=self._profile_steps, gpu=self._gpu, out_dir=out_dir or None, grads_through_forward=True
        )
        self._planned = False
        self._model: Any = None
        self._accumulate = int(trainer.accumulate_grad_batches or 1)
        knobs: dict[str, Any] = {"grad_accumulation": self._accumulate}
        prov: dict[str, str] = {"grad_accumulation": f"Trainer(accumulate_grad_batches={self._accumulate})"}

        precision = str(trainer.precision)
        if precision in PRECISIONS:
            knobs["precision"] = precision
            prov["precision"] = f"Trainer(precision={precision!r})"
        else:
            self.monitor.note(f"precision {precision!r} is not modelled ({', '.join(PRECISIONS)}): no prediction")
        for message in strategy_knobs(trainer.strategy, int(getattr(trainer, "world_size", 1) or 1), knobs, prov):
            self.monitor.note(message)
        device = trainer.strategy.root_device.type
        knobs["device"] = "cpu" if device == "cpu" else "cuda"
        # automatic optimization (pytorch_lightning/loops/optimization/automatic.py, Closure.closure)
        # keeps what training_step returns (ClosureResult: the loss, and detached extras of a dict):
        # `return self.model(**batch).loss` frees the output before backward. zero_grad
        # (LightningModule.optimizer_zero_grad: optimizer.zero_grad(), set_to_none=True) runs after the
        # next forward: Monitor(grads_through_forward=True). The profiled step tells what the module does.
        knobs["keep_output"] = False
        prov["keep_output"] = "training_step returns the loss (Lightning's closure keeps what it returns)"
        if device not in ("cpu", "cuda"):
            self.monitor.note(f"device {device!r} is not modelled (cuda, cpu): no prediction")
            knobs.pop("precision", None)

        optimizers = list(trainer.optimizers)
        if len(optimizers) != 1:
            self.monitor.note(f"{len(optimizers)} optimizers: memprof predicts one optimizer per model")
        elif "precision" in knobs:
            name, options = registry_of(optimizers[0])
            inner = getattr(optimizers[0], "optimizer", optimizers[0])
            cls = f"{type(inner).__module__}.{type(inner).__qualname__}"
            if name is None:
                self.monitor.note(f"optimizer {cls} is not in memprof's registry: states and the peak not predicted")
            else:
                knobs["optimizer"] = name
                knobs.update(options)
                set_impl(inner, knobs)
                prov["optimizer"] = f"configure_optimizers: {cls}"

        model = _hf_model(pl_module)
        if model is None:
            self.monitor.note(f"{type(pl_module).__name__} holds no Hugging Face model: the peak is not predicted")
            return
        ours = {id(p) for p in model.parameters()}
        extra = [n for n, p in pl_module.named_parameters() if id(p) not in ours]
        if extra:
            self.monitor.note(
                f"{type(pl_module).__name__} has parameters outside its Hugging Face model ({extra[0]}, ...): "
                "the peak is not predicted"
            )
            return
        checkpointing = getattr(model, "is_activation_checkpointing", None)
        if checkpointing is None:
            checkpointing = getattr(model, "is_gradient_checkpointing", False)
        knobs["checkpointing"] = "full" if checkpointing else "none"
        prov["checkpointing"] = f"{type(model).__name__}.is_gradient_checkpointing={bool(checkpointing)}"
        attn = getattr(model.config, "_attn_implementation", None)
        from memprof.comparison.observed import ATTENTION_NAMES

        if attn in ATTENTION_NAMES:
            knobs["attention"] = ATTENTION_NAMES[attn]
        if self.max_seq_len is not None:
            knobs["seq_len"] = self.max_seq_len
            prov["seq_len"] = f"MemprofCallback(max_seq_len={self.max_seq_len})"
        self._model = model
        self.monitor.setup(model, knobs, prov)

    @guarded
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._planned:
            self._planned = True
            shape = input_shape(
                (batch,) if not isinstance(batch, dict) else (), batch if isinstance(batch, dict) else {}
            )
            if shape is not None:
                self.monitor.provenance["batch_size"] = f"the first batch's shape {list(shape)}"
                self.monitor.predict(shape[0], self.max_seq_len or shape[1])
            else:
                self.monitor.note("the first batch holds no tensor: the peak is not predicted")
        step = trainer.global_step + 1
        if batch_idx % self._accumulate == 0 and self.monitor.wants(step):
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            self.monitor.begin_step(step, self._model or pl_module, optimizer)

    @guarded
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % self._accumulate != 0:
            return
        result = self.monitor.end_step()
        if result is None:
            return
        metrics = self.monitor.metrics(result)
        if metrics:  # Lightning's own logging: the loggers and trainer.callback_metrics
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    @guarded
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.monitor.close()


# FSDP's ShardingStrategy names -> (engine, zero) (memprof.integrations.configs; hybrid sharding is not modelled)
_FSDP_STAGES = {"FULL_SHARD": ("fsdp", 3), "SHARD_GRAD_OP": ("fsdp", 2), "NO_SHARD": ("ddp", 0)}


def strategy_knobs(strategy: Any, world_size: int, knobs: dict[str, Any], prov: dict[str, str]) -> list[str]:
    """Set the sharding knobs a Lightning strategy implies; returns the warnings to give."""
    name = type(strategy).__name__
    if name in SINGLE_DEVICE:
        return []
    if name == "DDPStrategy":
        knobs["gpus"] = world_size
        prov["gpus"] = f"DDPStrategy, world size {world_size} (DDP's gradient buckets)"
        return []
    if name == "DeepSpeedStrategy":
        from memprof.integrations.configs import knobs_from_ds_config

        ds_knobs, ds_prov, warnings = knobs_from_ds_config(dict(getattr(strategy, "config", None) or {}), strict=False)
        for knob, value in ds_knobs.items():
            knobs[knob] = value
            prov[knob] = f"DeepSpeedStrategy config: {ds_prov.get(knob, knob)}"
        knobs["gpus"] = world_size
        prov["gpus"] = f"DeepSpeedStrategy, world size {world_size}"
        return warnings
    if name == "FSDPStrategy":
        raw = getattr(strategy, "sharding_strategy", "FULL_SHARD")
        sharding = str(getattr(raw, "name", raw)).upper()
        if sharding not in _FSDP_STAGES:
            return [f"FSDPStrategy sharding {sharding} is not modelled: predicted for one device without sharding"]
        from memprof.integrations.configs import FSDP1_NOTE

        (knobs["engine"], knobs["zero"]), knobs["gpus"] = _FSDP_STAGES[sharding], world_size
        prov["engine"] = prov["zero"] = prov["gpus"] = (
            f"FSDPStrategy(sharding_strategy={sharding}), world size {world_size}"
        )
        warnings = []
        offload = getattr(strategy, "cpu_offload", None)
        if offload is not None and getattr(offload, "offload_params", offload) is True:
            if knobs["engine"] == "fsdp":  # CPUOffload(offload_params=True): parameters, gradients, states
                knobs["offload"] = "optimizer"
                prov["offload"] = "FSDPStrategy(cpu_offload=True)"
            else:
                warnings.append("FSDPStrategy NO_SHARD with cpu_offload is not modelled: predicted without offload")
        if knobs["engine"] == "fsdp":
            warnings.append(f"FSDPStrategy {sharding}: {FSDP1_NOTE}")
        return warnings
    return [f"strategy {name} is not modelled by this callback: predicted for one device without sharding"]
