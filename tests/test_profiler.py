"""The live profiler on the CPU: exact bytes per category for tensors of known sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import _get_current_dispatch_mode  # noqa: E402

import memprof  # noqa: E402
from memprof.estimators.vocabulary import CATEGORIES, PHASES  # noqa: E402

F32 = 4


class Known(nn.Module):
    """One 1000-float parameter; forward makes a 10,000-byte scratch tensor and frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(2500)  # 10,000 B, freed before forward ends -> temporary
        del scratch
        return x * self.w  # 4,000 B, alive after forward -> activations


def _known_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> tuple:
    y = model(x)
    loss = y.sum()
    loss.backward()
    opt.step()
    return y, loss


def test_known_sizes_give_exact_bytes_per_category() -> None:
    # GIVEN a parameter of 4,000 B, an input of 4,000 B and SGD with momentum (one 4,000-B buffer)
    model = Known()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.ones(1000)
    # WHEN one step runs under the profiler (y and loss stay alive until the end)
    with memprof.track(model, opt) as run:
        _y, _loss = _known_step(model, opt, x)
    d = run.to_dict()
    # THEN the peak is during the step: param + grad + momentum + y + loss + input
    assert d["peak"]["phase"] == "optimizer_step"
    assert d["peak"]["allocated"] == 4000 * 5 + 4
    assert d["peak"]["by_category"] == {
        "parameters": 4000,
        "gradients": 4000,
        "optimizer_states": 4000,
        "activations": 4004,
        "temporary": 4000,
        "cuda_context": None,
        "fragmentation": None,
    }
    assert d["peak"]["detail"] == {"inputs": 4000, "buffers": 0, "created_temporary": 0}
    assert d["devices"] == {
        "cpu": {
            "peak_allocated": 20004,
            "peak_phase": "optimizer_step",
            "by_category": {k: v for k, v in d["peak"]["by_category"].items() if v is not None},
        }
    }
    # the forward peak is the scratch moment: param + input + scratch, scratch named temporary
    fwd = d["phases"]["forward"]["peak"]
    assert fwd["allocated"] == 18000
    assert fwd["by_category"] == {
        "parameters": 4000,
        "gradients": 0,
        "optimizer_states": 0,
        "activations": 0,
        "temporary": 14000,
    }
    assert fwd["detail"]["created_temporary"] == 10000
    assert d["model_states"] == {"parameters": 4000, "gradients": 4000, "optimizer_states": 4000}
    assert d["optimizer_state_breakdown"] == {"momentum_buffer": 4000}
    assert sum(d["peak"]["by_category"][c] or 0 for c in CATEGORIES) == d["peak"]["allocated"]


def test_events_record_allocations_frees_and_phases() -> None:
    model = Known()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.ones(1000)
    with memprof.track(model, opt) as run:
        _known_step(model, opt, x)
    assert len(run.events) == len(run.event_phases)
    allocs = {e[1]: (e[2], e[3], ph) for e, ph in zip(run.events, run.event_phases) if e[0] == "alloc"}
    frees = [e[1] for e in run.events if e[0] == "free"]
    # the scratch tensor: allocated in forward, 10,000 B on cpu, and freed
    scratch = [sid for sid, (n, dev, ph) in allocs.items() if n == 10000]
    assert len(scratch) == 1 and allocs[scratch[0]] == (10000, "cpu", "forward")
    assert scratch[0] in frees
    # every free refers to an allocation seen before it
    seen = set()
    for e in run.events:
        if e[0] == "alloc":
            seen.add(e[1])
        else:
            assert e[1] in seen
    # the momentum buffer is allocated during the step
    assert (4000, "cpu", "optimizer_step") in allocs.values()


def test_gradient_accumulation_counts_gradients_once() -> None:
    model = Known()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(1000)
    with memprof.track(model, opt) as run:
        for _ in range(3):  # three micro-batches, one step
            model(x).sum().backward()
        opt.step()
    d = run.to_dict()
    assert (d["settings"]["forward_calls"], d["settings"]["backward_calls"], d["settings"]["optimizer_steps"]) == (
        3,
        3,
        1,
    )
    assert d["model_states"]["gradients"] == 4000
    assert d["peak"]["by_category"]["gradients"] == 4000
    assert d["peak"]["by_category"]["optimizer_states"] == 0  # plain SGD keeps no state


def test_repeated_iterations_peak_matches_a_single_iteration() -> None:
    model = Known()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.ones(1000)

    def step() -> None:
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()

    step()  # states exist from here on
    with memprof.track(model, opt) as one:
        step()
    with memprof.track(model, opt) as three:
        for _ in range(3):
            step()
    a, b = one.to_dict(), three.to_dict()
    assert b["settings"]["optimizer_steps"] == 3 and b["phases"]["forward"]["calls"] == 3
    assert a["peak"] == b["peak"]
    # Adam: exp_avg + exp_avg_sq (4,000 B each) + a float32 `step` scalar
    assert a["model_states"]["optimizer_states"] == 2 * 4000 + 4
    assert a["optimizer_state_breakdown"] == {"step": 4, "exp_avg": 4000, "exp_avg_sq": 4000}


def test_tied_weights_are_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(32, 32, bias=False)
            self.b = nn.Linear(32, 32, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with memprof.track(model, opt) as run:
        model(torch.ones(4, 32)).sum().backward()
        opt.step()
    d = run.to_dict()
    assert d["settings"]["parameters"] == 32 * 32
    assert d["peak"]["by_category"]["parameters"] == 32 * 32 * F32
    assert d["model_states"]["gradients"] == 32 * 32 * F32


def test_parameters_created_inside_the_region_are_found() -> None:
    # GIVEN nothing passed to track(): the model and optimizer are created inside the region
    with memprof.track() as run:
        model = nn.Linear(100, 10)  # 1,010 floats
        opt = torch.optim.Adam(model.parameters())
        model(torch.ones(2, 100)).sum().backward()
        opt.step()
    d = run.to_dict()
    assert d["settings"]["model"] == "Linear" and d["settings"]["optimizer"] == "Adam"
    assert d["model_states"] == {
        "parameters": 1010 * F32,
        "gradients": 1010 * F32,
        "optimizer_states": 2 * 1010 * F32 + 2 * F32,
    }
    assert d["settings"]["input_shapes"] == [[2, 100]]


def test_observed_settings_are_recorded() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)).to(torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.8, 0.95), weight_decay=0.1)
    with memprof.track(model, opt) as run:
        model(torch.ones(5, 8, dtype=torch.float64)).sum().backward()
        opt.step()
    s = run.to_dict()["settings"]
    assert s["model_class"] == "torch.nn.modules.container.Sequential"
    assert s["parameters"] == 8 * 8 + 8 + 8 * 2 + 2
    assert s["param_dtypes"] == {"float64": 90}
    assert s["optimizer_class"] == "torch.optim.adamw.AdamW"
    assert s["optimizer_defaults"]["lr"] == 3e-4 and s["optimizer_defaults"]["betas"] == [0.8, 0.95]
    assert s["optimizer_defaults"]["weight_decay"] == 0.1
    assert s["input_shapes"] == [[5, 8]] and s["autocast_dtype"] is None


def test_autocast_dtype_is_recorded_and_casts_are_attributed() -> None:
    model = nn.Linear(64, 64, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(8, 64)
    with memprof.track(model, opt) as run:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        opt.step()
    d = run.to_dict()
    assert d["settings"]["autocast_dtype"] == "bfloat16"
    # the forward peak is right after the bf16 matmul: the bf16 weight copy (autocast's cache) is
    # freed when autocast exits, before forward ends -> temporary; the bf16 input copy is saved for
    # the weight's gradient and the output is kept -> activations
    fwd = d["phases"]["forward"]["peak"]
    assert fwd["allocated"] == 64 * 64 * F32 + 8 * 64 * F32 + 64 * 64 * 2 + 2 * 8 * 64 * 2
    assert fwd["by_category"] == {
        "parameters": 64 * 64 * F32,
        "gradients": 0,
        "optimizer_states": 0,
        "activations": 2 * 8 * 64 * 2,
        "temporary": 8 * 64 * F32 + 64 * 64 * 2,
    }
    assert d["model_states"]["gradients"] == 64 * 64 * F32


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))


class Deep(nn.Module):
    def __init__(self, checkpoint: bool, width: int = 64, depth: int = 4, reentrant: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.checkpoint = checkpoint
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            if self.checkpoint:
                x = torch.utils.checkpoint.checkpoint(b, x, use_reentrant=self.reentrant)
            else:
                x = b(x)
        return x


def _end_of_forward_activations(checkpoint: bool, reentrant: bool = False) -> tuple[int, dict]:
    torch.manual_seed(0)
    model = Deep(checkpoint, reentrant=reentrant)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(32, 64, requires_grad=reentrant)  # reentrant checkpointing needs a grad input
    with memprof.track(model, opt) as run:
        model(x).sum().backward()
        opt.step()
    d = run.to_dict()
    return d["phases"]["forward"]["peak"]["by_category"]["activations"], d


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_saves_less_and_recomputes_in_backward(reentrant: bool) -> None:
    plain, d_plain = _end_of_forward_activations(False, reentrant)
    ckpt, d_ckpt = _end_of_forward_activations(True, reentrant)
    # without checkpointing each block's tanh keeps its output (32x64 floats)
    # with it only the inputs of blocks 2-4 survive forward (the last output is freed by sum)
    assert plain == 4 * 32 * 64 * F32 and ckpt == 3 * 32 * 64 * F32
    # backward recomputes each block (linear output + tanh output, 32x64 floats each) and those
    # tensors are activations, not temporaries; without checkpointing backward creates none
    assert d_ckpt["phases"]["backward"]["created_bytes"]["activations"] == 4 * 2 * 32 * 64 * F32
    assert d_plain["phases"]["backward"]["created_bytes"]["activations"] == 0
    assert d_ckpt["model_states"] == d_plain["model_states"]
    assert d_ckpt["settings"]["forward_calls"] == 1 and d_ckpt["settings"]["backward_calls"] == 1


def test_peak_categories_sum_to_allocated_in_every_phase() -> None:
    _, d = _end_of_forward_activations(False)
    for phase in PHASES:
        peak = d["phases"][phase]["peak"]
        assert sum(peak["by_category"].values()) == peak["allocated"]
    assert max(d["phases"][p]["peak"]["allocated"] for p in PHASES) == d["peak"]["allocated"]


def test_stats_mode_installs_no_dispatch_mode_and_states_what_is_unavailable() -> None:
    model = Known()
    opt = torch.optim.Adam(model.parameters())
    modes = []
    with memprof.track(model, opt, mode="stats") as run:
        modes.append(_get_current_dispatch_mode())
        _known_step(model, opt, torch.ones(1000))
    d = run.to_dict()
    assert modes == [None]
    assert d["mode"] == "stats" and d["peak"]["allocated"] is None and "note" in d["peak"]
    assert d["model_states"] == {"parameters": 4000, "gradients": 4000, "optimizer_states": 8004}
    assert d["cuda"]["available"] is False and "cpu" in d["cuda"]["reason"]
    assert d["nvml"]["available"] is False and d["nvml"]["reason"]
    assert d["settings"]["optimizer_steps"] == 1 and d["phases"]["forward"]["calls"] == 1


def test_decorator_reports_every_call_and_the_worst() -> None:
    model = Known()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @memprof.profile(model=model, optimizer=opt)
    def train_step(n_scratch: int) -> float:
        extra = torch.ones(n_scratch)  # created outside phases: temporary
        loss = model(torch.ones(1000)).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        del extra
        return loss.item()

    results = [train_step(n) for n in (10, 5000, 20)]
    assert results[0] == 0.0  # the function's own result passes through
    assert len(train_step.profiles) == 3
    peaks = [p.to_dict()["peak"]["allocated"] for p in train_step.profiles]
    assert all(p.to_dict()["complete"] for p in train_step.profiles)
    assert peaks[1] - peaks[0] == (5000 - 10) * F32
    assert train_step.worst is train_step.profiles[1]
    assert train_step.last is train_step.profiles[2]
    assert train_step.__name__ == "train_step"


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(memprof.MemprofUserError, match="mode"):
        memprof.track(mode="fast")
    with pytest.raises(memprof.MemprofUserError, match=r"torch.nn.modules.module.Module"):
        memprof.track(model="gpt2")
    with pytest.raises(memprof.MemprofUserError, match="optimizer must be"):
        memprof.profile(optimizer=object())


def test_import_memprof_does_not_import_torch() -> None:
    code = "import sys, memprof; memprof.__all__; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import memprof; assert memprof.track.__name__ == 'track' and memprof.Profile.__name__ == 'Profile'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_out_variants_that_resize_a_storage_are_counted_at_their_new_size() -> None:
    with memprof.track() as run:
        z = torch.empty(0)
        torch.mm(torch.ones(100, 4), torch.ones(4, 100), out=z)  # z grows to 100x100 floats
    d = run.to_dict()
    assert d["peak"]["allocated"] == 100 * 4 * F32 * 2 + 100 * 100 * F32
    # the growth is a free of the empty storage and a new allocation, as an allocator sees it
    empty = next(e[1] for e in run.events if e[0] == "alloc" and e[2] == 0)
    i = run.events.index(("free", empty))
    assert run.events[i + 1][0] == "alloc" and run.events[i + 1][2:] == (100 * 100 * F32, "cpu")


def test_a_step_decorated_without_arguments_called_many_times() -> None:
    # GIVEN a bare decorator: model and optimizer are discovered by the first call, known after
    model = Known()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)

    @memprof.profile
    def train_step() -> None:
        model(torch.ones(1000)).sum().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(25):
        train_step()
    records = [p.to_dict() for p in train_step.profiles]
    # issue 14: the decorator holds the last `keep` (default 8) profiles, not all 25
    assert train_step.calls == 25 and len(records) == 8
    assert all(r["complete"] and r["error"] is None for r in records)
    # from the second call on, states exist before forward: every call measures the same peak
    # param + grad + Adam states (2 x 4,000 + 4) + input + y + loss + seed, during the step
    assert {r["peak"]["allocated"] for r in records[1:]} == {records[1]["peak"]["allocated"]}
    assert records[1]["peak"]["by_category"]["optimizer_states"] == 8004
    assert records[1]["phases"]["forward"]["peak"]["by_category"]["optimizer_states"] == 8004
    assert train_step.worst is not None
    assert api_active() is None


def api_active():
    from memprof.profiler import api

    return api._active
