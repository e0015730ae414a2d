"""step_temporary_bytes against the real optimizers: the next step() measured on the CPU.

For each optimizer x implementation: small real parameter sets (Linear layers of different
sizes, ordered so that a small tensor follows a large one, and a tiny GPT-2), warm-up steps
(states exist), fresh gradients, then the peak of live tensor storages during the measured
step() minus what was live when it began. The tracker, LiveStorages, is a TorchDispatchMode
entered before the warm-up, so it also sees the release of what earlier steps made (LBFGS's
history); torch's MemTracker, entered around the step only, gives the same figures where nothing
earlier is released (test_memtracker_agrees). bitsandbytes' CPU kernels run below the
dispatcher: measured with the CPU allocator's profiler events. Each implementation is forced
explicitly (foreach=False / foreach=True / fused=True), since on the CPU torch would only take
the single-tensor loop.
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
from memprof.estimators.optimizers import default_implementation, exactness, get_optimizer, step_temporary_bytes
from memprof.estimators.optimizers.torch_lbfgs import LBFGS_SCALARS
from memprof.estimators.tensors import ParamTensor

KWARGS = {"single_tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}, "n/a": {}}


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
    return Layers(), lambda m: m(x.to(m.a.weight.dtype)).float().pow(2).mean()


def _gpt2():
    from activation_cases import batch, build

    model, _ = build("gpt2")
    inputs = batch("gpt2", 2, 16)
    return model, lambda m: m(**inputs).loss


class Convs(nn.Module):
    """Parameters of 4 dimensions (convolution weights), 3 and 1: Shampoo and SOAP unfold each."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.d = nn.Conv2d(8, 4, 5, bias=False)
        self.w = nn.Parameter(torch.randn(6, 5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(torch.tanh(self.c(x))).float().pow(2).mean() + self.w.float().pow(2).sum()


def _convs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    return Convs(), lambda m: m(x.to(m.c.weight.dtype))


MODELS = {"layers": _layers, "gpt2": _gpt2, "convs": _convs}


def _storages(leaves):
    """The storages behind tensors (a sparse COO tensor's are those of its indices and values)."""
    for t in leaves:
        if isinstance(t, torch.Tensor):
            if t.is_sparse:
                yield from (t._indices().untyped_storage(), t._values().untyped_storage())
            else:
                yield t.untyped_storage()


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
        inputs = (
            set()
            if func is torch.ops.aten.lift_fresh.default
            else {st.data_ptr() for st in _storages(tree_leaves((args, kwargs)))}
        )
        for storage in _storages(tree_leaves(out)):
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key in inputs or key in self._alive or nbytes == 0:
                continue  # a view, an in-place result, or known
            self._alive.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, nbytes)
        return out

    def _release(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.current -= nbytes


def measure(model_name: str, make, steps_before: int = 1, dtype: torch.dtype = torch.float32):
    """(params in step() order, measured temporaries) of the step() after `steps_before` steps of
    the optimizers `make(model)` returns (stepped one after the other), measured by LiveStorages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss_fn = MODELS[model_name]()
    model.to(dtype)
    opts = make(model)
    create_graph = getattr(make, "create_graph", False)  # Hutchinson optimizers

    def backward():
        for o in opts:
            o.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # create_graph's grad <-> param cycle: broken below
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
    params = [
        ParamTensor(names[id(p)], tuple(p.shape))
        for o in opts
        for g in o.param_groups
        for p in g["params"]
        if p.grad is not None
    ]  # the order step() visits
    if create_graph:
        for p in model.parameters():
            p.grad = None
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
    return lambda opts, impl: lambda model: [cls(model.parameters(), **fixed, **opts, **KWARGS[impl])]


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
    ("radam", _one(torch.optim.RAdam), {}, LOOPS, 8),  # rectified from step 6 (beta2=0.999)
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
    force its per-parameter loop / its foreach path (`loop_kwargs` also go to "n/a" ones)."""
    from optimizer_cases import CASES

    def factory(opts, impl):
        extra = {"single_tensor": loop_kwargs, "n/a": loop_kwargs, "foreach": foreach_kwargs}.get(impl) or {}

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
        group = {
            "params": two_d,
            "rank": opts.get("rank", 128),
            "update_proj_gap": gap,
            "scale": 0.25,
            "proj_type": "std",
        }
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
    # exact; SOAP refreshing its eigenbases (QR) every step, and with 1-D preconditioning
    ("shampoo", _pkg("shampoo"), {}, ("n/a",)),
    ("soap", _pkg("soap", {"precondition_frequency": 1}), {}, ("n/a",), 2),
    (
        "soap",
        _pkg("soap", {"precondition_frequency": 1}),
        {"precondition_1d": True, "max_precondition_dim": 100},
        ("n/a",),
        2,
    ),
    # steps without a Hessian update (update_period=3, measured at the 3rd step): exact
    (
        "sophia",
        _pkg("sophia", {"foreach": False, "update_period": 3}, {"update_period": 3}),
        {"hessian_step": False},
        LOOPS,
        2,
    ),
    (
        "adahessian",
        _pkg("adahessian", {"foreach": False, "update_period": 3}, {"update_period": 3}),
        {"hessian_step": False},
        LOOPS,
        2,
    ),
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


@pytest.mark.parametrize("impl", ALL)
def test_memtracker_agrees(impl):
    # torch's own MemTracker, entered around the measured step only, sees the same peak
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss_fn = MODELS["gpt2"]()
    opt = torch.optim.AdamW(model.parameters(), **KWARGS[impl])
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        if _ == 0:
            opt.step()
    measured = measure_with_memtracker(model, [opt], opt.step)
    params = [ParamTensor(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert measured == step_temporary_bytes("adamw", params, "float32", device="cpu", implementation=impl)


@pytest.mark.parametrize(
    "name,make,opts,impl",
    [
        ("adamw", _one(torch.optim.AdamW), {}, "single_tensor"),
        ("adamw", _one(torch.optim.AdamW), {}, "foreach"),
        ("muon", _muon, {}, "single_tensor"),  # grad.bfloat16() is the gradient itself
        ("adafactor", _one(torch.optim.Adafactor), {}, "single_tensor"),
        ("galore", lambda opts, impl: _galore(opts, impl, gap=1), {"rank": 8}, "n/a"),  # float32 SVD copies
    ],
)
def test_bfloat16_states(name, make, opts, impl):
    params, measured = measure("layers", make(opts, impl), dtype=torch.bfloat16)
    assert step_temporary_bytes(name, params, "bfloat16", device="cpu", implementation=impl, **opts) == measured


PRECONDITIONERS = [
    ("shampoo", _pkg("shampoo"), {}),
    ("soap", _pkg("soap", {"precondition_frequency": 1}), {}),
    ("soap", _pkg("soap", {"precondition_frequency": 1}), {"precondition_1d": True, "max_precondition_dim": 100}),
]


@pytest.mark.parametrize("model_name", ["layers", "gpt2"])
@pytest.mark.parametrize("name,make,opts", PRECONDITIONERS)
def test_preconditioner_temporaries_in_bfloat16(model_name, name, make, opts):
    # GIVEN bfloat16 parameters: compute_power_svd / the QR run on float32 copies and cast back
    params, measured = measure(model_name, make(opts, "n/a"), 2, dtype=torch.bfloat16)
    # THEN the float32 copies and the casts are counted to the byte
    assert step_temporary_bytes(name, params, "bfloat16", device="cpu", **opts) == measured


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,make,opts", PRECONDITIONERS)
def test_preconditioners_on_tensors_of_three_and_four_dimensions(dtype, name, make, opts):
    # GIVEN convolution weights: movedim + reshape (Shampoo) and tensordot (SOAP) copy them
    params, measured = measure("convs", make(opts, "n/a"), 2, dtype=dtype)
    predicted = step_temporary_bytes(name, params, str(dtype).removeprefix("torch."), device="cpu", **opts)
    # THEN Shampoo is exact, SOAP an upper bound (measured +9 % to +11 %)
    if name == "shampoo":
        assert predicted == measured
    else:
        assert measured <= predicted <= 1.11 * measured


def test_single_tensor_peak_includes_the_previous_parameters_leftover():
    # AdamW's loop: denom of parameter i-1 is still referenced while sqrt and the quotient of i exist
    params = [ParamTensor("w", (1000,)), ParamTensor("b", (10,)), ParamTensor("v", (100,))]
    assert step_temporary_bytes("adamw", params, "float32", implementation="single_tensor") == 4 * max(
        2 * 1000, 2 * 10 + 1000, 2 * 100 + 10
    )


def test_foreach_allocates_one_list_of_all_parameters():
    params = [ParamTensor("w", (1000,)), ParamTensor("b", (10,))]
    assert step_temporary_bytes("adamw", params, "bfloat16", device="cuda") == 2 * 1010
    assert step_temporary_bytes("adam", params, "float32", device="cuda", weight_decay=0.1) == 4 * 1010


@pytest.mark.parametrize(
    "name,device,options,expected",
    [
        ("adamw", "cuda", {}, "foreach"),  # _default_to_fused_or_foreach
        ("adamw", "cuda:1", {}, "foreach"),
        ("Adam", "cpu", {}, "single_tensor"),  # no foreach kernels on the CPU
        ("adamw", "cuda", {"fused": True}, "fused"),  # never the default; only fused=True
        ("adagrad", "cpu", {"fused": True}, "fused"),
        ("adafactor", "cuda", {}, "single_tensor"),  # adafactor(): foreach=None is falsy
        ("muon", "cuda", {}, "single_tensor"),  # Muon has no foreach implementation
        ("lion", "cpu", {}, "foreach"),  # pytorch-optimizer: foreach on any device
        ("lion", "cpu", {"adanorm": True}, "single_tensor"),
        ("adabelief", "cuda", {"ams_bound": True}, "single_tensor"),
        ("schedulefree-adamw", "cpu", {}, "foreach"),  # foreach=True by default
        ("prodigy", "cuda", {}, "n/a"),
        ("lbfgs", "cuda", {}, "n/a"),
    ],
)
def test_default_implementation_follows_the_libraries(name, device, options, expected):
    assert default_implementation(name, device, **options) == expected


def test_default_is_what_step_temporary_bytes_uses():
    params = [ParamTensor("w", (1000,)), ParamTensor("b", (10,))]
    for device in ("cuda", "cpu"):
        impl = default_implementation("adamw", device)
        assert step_temporary_bytes("adamw", params, "float32", device=device) == step_temporary_bytes(
            "adamw", params, "float32", device=device, implementation=impl
        )
    assert step_temporary_bytes(get_optimizer("AdamW"), params, "float32", fused=True) == 0


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        (
            "rmsprop",
            {"implementation": "fused"},
            "'fused' does not exist for optimizer 'rmsprop'; valid: single_tensor, foreach",
        ),
        ("prodigy", {"implementation": "foreach"}, "valid: n/a"),
        ("adagrad", {"implementation": "fused", "device": "cuda"}, "CPU only"),
        ("lbfgs", {"line_search_fn": "strong_wolfe"}, "not modelled"),
        ("adamw", {"state_dtype": "float33"}, "unknown dtype"),
    ],
)
def test_bad_input_for_an_optimizer_is_a_user_error(name, kwargs, match):
    dtype = kwargs.pop("state_dtype", "float32")
    with pytest.raises(MemprofUserError, match=match):
        step_temporary_bytes(name, [ParamTensor("w", (10, 10))], dtype, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"implementation": "fast"}, "valid: single_tensor, foreach, fused"),
        ({"momentum": 0.9}, "unknown option.*momentum.*valid: amsgrad"),
        ({"fused": True, "implementation": "foreach"}, "contradicts"),
        ({"capturable": True, "device": "cpu"}, "capturable"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
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
            p.grad.copy_(p.detach()).mul_(a)  # d/dp of a * p^2 / 2
            loss += float(p.detach().view(-1).dot(p.grad.view(-1))) / 2
        return loss

    opt = torch.optim.LBFGS(params, history_size=3, max_iter=5, tolerance_grad=0, tolerance_change=0)
    with LiveStorages() as live:
        for _ in range(3):  # 5 inner iterations each: history full
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


def measure_cpu_allocator(model_name: str, make, steps_before: int = 1) -> tuple[list[ParamTensor], int]:
    """Peak bytes the CPU allocator hands out during step(), from torch.profiler's memory events.
    For optimizers whose update is a custom op (bitsandbytes): its PyTorch reference kernels run
    below the dispatcher, invisible to TorchDispatchMode trackers."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss_fn = MODELS[model_name]()
    opts = make(model)
    for i in range(steps_before + 1):
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        if i < steps_before:
            for o in opts:
                o.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for o in opts:
            o.step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    params = [ParamTensor(n, tuple(p.shape)) for n, p in model.named_parameters() if p.grad is not None]
    return params, peak


# a python number in a tensor-scalar op becomes a 0-d float64 tensor plus its float32 cast on the CPU
# allocator (host memory on a GPU): not a temporary memprof counts; alive at bitsandbytes' peak
WRAPPED_SCALAR_BYTES = 8 + 4


@pytest.mark.parametrize("model_name", ["layers", "gpt2"])
@pytest.mark.parametrize("opts", [{}, {"min_8bit_size": 5000}])
def test_bitsandbytes_cpu_reference_temporaries(model_name, opts):
    pytest.importorskip("bitsandbytes")
    params, measured = measure_cpu_allocator(model_name, _pkg("adamw8bit")(opts, "n/a"), 2)
    predicted = step_temporary_bytes("adamw8bit", params, "float32", device="cpu", **opts)
    assert predicted == measured - WRAPPED_SCALAR_BYTES
    # on CUDA the fused 8-bit kernel works in place
    assert step_temporary_bytes("adamw8bit", params, "float32", device="cuda", **opts) == 0


def test_sparse_adam_stays_under_its_all_rows_bound():
    # GIVEN two sparse embeddings (100 x 32) of which a 4 x 8 batch touches at most 32 rows
    from optimizer_cases import build_model

    def run(measure_with):
        model, loss_fn = build_model("sparse")
        opt = torch.optim.SparseAdam(list(model.parameters()))
        MODELS["sparse"] = lambda: (model, loss_fn)
        try:
            return measure_with("sparse", lambda m: [opt])
        finally:
            del MODELS["sparse"]

    params, by_dispatch = run(measure)
    _, by_allocator = run(measure_cpu_allocator)  # also sees what coalesce() allocates inside
    bound = step_temporary_bytes("sparse-adam", params, "float32", device="cpu")
    # THEN both measurements stay under the bound, which counts all 100 rows
    assert 0 < by_dispatch <= bound
    assert 0 < by_allocator <= bound
