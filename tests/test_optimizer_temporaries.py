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
import weakref

import pytest
import torch
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.optimizers import get_optimizer
from memprof.estimators.optimizers.temporaries import (LBFGS_SCALARS, default_implementation, exactness,
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


class LiveStorages(TorchDispatchMode):
    """Bytes of the storages created while active and still alive, and their peak since
    `reset_peak()`. Unlike a tracker entered just around the measured step, it also sees the
    release of what earlier steps created: LBFGS pops a history pair made by a previous step."""

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._alive: set[int] = set()

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # torch.tensor(...) is created outside the dispatcher and handed to lift_fresh: new
        inputs = set() if func is torch.ops.aten.lift_fresh.default else {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key in inputs or key in self._alive or nbytes == 0:
                continue                                   # a view, an in-place result, or known
            self._alive.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, nbytes)
        return out

    def _release(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.current -= nbytes


def measure(model_name: str, make, steps_before: int = 1):
    """(params in step() order, measured temporaries) of the step() after `steps_before` steps of
    the optimizers `make(model)` returns (stepped one after the other), measured by LiveStorages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss_fn = MODELS[model_name]()
    opts = make(model)
    create_graph = getattr(make, "create_graph", False)   # Hutchinson optimizers

    def backward():
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss_fn(model).backward(create_graph=create_graph)

    with LiveStorages() as live:
        for _ in range(steps_before):
            backward()
            for o in opts:
                o.step()
        backward()
        before = live.current
        live.reset_peak()
        for o in opts:
            o.step()
        measured = live.peak - before
    names = {id(p): n for n, p in model.named_parameters()}
    params = [ParamTensor(names[id(p)], tuple(p.shape)) for o in opts for g in o.param_groups
              for p in g["params"] if p.grad is not None]             # the order step() visits
    return params, measured


def measure_with_memtracker(model, opts, step) -> int:
    """The same figure by torch.distributed._tools.mem_tracker.MemTracker, entered around the
    measured step only (cross-check for optimizers whose step releases nothing made earlier)."""
    tracker = MemTracker()
    tracker.track_external(model, *opts)
    with tracker:
        before = sum(d["Total"] for d in tracker.get_tracker_snapshot("current").values())
        step()
    return sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values()) - before


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


def _pkg(name: str, loop_kwargs: dict | None = None, foreach_kwargs: dict | None = None):
    """The real package optimizer of tests/optimizer_cases.py; `loop_kwargs` / `foreach_kwargs`
    force its per-parameter loop / its foreach path."""
    from optimizer_cases import CASES

    def factory(opts, impl):
        extra = {"single_tensor": loop_kwargs, "foreach": foreach_kwargs}.get(impl) or {}

        def make(model):
            made = CASES[name].make(model, {**opts, **extra})
            if CASES[name].train_mode:
                for o in made:
                    o.train()
            return made
        make.create_graph = CASES[name].create_graph
        return make
    return factory


def _galore(opts, impl, gap=200):
    """GaLoreAdamW on every 2-D parameter, re-projecting (SVD) every `gap` steps."""
    def make(model):
        from galore_torch import GaLoreAdamW
        two_d = [p for p in model.parameters() if p.ndim == 2]
        rest = [p for p in model.parameters() if p.ndim != 2]
        group = {"params": two_d, "rank": opts.get("rank", 128), "update_proj_gap": gap, "scale": 0.25,
                 "proj_type": "std"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [GaLoreAdamW([{"params": rest}, group], no_deprecation_warning=True)]
    return make


PYOPT = {"loop_kwargs": {"foreach": False}, "foreach_kwargs": {"foreach": True}}
PACKAGE_CASES = [
    ("lion", _pkg("lion", **PYOPT), {}, LOOPS),
    ("lion", _pkg("lion", **PYOPT), {"adanorm": True}, ("single_tensor",)),
    ("adabelief", _pkg("adabelief", **PYOPT), {}, LOOPS),
    ("adabelief", _pkg("adabelief", **PYOPT), {"ams_bound": True}, ("single_tensor",)),
    ("diffgrad", _pkg("diffgrad", **PYOPT), {}, LOOPS),
    ("diffgrad", _pkg("diffgrad", **PYOPT), {"ams_bound": True}, LOOPS),
    ("prodigy", _pkg("prodigy"), {}, ("n/a",)),
    ("prodigy", _pkg("prodigy"), {"slice_p": 11}, ("n/a",)),
    ("dadapt-adam", _pkg("dadapt-adam"), {}, ("n/a",)),
    ("schedulefree-adamw", _pkg("schedulefree-adamw", **PYOPT), {}, LOOPS),
    # GaLore's steps between re-projections (gap 200), and a re-projecting step (gap 1)
    ("galore", _galore, {"svd_step": False}, ("n/a",)),
    ("galore", _galore, {"svd_step": False, "rank": 8}, ("n/a",)),
    ("galore", lambda opts, impl: _galore(opts, impl, gap=1), {"rank": 8}, ("n/a",)),
    # steps without a Hessian update (update_period=3, measured at the 3rd step): exact
    ("sophia", _pkg("sophia", {"foreach": False, "update_period": 3}, {"update_period": 3}),
     {"hessian_step": False}, LOOPS, 2),
    ("adahessian", _pkg("adahessian", {"foreach": False, "update_period": 3}, {"update_period": 3}),
     {"hessian_step": False}, LOOPS, 2),
    # Hessian-update steps: the probes and h_zs are counted, the double backward's memory is not
    ("sophia", _pkg("sophia", {"foreach": False, "update_period": 1}, {"update_period": 1}), {}, LOOPS),
    ("adahessian", _pkg("adahessian", **PYOPT), {}, LOOPS),
]


@pytest.mark.parametrize("model_name", ["layers", "gpt2"])
@pytest.mark.parametrize("name,make,opts,impl,warm", list(_cases(PACKAGE_CASES)))
def test_package_optimizer_temporaries(model_name, name, make, opts, impl, warm):
    # GIVEN a package optimizer on one of its paths, states created; WHEN its next step() is measured
    params, measured = measure(model_name, make(opts, impl), warm)
    predicted = step_temporary_bytes(name, params, "float32", device="cpu", implementation=impl, **opts)
    # THEN exact to the byte, or the stated kind of bound
    kind = exactness(name, impl, device="cpu", **opts)
    if kind.startswith("exact"):
        assert predicted == measured
    elif kind.startswith("lower bound"):
        assert predicted <= measured
    else:
        assert measured <= predicted


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


def test_lbfgs_steady_state_holds_five_flat_vectors():
    # GIVEN LBFGS on a quadratic whose closure allocates nothing (gradient written in place into
    # p.grad, the loss a python float), so that the measured peak is LBFGS's own
    torch.manual_seed(0)
    params = [torch.randn(shape, requires_grad=True) for shape in [(64, 32), (32,), (16, 64), (8,)]]
    scales = [torch.rand(p.shape) + 0.1 for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)

    def closure():
        loss = 0.0
        for p, a in zip(params, scales):
            p.grad.copy_(p.detach()).mul_(a)               # d/dp of a * p^2 / 2
            loss += float(p.detach().view(-1).dot(p.grad.view(-1))) / 2
        return loss

    opt = torch.optim.LBFGS(params, history_size=3, max_iter=5, tolerance_grad=0, tolerance_change=0)
    with LiveStorages() as live:
        for _ in range(3):                                 # 5 inner iterations each: history full
            opt.step(closure)
        assert len(opt.state[params[0]]["old_dirs"]) == 3
        # WHEN the next step is measured
        before = live.current
        live.reset_peak()
        opt.step(closure)
        measured = live.peak - before
    # THEN five flat vectors of all parameters, plus at most LBFGS_SCALARS 0-d tensors (ys, ro,
    # al, gtd, the stopping tests), which the formula bounds rather than tracks
    specs = [ParamTensor(f"p{i}", tuple(p.shape)) for i, p in enumerate(params)]
    predicted = step_temporary_bytes("lbfgs", specs, "float32", device="cpu")
    n = sum(p.numel() for p in params)
    assert 5 * n * 4 <= measured <= predicted == 5 * n * 4 + LBFGS_SCALARS * 4


def test_asgd_before_t0_stays_under_the_averaging_bound():
    # GIVEN ASGD with its default t0 (1e6): mu == 1, so ax.copy_(param) replaces the averaging temp
    params, measured = measure("layers", _one(torch.optim.ASGD)({}, "single_tensor"), 2)
    predicted = step_temporary_bytes("asgd", params, "float32", device="cpu", implementation="single_tensor")
    # THEN the prediction (steady state after t0) is an upper bound, by one parameter's worth
    largest = max(p.numel for p in params) * 4
    assert measured < predicted <= measured + largest
