"""The CUDA context by loading mode: lazy_loading() and cuda_context_bytes() deciding it from the stack."""

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.gpus import get_gpu
from memprof.estimators.overheads import (
    LazyLoading,
    context_observations,
    cuda_context_bytes,
    lazy_loading,
    parse_cuda_version,
)

MiB = 2**20
V100 = get_gpu("v100-16gb")


@pytest.mark.parametrize(
    "text, version",
    [("11.7", (11, 7)), ("12", (12, 0)), ("12.4.1", (12, 4)), ("cu117", (11, 7)), ("cu92", (9, 2)), ("cu130", (13, 0))],
)
def test_parse_cuda_version(text, version):
    assert parse_cuda_version(text) == version


def test_lazy_loading_needs_cuda_11_7_in_runtime_and_driver():
    assert lazy_loading("11.6") == LazyLoading(
        False, "eager: CUDA runtime 11.6 is older than 11.7, the first with lazy loading"
    )
    assert lazy_loading("cu116").enabled is False
    assert lazy_loading("11.7").enabled is True
    # a new runtime on an old driver (minor-version compatibility) still loads eagerly
    assert lazy_loading("12.4", driver_cuda="11.2").enabled is False
    assert lazy_loading("12.4", driver_cuda="12.2").enabled is True


def test_lazy_loading_follows_cuda_module_loading():
    # unset: PyTorch sets LAZY itself (maybe_set_cuda_module_loading("LAZY"))
    assert lazy_loading("12.4").reason.startswith("lazy: PyTorch sets")
    assert lazy_loading("12.4", module_loading="EAGER").enabled is False
    assert lazy_loading("12.4", module_loading="lazy").enabled is True
    assert lazy_loading(None).enabled is True  # unknown versions: PyTorch >= 1.13 wheels are CUDA >= 11.7
    # the variable cannot enable what the versions do not have
    assert lazy_loading("11.2", module_loading="LAZY").enabled is False
    with pytest.raises(MemprofUserError, match="CUDA_MODULE_LOADING"):
        lazy_loading("12.4", module_loading="SOMETIMES")


def test_v100_eager_context_on_cuda_11_is_the_measured_1_3_gib():
    # transformers' model memory anatomy page: 1,343 MiB after torch.ones((1, 1)).to("cuda") on a
    # V100 with driver 460.91.03 / CUDA 11.2 (minus the 2 MiB segment of the tensor)
    obs = {o.id: o for o in context_observations()}["transformers-model-memory-anatomy"]
    assert (obs.architecture, obs.compute_capability, obs.lazy_loading, obs.cuda_major) == ("volta", (7, 0), False, 11)
    est = cuda_context_bytes(V100, "11.2")
    assert est.bytes == 1341 * MiB
    assert [o.id for o in est.observations] == ["transformers-model-memory-anatomy"]
    assert est.basis == "median of 1 measured figure on Volta, CUDA 11.x, eager loading"


def test_context_decides_the_mode_from_the_versions_when_not_given():
    lazy = cuda_context_bytes(V100, "12.4")
    assert "lazy loading" in lazy.basis and lazy.bytes < 600 * MiB
    eager = cuda_context_bytes(V100, "12.4", module_loading="EAGER")
    assert "eager loading" in eager.basis and eager.bytes == 1341 * MiB  # Volta, any CUDA
    assert cuda_context_bytes(V100, "12.4", driver_cuda="11.2").bytes == eager.bytes
    # no version at all: lazy, as before
    assert cuda_context_bytes(V100).basis == cuda_context_bytes(V100, lazy=True).basis


def test_lazy_requested_where_it_cannot_exist_is_eager_and_says_why():
    est = cuda_context_bytes(V100, "11.2", lazy=True)
    assert est.bytes == 1341 * MiB
    assert est.basis.endswith("(eager: CUDA runtime 11.2 is older than 11.7, the first with lazy loading)")
    # lazy=False is always possible
    assert "eager loading" in cuda_context_bytes(V100, "12.4", lazy=False).basis


def test_lazy_argument_is_checked():
    with pytest.raises(MemprofUserError, match="lazy must be True, False or None"):
        cuda_context_bytes(V100, lazy="yes")
