"""memprof.integrations.lightning: the MemprofCallback in real PyTorch Lightning runs on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")
pytest.importorskip("transformers")

from memprof.integrations.lightning import MemprofCallback, MemprofCallbackWarning  # noqa: E402
from memprof.tiny_models import build  # noqa: E402

TOLERANCE_PCT = 3.0


class _Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        ids = torch.randint(2, 128, (32,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}


class _CausalLM(pl.LightningModule):
    def __init__(self, family: str = "gpt2", optimizer: str = "adamw") -> None:
        super().__init__()
        self.model, _ = build(family, "sdpa")
        self.optimizer = optimizer

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        if self.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=1e-3)
        return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)


def _fit(tmp_path, module=None, callback=None, **trainer_kw):
    cb = callback or MemprofCallback()
    kw = dict(
        max_steps=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    kw.update(trainer_kw)
    trainer = pl.Trainer(callbacks=[cb], **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module or _CausalLM(), torch.utils.data.DataLoader(_Tokens(), batch_size=2))
    return trainer, cb, [str(w.message) for w in caught if issubclass(w.category, MemprofCallbackWarning)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "accumulate"), [("32-true", 1), ("bf16-mixed", 1), ("bf16-true", 1), ("32-true", 2)]
)
def test_callback_predicts_its_own_measurement(tmp_path, precision, accumulate):
    trainer, cb, caught = _fit(tmp_path, precision=precision, accumulate_grad_batches=accumulate)
    assert caught == []
    [result] = cb.results
    assert result["step"] == 2 and result["predicted_peak"] is not None
    assert abs(result["error_pct"]) <= TOLERANCE_PCT, result
    # Lightning's zero_grad after the next forward: the forward holds last step's gradients
    if accumulate == 1:
        assert result["predicted_phase"] == result["measured_phase"] == "forward"
    assert trainer.callback_metrics["memprof/measured_peak_bytes"].item() == pytest.approx(result["measured_peak"])
    assert (tmp_path / "memprof" / "step-2.json").exists()
    # training_step returns the loss: the output is gone before backward, as predicted and observed
    assert cb.monitor.knobs["keep_output"] is False
    settings = json.loads((tmp_path / "memprof" / "step-2.json").read_text())["settings"]
    assert settings["output_kept"] is False and settings["zero_grad"] == "set-to-none"
    print(
        f"lightning {precision} accumulate {accumulate}: predicted {result['predicted_peak']:,} B, "
        f"measured {result['measured_peak']:,} B, {result['error_pct']:+.2f} %"
    )


@pytest.mark.slow
class _KeepsLogits(_CausalLM):
    """A training_step that returns the logits too: Lightning keeps them (detached) in its
    ClosureResult through backward."""

    def training_step(self, batch, batch_idx):
        out = self.model(**batch)
        return {"loss": out.loss, "logits": out.logits}


@pytest.mark.slow
def test_a_module_that_keeps_its_output_is_predicted_as_it_runs(tmp_path):
    _, cb, caught = _fit(tmp_path, module=_KeepsLogits(), precision="32-true")
    # THEN the profiled step showed the output alive at backward: the callback says so and predicts with it
    assert any("keep_output=True" in w for w in caught), caught
    assert cb.monitor.knobs["keep_output"] is True
    [result] = cb.results
    assert abs(result["error_pct"]) <= TOLERANCE_PCT, result
    print(f"lightning, training_step keeps the logits: {result['error_pct']:+.2f} %")


def test_unmodelled_strategy_and_precision_are_warnings(tmp_path):
    import torch.distributed as dist
    from pytorch_lightning.strategies import DDPStrategy

    dtype, environ = torch.get_default_dtype(), dict(os.environ)
    try:
        trainer, cb, caught = _fit(
            tmp_path, precision="64-true", strategy=DDPStrategy(process_group_backend="gloo"), max_steps=2
        )
    finally:
        # DDP leaves its process group behind: a later Trainer would see one and wrap its model in DDP
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_default_dtype(dtype)
        os.environ.clear()  # and its MASTER_ADDR, WORLD_SIZE, LOCAL_RANK, ... that Trainers read
        os.environ.update(environ)
    assert trainer.global_step == 2
    assert not any("DDPStrategy" in w for w in caught), caught  # DDP is modelled: gpus = world size
    assert any("precision '64-true' is not modelled" in w for w in caught), caught
    assert cb.results[0]["predicted_peak"] is None


def test_missing_lightning_names_the_package():
    code = (
        "import sys; sys.modules['pytorch_lightning'] = None; sys.modules['lightning'] = None\n"
        "try:\n    import memprof.integrations.lightning\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install pytorch-lightning" in out


def test_strategies_set_the_sharding_knobs():

    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

    from memprof.integrations.configs import FSDP1_NOTE
    from memprof.integrations.lightning import strategy_knobs

    knobs, prov = {}, {}
    assert strategy_knobs(DDPStrategy(), 4, knobs, prov) == [] and knobs == {"gpus": 4}
    knobs = {}
    warnings = strategy_knobs(FSDPStrategy(sharding_strategy="SHARD_GRAD_OP"), 8, knobs, prov)
    assert knobs == {"engine": "fsdp", "zero": 2, "gpus": 8}
    assert warnings == [f"FSDPStrategy SHARD_GRAD_OP: {FSDP1_NOTE}"]
    knobs = {}
    hybrid = FSDPStrategy(sharding_strategy="HYBRID_SHARD", auto_wrap_policy={torch.nn.Linear})
    assert strategy_knobs(hybrid, 8, knobs, prov)[0].endswith("predicted for one device without sharding")
    assert knobs == {}
    # DeepSpeedStrategy needs deepspeed installed; its config is what the strategy reads
    fake = type("DeepSpeedStrategy", (), {})()
    fake.config = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    knobs = {}
    strategy_knobs(fake, 2, knobs, prov)
    assert (knobs["precision"], knobs["zero"], knobs["offload"], knobs["gpus"]) == ("bf16-master", 2, "optimizer", 2)
