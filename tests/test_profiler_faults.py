"""Faults: exceptions propagate unchanged, nothing is left installed, and one session at a time."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.modules import module as nn_module  # noqa: E402
from torch.optim import optimizer as optim_module  # noqa: E402
from torch.utils._python_dispatch import _get_current_dispatch_mode  # noqa: E402

import memprof  # noqa: E402
from memprof.profiler import api  # noqa: E402


class Exploding(nn.Module):
    """A two-layer model whose second layer asks for an impossible amount of memory."""

    def __init__(self, huge: bool = True) -> None:
        super().__init__()
        self.first = nn.Linear(10, 100, bias=False)  # 4,000 B
        self.second = Boom(huge)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class Boom(nn.Module):
    def __init__(self, huge: bool) -> None:
        super().__init__()
        self.huge = huge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.huge:
            torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the CPU allocator refuses
        raise ValueError("bad batch")


def assert_nothing_installed(model: nn.Module) -> None:
    assert _get_current_dispatch_mode() is None
    for name in (
        "_global_forward_pre_hooks",
        "_global_forward_hooks",
        "_global_forward_hooks_always_called",
        "_global_forward_hooks_with_kwargs",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        assert not getattr(nn_module, name), name
    assert not optim_module._global_optimizer_pre_hooks
    assert not optim_module._global_optimizer_post_hooks
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks
    for p in model.parameters():
        assert not (getattr(p, "_post_accumulate_grad_hooks", None) or {})
    assert api._active is None


def test_out_of_memory_propagates_unchanged_and_is_recorded() -> None:
    model = Exploding()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(2, 10)
    raised = None
    with pytest.raises(RuntimeError) as info, memprof.track(model, opt) as run:
        try:
            model(x)
        except RuntimeError as exc:
            raised = exc
            raise
    # THEN the very same exception object arrives, and the profile says where and what was live
    assert info.value is raised and "can't allocate memory" in str(info.value)
    err = run.to_dict()["error"]
    assert err["type"] == "RuntimeError" and err["out_of_memory"] is True
    assert err["phase"] == "forward"
    assert err["module"] == "Exploding > second"
    # live at the failure: the weight, the input, and first's output (2 x 100 floats)
    assert err["live_by_category"] == {
        "parameters": 4000,
        "gradients": 0,
        "optimizer_states": 0,
        "activations": 800,
        "temporary": 80,
    }
    assert run.to_dict()["complete"] is True
    assert_nothing_installed(model)


def test_any_exception_leaves_no_hook_mode_or_patch_behind() -> None:
    model = Exploding(huge=False)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="bad batch"), memprof.track(model, opt):
        model(torch.ones(2, 10))
    assert_nothing_installed(model)
    # and an exception in backward
    ok = nn.Linear(3, 3)
    with pytest.raises(RuntimeError, match="does not require grad"), memprof.track(ok, mode="stats"):
        ok(torch.ones(1, 3)).detach().sum().backward()
    assert_nothing_installed(ok)


def test_exception_in_a_decorated_step_still_records_that_call() -> None:
    model = Exploding(huge=False)

    @memprof.profile(model=model)
    def step() -> None:
        model(torch.ones(2, 10))

    for _ in range(2):
        with pytest.raises(ValueError):
            step()
    assert len(step.profiles) == 2
    assert [p.error["type"] for p in step.profiles] == ["ValueError", "ValueError"]
    assert_nothing_installed(model)


def test_nested_use_fails_with_a_clear_message_and_the_outer_session_survives() -> None:
    model = nn.Linear(4, 4)
    with memprof.track(model) as outer:
        with pytest.raises(memprof.MemprofUserError, match="already profiling"), memprof.track(model):
            pass
        model(torch.ones(1, 4)).sum().backward()
    d = outer.to_dict()
    assert d["settings"]["forward_calls"] == 1 and d["model_states"]["gradients"] == 20 * 4
    assert_nothing_installed(model)


def test_concurrent_use_from_another_thread_fails_clearly() -> None:
    errors: list[BaseException] = []
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        entered.wait(10)
        try:
            with memprof.track(mode="stats"):
                pass
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with memprof.track(mode="stats"):
        entered.set()
        release.wait(10)
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], memprof.MemprofUserError)
    # once the first session ended, a new one works
    with memprof.track(mode="stats") as run:
        pass
    assert run.to_dict()["complete"] is True


def test_live_view_during_the_region_is_marked_incomplete() -> None:
    model = nn.Linear(4, 4, bias=False)
    with memprof.track(model) as run:
        during = run.to_dict()
    assert during["complete"] is False and during["peak"]["by_category"]["parameters"] == 64
    assert run.to_dict()["complete"] is True
