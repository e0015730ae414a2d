"""The peak of a training step with the second-order optimizers, estimated vs measured on the CPU.

The tiny GPT-2 and Llama of memprof.tiny_models train for real with pytorch-optimizer's SophiaH,
AdaHessian (loss.backward(create_graph=True), as their docs require), Shampoo and SOAP; the
measured step is the one after the states reach their steady size, tracked by memprof.track
(a TorchDispatchMode over every storage), and its peak is compared with
`estimate(..., device="cpu").peak_allocated`.

What is exact and what is not (module docstrings of estimators/timeline.py and
estimators/optimizers/_scratch.py, and the step models in estimators/optimizers/second_order.py):
- the create_graph backward keeps the forward's saved tensors and the gradients its recorded
  graph saves alive through step(): exact to the byte on a SophiaH step without a Hessian update
  (the update comes every 10 steps), GPT-2 and Llama, every precision (Llama bf16-mixed: the
  trace's activations are 8 KiB above the measured ones, as for first-order optimizers); with
  activation checkpointing within 2 % (the recomputed tensors are retained too);
- AdaHessian updates its Hessian estimate every step: the Hessian-vector product's walk through
  that graph is not modelled beyond the probes and h_zs, so its peak is approximate (measured
  -4.5 % to +1.4 %) and the estimate says so in its warnings;
- Shampoo and SOAP step temporaries are exact for vectors and matrices (both dtypes).
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

pytest.importorskip("pytorch_optimizer")

import memprof
from memprof.estimators.activations import ActivationSettings
from memprof.estimators.estimation import estimate
from memprof.estimators.optimizers import needs_create_graph
from memprof.estimators.timeline import step_timeline
from memprof.tiny_models import autocast_context, batch, build, selective_checkpointing

CLASSES = {"sophia": "SophiaH", "adahessian": "AdaHessian", "shampoo": "Shampoo", "soap": "SOAP"}
KWARGS = {"soap": {"precondition_frequency": 1}}  # refresh the eigenbases (QR) every step
WARM = {"soap": 2}  # SOAP's first step only initialises


def measured_peak(
    family: str, optimizer: str, precision: str, checkpointing: str = "none", micro_batches: int = 1
) -> int:
    """Peak live bytes of one real training step (forward, backward, step, zero_grad) after warm-up."""
    import pytorch_optimizer

    model, _ = build(family, "eager")
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    model.to(dtype)
    if checkpointing == "full":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.gradient_checkpointing_enable()
    selective = selective_checkpointing(model) if checkpointing == "selective" else contextlib.nullcontext()
    opt = getattr(pytorch_optimizer, CLASSES[optimizer])(model.parameters(), **KWARGS.get(optimizer, {}))
    create_graph = needs_create_graph(optimizer)

    def train(inputs, micro_batches=1):
        opt.zero_grad(set_to_none=True)
        for _ in range(micro_batches):
            out = None  # the previous micro-batch's output dies before the next forward
            with autocast_context(precision == "bf16-mixed", torch.bfloat16):
                out = model(**inputs)
            out.loss.backward(create_graph=create_graph)
        opt.step()
        del out
        opt.zero_grad(set_to_none=True)  # also breaks create_graph's grad <-> parameter cycle

    with warnings.catch_warnings(), selective:
        warnings.simplefilter("ignore")  # create_graph's reference-cycle warning
        for _ in range(WARM.get(optimizer, 1)):
            train(batch(family, 2, 32, dtype=dtype))
        with memprof.track(model, [opt], events=False) as run:
            inputs = batch(family, 2, 32, dtype=dtype)
            train(inputs, micro_batches)
            del inputs
    return run.to_dict()["peak"]["allocated"]


def estimated(family: str, optimizer: str, precision: str, checkpointing: str = "none", micro_batches: int = 1):
    _, spec = build(family, "eager")
    return estimate(
        spec,
        optimizer,
        precision,
        device="cpu",
        batch_size=2,
        seq_len=32,
        attention="eager",
        checkpointing=checkpointing,
        grad_accumulation=micro_batches,
    )


# (family, optimizer, precision, tolerance in percent: 0 = to the byte)
CASES = [
    ("gpt2", "sophia", "32-true", 0),
    ("gpt2", "sophia", "bf16-mixed", 0),
    ("gpt2", "sophia", "bf16-true", 0),
    ("llama", "sophia", "32-true", 0),
    ("llama", "sophia", "bf16-mixed", 0.3),  # the trace's bf16-mixed activations: +8 KiB
    ("gpt2", "shampoo", "32-true", 0),
    ("gpt2", "shampoo", "bf16-true", 0),
    ("llama", "shampoo", "32-true", 0.01),  # peak in backward: the activations' 4 bytes
    ("gpt2", "soap", "32-true", 0),
    ("gpt2", "soap", "bf16-mixed", 0),
    ("gpt2", "soap", "bf16-true", 0),
    ("llama", "soap", "32-true", 0),
    ("gpt2", "adahessian", "32-true", 3),
    ("gpt2", "adahessian", "bf16-mixed", 3),
    ("llama", "adahessian", "32-true", 3),
    ("llama", "adahessian", "bf16-mixed", 3),
    ("gpt2", "adahessian", "bf16-true", 5),  # the Hessian-vector product's walk: -4.5 %
]


# create_graph with activation checkpointing: the recomputed tensors are retained too
CHECKPOINTED = [
    ("gpt2", "sophia", "32-true", "full", 1.5),  # measured -0.7 %
    ("gpt2", "sophia", "32-true", "selective", 2.5),  # -1.8 %
    ("llama", "sophia", "32-true", "full", 1.5),  # -1.0 %
]


# create_graph under gradient accumulation: every micro-batch's graph hangs off the summed .grad
ACCUMULATED = [
    ("gpt2", "sophia", "32-true", "none", 1.5, 2),  # measured -0.8 %
    ("llama", "sophia", "bf16-mixed", "none", 0.5, 2),  # +0.1 %
]


@pytest.mark.parametrize(
    "family,optimizer,precision,checkpointing,tolerance,micro_batches",
    [c[:3] + ("none",) + c[3:] + (1,) for c in CASES] + [c + (1,) for c in CHECKPOINTED] + ACCUMULATED,
)
def test_second_order_peak_matches_a_real_step(family, optimizer, precision, checkpointing, tolerance, micro_batches):
    # GIVEN a real training step of a tiny model with a second-order optimizer
    measured = measured_peak(family, optimizer, precision, checkpointing, micro_batches)
    # WHEN memprof estimates the same step on the CPU
    predicted = estimated(family, optimizer, precision, checkpointing, micro_batches).peak_allocated
    # THEN the peaks agree to the byte, or within the stated tolerance
    if tolerance == 0:
        assert predicted == measured
    else:
        assert abs(predicted - measured) <= tolerance / 100 * measured, (predicted, measured)


def test_hessian_vector_product_is_flagged_as_approximate():
    # the walk of the Hessian-vector product is not modelled: the estimate must say so
    est = estimated("gpt2", "adahessian", "32-true")
    assert any("Hessian-vector product of adahessian" in w for w in est.warnings)
    assert not estimated("gpt2", "shampoo", "32-true").warnings


def test_the_cuda_allocator_replay_keeps_the_create_graph_backward():
    # on CUDA the timeline comes from the allocator replay: it must retain the forward graph too
    cuda = estimate("gpt2", "sophia", "32-true", device="cuda", batch_size=1, seq_len=32).to_dict()
    points = {p["label"]: p["by_category"] for p in cuda["timeline"]}
    assert points["optimizer step"]["activations"] == points["forward end"]["activations"] > 0
    plain = estimate("gpt2", "adamw", "32-true", device="cuda", batch_size=1, seq_len=32).to_dict()
    assert {p["label"]: p for p in plain["timeline"]}["optimizer step"]["by_category"]["activations"] < points[
        "forward end"
    ]["activations"]
    # the replay's tensor bytes at its peak are the timeline's (the BLAS workspace included)
    assert cuda["allocator"]["peak"]["requested"] == sum(
        v for k, v in cuda["peak"]["by_category"].items() if k not in ("cuda_context", "fragmentation")
    )


def test_only_the_hutchinson_optimizers_need_create_graph():
    assert needs_create_graph("sophia") and needs_create_graph("adahessian")
    assert not any(needs_create_graph(n) for n in ("adamw", "shampoo", "soap", "lbfgs"))


def _timeline(create_graph: bool):
    _, spec = build("gpt2", "eager")
    act = ActivationSettings(2, 32, "float32", "float32", False, "eager", "none")
    return step_timeline(
        spec,
        act,
        param_bytes=1000,
        grad_bytes=1000,
        grad_dtype="float32",
        optimizer_state_bytes=3000,
        optimizer_temporaries_bytes=2000,
        create_graph=create_graph,
    )


def test_create_graph_retains_every_saved_tensor_into_the_step():
    # GIVEN the same model stepped with an ordinary and with a create_graph backward
    plain, graph = _timeline(False), _timeline(True)
    forward_end = next(p for p in graph if p.label == "forward end").by_category["activations"]
    step = {p.label: p for p in graph}["optimizer step"].by_category
    plain_step = {p.label: p for p in plain}["optimizer step"].by_category
    # THEN the retained graph keeps all of the forward's saved tensors (and the caller's logits)
    assert step["activations"] == forward_end
    assert plain_step["activations"] < forward_end
    # AND the backward's own graph (saved gradients) adds to the step's temporaries
    assert step["temporary"] > plain_step["temporary"]
    # AND nothing changes before the backward
    assert [p for p in plain if p.phase == "forward"] == [p for p in graph if p.phase == "forward"]
