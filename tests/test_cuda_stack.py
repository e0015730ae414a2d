"""--cuda-version and --cuda-module-loading: the CUDA stack an estimate (and fit) is for.

The context figures asserted here are the measured ones of profiles/cuda_context.json, read by id:
the test checks which observations an estimate picks for a stack, not figures the code computes.
"""

from __future__ import annotations

import json

import pytest

from memprof.cli import main
from memprof.estimators.cuda import CUDA_RELEASES, check_cuda_version, cuda_supports
from memprof.estimators.errors import MemprofUserError, ParameterError
from memprof.estimators.estimation import estimate
from memprof.estimators.kernels import check_cuda
from memprof.estimators.overheads import context_observations

MEASURED = {o.id: o.context_bytes for o in context_observations()}


def one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.startswith("memprof: error: "), err
    return err


@pytest.mark.parametrize(
    "knobs, observations, loading",
    [
        # V100 on a CUDA 11.2 stack: eager (lazy loading starts with 11.7), the 1.3 GiB anatomy figure
        ({"gpu": "v100-16gb", "cuda_version": "11.2"}, ["transformers-model-memory-anatomy"], "eager"),
        # RTX 3090, CUDA 12.8, lazy (PyTorch's default): the InvokeAI cu128 figure
        ({"gpu": "rtx-3090", "cuda_version": "12.8"}, ["invokeai-9413"], "lazy"),
        # the same stack with CUDA_MODULE_LOADING=EAGER: no CUDA 12 eager Ampere figure, so both
        # eager RTX 3090 figures (CUDA 11.1 and 11.0), their median
        (
            {"gpu": "rtx-3090", "cuda_version": "12.8", "cuda_module_loading": "eager"},
            ["pytorch-55277-rtx3090", "pytorch-49877-rtx3090"],
            "eager",
        ),
        # a wheel tag names the same release; H100 lazy: the torchcomms figure
        ({"gpu": "h100-80gb", "cuda_version": "cu128"}, ["torchcomms-777"], "lazy"),
        # lazy loading asked on CUDA 11.2: it does not exist there, the run is eager
        (
            {"gpu": "v100-16gb", "cuda_version": "11.2", "cuda_module_loading": "lazy"},
            ["transformers-model-memory-anatomy"],
            "eager",
        ),
    ],
)
def test_context_follows_the_cuda_stack(knobs, observations, loading):
    record = estimate("gpt2", **knobs).record
    figures = sorted(MEASURED[i] for i in observations)
    median = figures[0] if len(figures) == 1 else (figures[0] + figures[1]) // 2
    assert record.cuda_context.bytes == median
    assert record.cuda_context.low == figures[0] and record.cuda_context.high == figures[-1]
    assert record.peak.by_category["cuda_context"] == median
    assert record.peak.device_total - record.peak.reserved == median
    assert record.settings.cuda_module_loading == loading
    assert record.settings.cuda_version == check_cuda_version(knobs["cuda_version"]).text
    # and the JSON carries both, round-tripping
    data = record.to_dict()
    assert data["settings"]["cuda_module_loading"] == loading
    assert type(record).from_dict(json.loads(json.dumps(data))) == record


def test_eager_v100_context_is_the_measured_1341_mib_not_the_lazy_median():
    lazy = estimate("gpt2", gpu="v100-16gb").record
    eager = estimate("gpt2", gpu="v100-16gb", cuda_version="11.2").record
    assert eager.cuda_context.bytes == 1341 * 2**20
    assert lazy.settings.cuda_version is None and lazy.settings.cuda_module_loading == "lazy"
    assert eager.peak.device_total - lazy.peak.device_total == 1341 * 2**20 - lazy.cuda_context.bytes


def test_cpu_records_no_cuda_stack():
    record = estimate("gpt2", device="cpu").record
    assert (record.settings.cuda_version, record.settings.cuda_module_loading) == (None, None)


def test_cuda_releases_and_the_architectures_they_build():
    assert (12, 7) not in CUDA_RELEASES and (12, 8) in CUDA_RELEASES
    assert check_cuda_version("12.4.1").text == "12.4"
    assert check_cuda_version("13.5").note.startswith("CUDA 13.5 is newer than the releases memprof knows")
    for bad in ("12.7", "10.3", "14.0", "7.5"):
        with pytest.raises(MemprofUserError, match="unknown CUDA version"):
            check_cuda_version(bad)
    assert cuda_supports((9, 0), "11.8") == ""
    assert cuda_supports((9, 0), "11.7") == "sm_90 needs CUDA 11.8 or newer (CUDA 11.7 has no kernels for it)"
    assert cuda_supports((8, 9), "11.7") != "" and cuda_supports((8, 6), "11.1") == ""
    assert cuda_supports((7, 0), "12.9") == "" and cuda_supports((7, 5), "13.0") == ""
    assert cuda_supports((7, 0), "13.0") == "CUDA 13.0 removed sm_70 (CUDA 13.0 has no kernels for it)"
    assert cuda_supports((12, 0), "12.6") != ""  # Blackwell GeForce arrives in 12.8
    assert check_cuda((8, 0), "12.4").level == "ok"
    assert check_cuda((9, 0), "11.7").level == "error"


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"gpu": "h100-80gb", "cuda_version": "11.7"}, "gpu h100-80gb: a PyTorch built with CUDA 11.7 cannot run"),
        ({"gpu": "l4", "cuda_version": "11.6"}, "sm_89 needs CUDA 11.8"),
        ({"gpu": "v100-32gb", "cuda_version": "13.0"}, "CUDA 13.0 removed sm_70"),
        ({"cuda_version": "12.7"}, "unknown cuda_version '12.7'; CUDA releases: 8.0"),
        ({"cuda_version": "12.4", "device": "cpu"}, "cuda_version describes the CUDA stack; drop it with device cpu"),
        ({"cuda_module_loading": "sometimes"}, "invalid cuda_module_loading 'sometimes'; valid: lazy, eager"),
    ],
)
def test_impossible_stacks_are_parameter_errors(knobs, message):
    with pytest.raises(ParameterError) as info:
        estimate("gpt2", **knobs)
    assert message in str(info.value)


def test_a_newer_minor_release_is_a_warning():
    record = estimate("gpt2", cuda_version="13.4").record
    assert any(w.startswith("CUDA 13.4 is newer than the releases memprof knows") for w in record.warnings)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["estimate", "gpt2", "--gpu", "h100-80gb", "--cuda-version", "11.7"], "--gpu h100-80gb: a PyTorch built"),
        (["estimate", "gpt2", "--cuda-version", "12.7"], "unknown --cuda-version '12.7'"),
        (["estimate", "gpt2", "--device", "cpu", "--cuda-module-loading", "eager"], "drop it with --device cpu"),
        (["fit", "gpt2", "--gpu", "v100-16gb", "--cuda-version", "13.0"], "CUDA 13.0 removed sm_70"),
        (["estimate", "gpt2", "--cuda-module-loading", "sometimes"], "'sometimes' is not one of 'lazy', 'eager'"),
    ],
)
def test_cli_refuses_impossible_stacks_in_one_line(capsys, args, expected):
    assert expected in one_line_error(capsys, args)


def test_cli_estimate_and_fit_take_the_stack(capsys):
    assert main(["estimate", "gpt2", "--gpu", "v100-16gb", "--cuda-version", "11.2", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cuda_context"]["bytes"] == MEASURED["transformers-model-memory-anatomy"]
    assert (data["settings"]["cuda_version"], data["settings"]["cuda_module_loading"]) == ("11.2", "eager")
    args = ["fit", "gpt2", "--gpu", "a100-40gb", "--format", "json", "--cuda-module-loading", "EAGER"]
    assert main(args) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["settings"]["cuda_module_loading"] == "eager"  # click normalises the choice
    eager = estimate("gpt2", gpu="a100-40gb", cuda_module_loading="eager", batch_size=fit["max_batch_size"])
    assert fit["best"]["device_total"] == eager.record.peak.device_total
