"""memprof's pytest plugin (memprof/pytest_plugin.py), tested with pytest's own `pytester`.

One pytest subprocess runs every case (torch is imported once: pytester's in-process runs unload
the modules a run imported, and torch cannot be imported twice in one process)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# a small model trained two steps on the CPU: 256x256 fp32 weights (2 x 256 KiB), their gradients
# and SGD-momentum buffers, and a 64x256 batch
CASES = """
import pytest, torch
import memprof

def step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        loss = model(torch.randn(64, 256)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

@pytest.mark.limit_training_memory("200 KiB", device="cuda")
def test_over_budget():
    step()

@pytest.mark.limit_training_memory("64 MiB", device="cpu")
def test_within_budget():
    step()

@pytest.mark.limit_training_memory("12 gigs")
def test_invalid_size():
    step()

def test_unmarked():
    step()

@pytest.mark.limit_training_memory("80 GiB", predicted=True)
def test_predicted_fits(memprof_estimate):
    memprof_estimate(memprof.estimate("gpt2-1.5b", "adamw", batch_size=1))

@pytest.mark.limit_training_memory("10 GiB", predicted=True)
def test_predicted_too_big(memprof_estimate):
    memprof_estimate(memprof.estimate("gpt2-1.5b", "adamw", batch_size=1))

@pytest.mark.limit_training_memory("10 GiB", predicted=True)
def test_predicted_without_estimate():
    pass
"""


@pytest.fixture
def result(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(test_cases=CASES)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--memprof", "-rf")


def test_budgets_measured_predicted_and_invalid(result):
    result.assert_outcomes(passed=3, failed=4)
    result.stdout.fnmatch_lines(
        [
            # over budget: the peak, its phase and the top categories, in pytest-memray's words
            "*_ test_over_budget _*",
            "Test was limited to 200.00 KiB but its training peak was 1.63 MiB (measured on cpu, at backward; "
            "top: parameters 514.00 KiB, gradients 514.00 KiB, optimizer_states 514.00 KiB)",
            # an invalid size: memprof's size error, naming the valid units
            "*_ test_invalid_size _*",
            "limit_training_memory: unknown size unit 'gigs' in '12 gigs'; valid units: *",
            # predicted: the registered estimate is checked, and a missing one says what to do
            "*_ test_predicted_too_big _*",
            "Test was limited to 10.00 GiB but its training peak was * "
            "(predicted on estimate, at optimizer_step; top: *",
            "*_ test_predicted_without_estimate _*",
            "*call the memprof_estimate fixture*",
            # --memprof: a row per test, largest first
            "*memprof: training memory per test*",
            "test*peak*phase*limit*source",
            "test_cases.py::test_predicted_fits*GiB*optimizer_step*80.00 GiB*predicted (estimate)",
            "test_cases.py::test_over_budget*1.63 MiB*backward*200.00 KiB*measured (cpu)",
        ]
    )
    result.stdout.fnmatch_lines(["test_cases.py::test_unmarked*1.63 MiB*backward*-*measured (cpu)"])


def test_marker_is_documented(pytester):
    result = pytester.runpytest_inprocess("--markers")
    result.stdout.fnmatch_lines(["*limit_training_memory(limit*device*'cuda'*predicted*False)*"])
