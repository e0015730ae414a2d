"""step_temporary_bytes against the real optimizers: the second step() measured on the CPU.

For each optimizer x implementation: a small real parameter set (Linear layers of different sizes,
ordered so that a small tensor follows a large one, and a tiny GPT-2), one warm-up step (states
exist), fresh gradients, then the peak of live tensor storages during the second step() minus what
was live when it began, measured with torch.distributed._tools.mem_tracker.MemTracker (a
TorchDispatchMode that sees every storage an op creates, which on the CPU is what
`step_temporary_bytes` counts). Each implementation path is forced explicitly (foreach=False /
foreach=True / fused=True), since on the CPU torch would only take the single-tensor loop.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.optimizers import get_optimizer
from memprof.estimators.optimizers.temporaries import (default_implementation, exactness,
                                                        step_temporary_bytes)
from memprof.estimators.tensors import ParamTensor

KWARGS = {"single_tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True},
          "n/a": {}}


class Layers(nn.Module):
    """Linear layers whose sizes rise and fall, so the single-tensor loops' `previous parameter'
    term matters: numel 640, 40, 960, 24, 192, 8, 8192, 64 (a bias after a large weight, a large
    weight after a bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 40)
        self.b = nn.Linear(40, 24)
        self.c = nn.Linear(24, 8)
        self.d = nn.Linear(8, 1024, bias=False)
        self.e = nn.Linear(1024, 8, bias=False)
        self.f = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))
        return self.f(self.e(torch.tanh(self.d(x))))


def _layers():
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    return Layers(), lambda m: m(x).pow(2).mean()


def _gpt2():
    from activation_cases import batch, build
    model, _ = build("gpt2")
    inputs = batch("gpt2", 2, 16)
    return model, lambda m: m(**inputs).loss


MODELS = {"layers": _layers, "gpt2": _gpt2}


def measure(model_name: str, make, steps_before: int = 1):
    """(params, measured temporaries) of the step() after `steps_before` steps of the optimizers
    `make(model)` returns (stepped one after the other, as a loop over optimizers would)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss_fn = MODELS[model_name]()
    opts = make(model)

    def backward():
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss_fn(model).backward()

    for _ in range(steps_before):
        backward()
        for o in opts:
            o.step()
    backward()
    tracker = MemTracker()
    tracker.track_external(model, *opts)
    with tracker:
        before = sum(d["Total"] for d in tracker.get_tracker_snapshot("current").values())
        for o in opts:
            o.step()
    peak = sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())
    params = [ParamTensor(n, tuple(p.shape)) for n, p in model.named_parameters() if p.grad is not None]
    return params, peak - before


def _one(cls, **fixed):
    return lambda opts, impl: (lambda model: [cls(model.parameters(), **fixed, **opts, **KWARGS[impl])])


def _muon(opts, impl):
    def make(model):
        two_d = [p for p in model.parameters() if p.ndim == 2]
        rest = [p for p in model.parameters() if p.ndim != 2]
        return [torch.optim.Muon(two_d, **opts), torch.optim.AdamW(rest)]
    return make


ALL = ("single_tensor", "foreach", "fused")
LOOPS = ("single_tensor", "foreach")
WD, MAX = {"weight_decay": 0.1}, {"maximize": True}

# (registry name, factory, options given to both, implementations, warm-up steps, torch-only kwargs)
TORCH_CASES = [
    ("adam", _one(torch.optim.Adam), {}, ALL),
    ("adam", _one(torch.optim.Adam), {"amsgrad": True}, ALL),
    ("adam", _one(torch.optim.Adam), WD, ALL),
    ("adam", _one(torch.optim.Adam), {**WD, **MAX}, LOOPS),
    ("adamw", _one(torch.optim.AdamW), {}, ALL),
    ("adamw", _one(torch.optim.AdamW), {"amsgrad": True, **MAX}, LOOPS),
    ("sgd", _one(torch.optim.SGD, lr=0.01), {}, ALL),
    ("sgd", _one(torch.optim.SGD, lr=0.01), {**WD, **MAX}, LOOPS),
    ("sgd-momentum", _one(torch.optim.SGD, lr=0.01, momentum=0.9), {}, ALL),
    ("sgd-momentum", _one(torch.optim.SGD, lr=0.01, momentum=0.9), {"nesterov": True}, ALL),
    ("sgd-momentum", _one(torch.optim.SGD, lr=0.01, momentum=0.9), {"nesterov": True, **WD}, LOOPS),
    ("adagrad", _one(torch.optim.Adagrad), {}, ALL),
    ("adagrad", _one(torch.optim.Adagrad), WD, LOOPS),
    ("adagrad", _one(torch.optim.Adagrad), MAX, LOOPS),
    ("adadelta", _one(torch.optim.Adadelta), {}, LOOPS),
    ("adadelta", _one(torch.optim.Adadelta), {**WD, **MAX}, LOOPS),
    ("adamax", _one(torch.optim.Adamax), {}, LOOPS),
    ("adamax", _one(torch.optim.Adamax), WD, LOOPS),
    ("adamax", _one(torch.optim.Adamax), MAX, LOOPS),
    # t0=0: mu = 1 / max(1, step) < 1 from the 3rd step on, which takes the averaging branch
    ("asgd", _one(torch.optim.ASGD, t0=0), {}, LOOPS, 2),
    ("asgd", _one(torch.optim.ASGD, t0=0), {**WD, **MAX}, LOOPS, 2),
    ("asgd", _one(torch.optim.ASGD, t0=0), WD, LOOPS, 2),
    ("nadam", _one(torch.optim.NAdam), {}, LOOPS),
    ("nadam", _one(torch.optim.NAdam), WD, LOOPS),
    ("radam", _one(torch.optim.RAdam), {}, LOOPS, 8),       # rectified from step 6 (beta2=0.999)
    ("radam", _one(torch.optim.RAdam), {**WD, **MAX}, LOOPS, 8),
    ("rmsprop", _one(torch.optim.RMSprop), {}, LOOPS),
    ("rmsprop", _one(torch.optim.RMSprop), {"momentum": 0.9, "centered": True, **WD}, LOOPS),
    ("rmsprop", _one(torch.optim.RMSprop), MAX, LOOPS),
    ("rprop", _one(torch.optim.Rprop), {}, LOOPS),
    ("rprop", _one(torch.optim.Rprop), MAX, LOOPS),
    ("adafactor", _one(torch.optim.Adafactor), {}, LOOPS),
    ("adafactor", _one(torch.optim.Adafactor), MAX, LOOPS),
    ("muon", _muon, {}, ("single_tensor",)),
    ("muon", _muon, {"nesterov": False}, ("single_tensor",)),
]


def _cases(cases):
    for name, make, opts, impls, *rest in cases:
        for impl in impls:
            label = "-".join([name, impl] + [f"{k}={v}" for k, v in opts.items()])
            yield pytest.param(name, make, opts, impl, rest[0] if rest else 1, id=label)


@pytest.mark.parametrize("model_name", ["layers", "gpt2"])
@pytest.mark.parametrize("name,make,opts,impl,warm", list(_cases(TORCH_CASES)))
def test_torch_optimizer_temporaries_to_the_byte(model_name, name, make, opts, impl, warm):
    # GIVEN a real torch optimizer forced onto one implementation, its states already created
    # WHEN its next step() is measured
    params, measured = measure(model_name, make(opts, impl), warm)
    # THEN the prediction is exact to the byte
    predicted = step_temporary_bytes(name, params, "float32", device="cpu", implementation=impl, **opts)
    assert exactness(name, impl, device="cpu", **opts).startswith("exact")
    assert predicted == measured


def test_single_tensor_peak_includes_the_previous_parameters_leftover():
    # AdamW's loop: denom of parameter i-1 is still referenced while sqrt and the quotient of i exist
    params = [ParamTensor("w", (1000,)), ParamTensor("b", (10,)), ParamTensor("v", (100,))]
    assert step_temporary_bytes("adamw", params, "float32", implementation="single_tensor") == \
        4 * max(2 * 1000, 2 * 10 + 1000, 2 * 100 + 10)


def test_foreach_allocates_one_list_of_all_parameters():
    params = [ParamTensor("w", (1000,)), ParamTensor("b", (10,))]
    assert step_temporary_bytes("adamw", params, "bfloat16", device="cuda") == 2 * 1010
    assert step_temporary_bytes("adam", params, "float32", device="cuda", weight_decay=0.1) == 4 * 1010


def test_default_implementation_follows_torch():
    assert default_implementation("adamw", "cuda") == "foreach"
    assert default_implementation("adamw", "cuda:1") == "foreach"
    assert default_implementation(get_optimizer("Adam"), "cpu") == "single_tensor"
    params = [ParamTensor("w", (1000,))]
    assert step_temporary_bytes("adamw", params, "float32", fused=True) == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"implementation": "fast"}, "valid: single_tensor, foreach, fused"),
    ({"momentum": 0.9}, "unknown option.*momentum.*valid: amsgrad"),
    ({"fused": True, "implementation": "foreach"}, "contradicts"),
    ({"capturable": True, "device": "cpu"}, "capturable"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
])
def test_bad_input_is_a_user_error(kwargs, match):
    with pytest.raises(MemprofUserError, match=match):
        step_temporary_bytes("adamw", [ParamTensor("w", (10,))], "float32", **kwargs)
