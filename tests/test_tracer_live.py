"""`run.compare()` / `memprof run --compare` on models memprof has no analytic family for: the step the
profiler captured (memprof.profiler.capture) is traced on fake tensors (memprof.tracer.live), so every
row has a prediction. Each case trains for real on the CPU under `memprof.track`; the traced peak must be
within 1 % of the measured one and the model states exact to the byte, and the notes name the predictor.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import memprof
from memprof.comparison.observed import ANALYTIC
from memprof.tracer.live import PREDICTOR

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_examples import load

STATES = ("parameters", "gradients", "optimizer_states")


def _check(frame, *, exact_peak: bool = False) -> dict:
    rows = frame.reset_index().set_index(["scope", "category"])
    for cat in (*STATES, "total"):
        r = rows.loc[("model_states", cat)]
        assert r["predicted"] == r["measured"], (cat, r["predicted"], r["measured"])
    peak = rows.loc[("peak", "allocated")]
    assert peak["measured"] > 0
    err = abs(int(peak["predicted"]) - int(peak["measured"])) / int(peak["measured"])
    assert err <= (0 if exact_peak else 0.01), (int(peak["predicted"]), int(peak["measured"]))
    assert frame.attrs["predictor"] == PREDICTOR
    assert frame.attrs["notes"][0] == PREDICTOR
    for cat in ("parameters", "gradients", "optimizer_states", "activations", "temporary"):
        assert not pd_missing(rows.loc[("peak", cat)]["predicted"]), cat
    return {"predicted": int(peak["predicted"]), "measured": int(peak["measured"])}


def pd_missing(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def test_nanogpt_logits_kept_through_backward_traced_to_the_byte():
    torch.manual_seed(0)
    w = load("nanogpt.py").workload(size="tiny", batch_size=4, seq_len=32)
    model, x, y = w["model"], w["inputs"]["idx"], w["inputs"]["targets"]
    opt = w["optimizer"](None)  # nanoGPT's configure_optimizers: AdamW, two groups
    with memprof.track(model, opt, warmup=1) as run:
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            _logits, loss = model(x, y)  # the logits stay alive through backward (a local)
            loss.backward()
            opt.step()
    _check(run.compare(), exact_peak=True)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cnn_with_its_loss_outside_the_model(precision):
    torch.manual_seed(0)
    w = load("algoperf/imagenet_resnet.py").workload(size="tiny", batch_size=4)
    model, x = w["model"], w["inputs"]
    y = torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def step():
        with autocast:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)  # y: a tensor the model never sees
        loss.backward()
        opt.step()
        opt.zero_grad()

    with memprof.track(model, opt, warmup=1) as run:
        for _ in range(3):
            step()
    frame = run.compare()
    _check(frame, exact_peak=precision == "32-true")
    assert frame.attrs["estimate_settings"]["precision"] == precision


def test_gradients_kept_through_the_forward():
    """zero_grad(set_to_none=False) at the top of the loop: the gradients exist during the forward."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(32, 64), torch.randn(32, 8)
    with memprof.track(model, opt, warmup=1) as run:
        for _ in range(3):
            opt.zero_grad(set_to_none=False)
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
    frame = run.compare()
    _check(frame, exact_peak=True)
    rows = frame.reset_index().set_index(["scope", "category"])
    assert rows.loc[("peak", "gradients")]["predicted"] == sum(p.numel() * 4 for p in model.parameters())


def test_a_closure_optimizer_is_named_not_traced():
    model = torch.nn.Linear(16, 4)
    opt = torch.optim.LBFGS(model.parameters(), history_size=2, max_iter=2)
    x, y = torch.randn(8, 16), torch.randn(8, 4)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    with memprof.track(model, opt) as run:
        opt.step(closure)
    frame = run.compare()
    assert frame.attrs["predictor"] != PREDICTOR
    assert "closure" in " ".join(frame.attrs["missing"])


def test_a_hugging_face_model_stays_analytic():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, 64, (2, 16))
    with memprof.track(model, opt) as run:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    frame = run.compare()
    assert frame.attrs["predictor"] == ANALYTIC
    assert run.step_capture.model is None  # no fake copy made: the analytic path needs none


def test_memprof_run_compare_traces_a_script(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch, torch.nn.functional as F

            def main():
                torch.manual_seed(0)
                model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                            torch.nn.Linear(8 * 14 * 14, 10))
                opt = torch.optim.AdamW(model.parameters())
                for _ in range(3):
                    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

            if __name__ == "__main__":
                main()
            """
        )
    )
    from memprof.cli import main

    assert main(["run", "--compare", "--device", "cpu", "--format", "json", str(script)]) == 0
    import json

    record = json.loads(capsys.readouterr().out)
    rows = {(r["scope"], r["category"]): r for r in record["comparison"]}
    for cat in STATES:
        assert rows[("model_states", cat)]["error_bytes"] == 0
    peak = rows[("peak", "allocated")]
    assert abs(peak["error_bytes"]) <= 0.01 * peak["measured"], peak
    assert record["comparison_predictor"] == PREDICTOR
