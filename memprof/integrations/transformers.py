"""memprof inside a Hugging Face `Trainer`: predict before step 1, measure chosen steps, log both.

    from memprof.integrations.transformers import MemprofCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[MemprofCallback(max_seq_len=2048)])
    trainer.train()

What it does:
- at `on_train_begin` it builds the estimate from the trainer itself: the model (any family memprof
  models, all parameters trainable; otherwise it says the peak is not predicted), and from the
  TrainingArguments through `memprof.integrations.configs.knobs_from_training_args` (the same mapping
  a saved training_args.json goes through): per_device_train_batch_size, gradient_accumulation_steps,
  bf16 / fp16 with the weights' dtype, tf32, activation (gradient) checkpointing and its kwargs,
  `optim` (table `HF_OPTIMIZERS`; the optimizer the Trainer actually built wins when it differs, as
  with `optimizers=(opt, sched)`), the device. It logs the predicted peak and, on a GPU, the verdict
  (`gpu=` names a memprof GPU preset; otherwise the preset matching the CUDA device's name, else the
  device's total memory), and warns when it will not fit. The head is the model's class
  (GPT2ForSequenceClassification: `seq-cls`); the loop is the Trainer's: compute_loss keeps the loss
  alone (`keep_output=False`) and model.zero_grad() frees the gradients (`zero_grad="set-to-none"`).
  Each profiled step tells which loop ran (the profile's `output_kept`, `zero_grad`): a custom
  compute_loss that keeps the outputs is predicted so from then on, with a warning.
- the sequence length: `max_seq_len` when given (the longest sequence the data can have: the verdict
  then comes before step 1 and holds for every batch). Otherwise it is read from the first batch: a
  forward pre-hook takes the input shape at the first forward of step 1 — still before its backward
  and optimizer step, where a training step's peak lies — and the estimate and verdict are made then
  (with dynamic padding later batches may be longer: pass max_seq_len for a bound).
- `profile_steps` (default (2,): the second optimizer step, in steady state: the optimizer states
  exist) run under `memprof.track`; predicted (the estimate at the batch shape the step actually saw)
  vs measured is logged through `trainer.log` (so it reaches `state.log_history` and every `report_to`
  integration) as `memprof/predicted_peak_bytes`, `memprof/measured_peak_bytes`,
  `memprof/peak_error_pct`, and each profile is saved as `output_dir/memprof/step-N.json` with its
  estimate beside it (`step-N.estimate.json`).
- a memory tool never stops a training run: every failure inside the callback becomes a
  `MemprofCallbackWarning`.

The callback logs through the Trainer it runs in (found at on_train_begin); `callback.results` and
`callback.estimate` hold the figures too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

try:
    import transformers
    from transformers import TrainerCallback
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "memprof.integrations.transformers needs Hugging Face transformers: pip install 'transformers[torch]'"
    ) from _exc

from memprof.integrations._monitor import (
    MemprofCallbackWarning,
    Monitor,
    embedding_weights,
    galore_params,
    guarded,
    input_shape,
    param_dtype,
    registry_of,
    set_impl,
)
from memprof.integrations.configs import HF_OPTIMIZERS, knobs_from_training_args, map_optim

__all__ = ["MemprofCallback", "MemprofCallbackWarning"]


class MemprofCallback(TrainerCallback):
    """Predict the Trainer's peak before step 1, profile `profile_steps`, log predicted vs measured.

    max_seq_len: the sequence length to predict for (default: the first batch's). profile_steps:
    1-based optimizer steps to profile (default: the second; () profiles none). gpu: a memprof GPU
    preset for the verdict (default: the CUDA device's preset, else its total memory). out_dir: where profiles go
    (default: `<output_dir>/memprof`; "" saves none)."""

    def __init__(
        self,
        max_seq_len: int | None = None,
        *,
        profile_steps: Iterable[int] = (2,),
        gpu: str | None = None,
        out_dir: str | None = None,
    ) -> None:
        from memprof.estimators.errors import ParameterError

        if max_seq_len is not None and (
            isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1
        ):
            raise ParameterError(f"{{max_seq_len}} must be a whole number >= 1, got {max_seq_len!r}", "max_seq_len")
        self.max_seq_len = max_seq_len
        self._profile_steps = tuple(profile_steps)
        self._gpu = gpu
        self._out_dir = out_dir
        self.monitor = Monitor(profile_steps=self._profile_steps, gpu=gpu, out_dir=out_dir)
        self.trainer: Any = None
        self._hook: Any = None

    # public figures
    @property
    def estimate(self) -> Any:
        """The latest memprof Estimate (None before it could be made)."""
        return self.monitor.estimate

    @property
    def results(self) -> list[dict[str, Any]]:
        """One dict per profiled step: step, predicted_peak, measured_peak, error_pct, profile (path)."""
        return self.monitor.results

    @property
    def messages(self) -> list[str]:
        """Every warning the callback gave."""
        return self.monitor.messages

    # -- Trainer events ------------------------------------------------------------------------
    @guarded
    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kw: Any
    ) -> None:
        out_dir = self._out_dir if self._out_dir is not None else os.path.join(args.output_dir, "memprof")
        self.monitor.close()  # a step of an earlier train() that raised (auto_find_batch_size retries)
        self.monitor = Monitor(profile_steps=self._profile_steps, gpu=self._gpu, out_dir=out_dir or None)
        self.trainer = _find_trainer()
        knobs, provenance, notes = knobs_from_training_args(
            args.to_dict(), param_dtype=param_dtype(model), strict=False
        )
        for message in notes:
            if not message.startswith("optim="):  # the optimizer is checked against the one built below
                self.monitor.note(message)
        processes = max(int(getattr(args, "world_size", 1) or 1), int(getattr(args, "n_gpu", 1) or 1))
        if processes > 1:
            # DDP (zero 0) or the ZeRO stage the deepspeed / fsdp settings gave: predicted per rank
            knobs["gpus"] = processes
            provenance["gpus"] = f"the running Trainer: world_size={processes}"
        device = getattr(args.device, "type", str(args.device))
        if device not in ("cpu", "cuda"):
            self.monitor.note(f"device {device!r} is not modelled (cuda, cpu): the peak is not predicted")
            knobs["optimizer"] = None
        knobs["device"] = "cpu" if device == "cpu" else "cuda"
        # the Trainer's loop (transformers 5.24 trainer.py): compute_loss returns the loss alone
        # (`outputs = model(**inputs)` is a local of compute_loss, freed when it returns) and
        # training_step runs backward on it; the gradients go with model.zero_grad() after each
        # optimizer step (nn.Module.zero_grad: set_to_none=True)
        knobs["keep_output"] = False
        provenance["keep_output"] = "Trainer.compute_loss keeps only the loss"
        self._check_optimizer(args, model, optimizer, knobs)
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if attn is not None:
            from memprof.comparison.observed import ATTENTION_NAMES

            if attn in ATTENTION_NAMES:
                knobs["attention"] = ATTENTION_NAMES[attn]
            else:
                self.monitor.note(f"attention {attn!r} is not modelled: predicted as sdpa")
        if self.max_seq_len is not None:
            knobs["seq_len"] = self.max_seq_len
            provenance["seq_len"] = f"MemprofCallback(max_seq_len={self.max_seq_len})"
        self.monitor.setup(model, knobs, provenance)
        if "seq_len" in knobs or getattr(getattr(model, "config", None), "model_type", None) == "vit":
            self.monitor.predict()
        elif self.monitor.spec is not None and model is not None:
            self._hook = model.register_forward_pre_hook(self._first_forward, with_kwargs=True)

    def _check_optimizer(self, args: Any, model: Any, optimizer: Any, knobs: dict[str, Any]) -> None:
        """The optimizer the Trainer built wins over the `optim` table when they differ."""
        if knobs.get("optimizer") is None:
            return
        optim = str(getattr(args.optim, "value", args.optim))
        entry = HF_OPTIMIZERS.get(optim)
        if optimizer is None:  # not built yet (DeepSpeed builds its own): the table alone
            registry, _, note = map_optim(optim)
            if registry is None:
                knobs["optimizer"] = None
            if note:
                self.monitor.note(note + ("" if registry else "; optimizer states and the peak are not predicted"))
            return
        inner = getattr(optimizer, "optimizer", optimizer)
        cls = f"{type(inner).__module__}.{type(inner).__qualname__}"
        if entry is not None and cls.startswith(entry.trainer_class):
            if entry.registry is None:
                self.monitor.note(
                    f"optim={optim!r} ({cls}): {entry.note}; optimizer states and the peak are not predicted"
                )
                knobs["optimizer"] = None
                return
            if entry.note:
                self.monitor.note(f"optim={optim!r}: {entry.note}")
            if entry.registry == "galore":
                knobs["galore_params"] = galore_params(model, optimizer)
            if entry.registry == "adamw8bit" and knobs.get("optim_bits", 8) == 8:
                knobs["fp32_params"] = embedding_weights(model)
            set_impl(inner, knobs)
            return
        name, options = registry_of(optimizer)
        if name is None:
            self.monitor.note(
                f"the Trainer's optimizer {cls} is not in memprof's registry: optimizer states and the peak "
                "are not predicted"
            )
            knobs["optimizer"] = None
            return
        for key in ("optim_bits", "optimizer_impl", "galore_params"):
            knobs.pop(key, None)
        knobs["optimizer"] = name
        knobs.update(options)
        set_impl(inner, knobs)

    def _first_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._predict_first(args, kwargs)

    @guarded
    def _predict_first(self, args: tuple, kwargs: dict) -> None:
        shape = input_shape(args, kwargs)
        if shape is None:
            self.monitor.note("the first batch has no tensor input: the peak is not predicted")
            return
        self.monitor.provenance["seq_len"] = f"the first batch's shape {list(shape)}"
        self.monitor.predict(None, shape[1])

    @guarded
    def on_step_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kw: Any
    ) -> None:
        step = state.global_step + 1
        if self.monitor.wants(step):
            self.monitor.begin_step(step, model, optimizer)

    @guarded
    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        result = self.monitor.end_step()
        if result is None:
            return
        metrics = self.monitor.metrics(result)
        if not metrics:
            return
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        else:  # no Trainer found: into the history; reporters see it at the next log event
            state.log_history.append({**metrics, "step": state.global_step})

    @guarded
    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.monitor.close()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _find_trainer() -> Any:
    """The Trainer whose callback handler is calling us (the frames above on_train_begin)."""
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, transformers.Trainer):
            return obj
        frame = frame.f_back  # type: ignore[assignment]
    return None
