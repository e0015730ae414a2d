"""The optimizer registry against the real implementations, to the byte.

Each measured case builds the real optimizer (torch.optim, pytorch-optimizer, bitsandbytes, prodigyopt,
schedulefree, dadaptation, galore-torch), steps it with a real loss.backward() on a tiny real model until
its state has its steady size, and compares the bytes of the tensors in optimizer.state (per key, each
storage once) with the registry's prediction.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re

import pytest
import torch

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.optimizers import OPTIMIZERS, Family, get_optimizer, optimizer_names, optimizer_table
from memprof.estimators.tensors import ParamTensor
from optimizer_cases import CASES, NON_MEMORY_OPTIONS, group_tensor_bytes, run_case

pytestmark = pytest.mark.filterwarnings("ignore")


def _predict(name, params, extra, options, dtype="float32"):
    opts = {k: v for k, v in options.items() if k not in NON_MEMORY_OPTIONS}
    return get_optimizer(name).bytes_by_key(params, dtype, **opts, **extra)


def _matrix(models_for=None, dtype=None):
    out = []
    for name, case in CASES.items():
        for model in models_for(name, case) if models_for else case.models:
            for i, variant in enumerate(case.variants):
                out.append(pytest.param(name, model, variant, id=f"{name}-{model}-{i}"))
    return out


# ------------------------------------------------------------------------------------ exact matches


@pytest.mark.parametrize("name, model, options", _matrix())
def test_state_bytes_match_the_real_optimizer_fp32(name, model, options):
    # GIVEN the real optimizer stepped on a real model until its state is at steady size
    params, extra, measured, opts = run_case(name, model, options)
    # WHEN the registry predicts the state of the parameters that received gradients
    predicted = _predict(name, params, extra, options)
    # THEN every key and the total match to the byte, and nothing hides in param_groups
    assert measured.total > 0 or (name == "sgd" and not options)
    assert predicted == measured.by_key
    assert (
        get_optimizer(name).state_bytes(
            params, **{k: v for k, v in {**options, **extra}.items() if k not in NON_MEMORY_OPTIONS}
        )
        == measured.total
    )
    assert group_tensor_bytes(opts) == 0


def _bf16_models(name, case):
    if case.sparse:
        return case.models
    return ("tiny", "gpt2", "llama") if name in ("adam", "adamw", "sgd-momentum") else ("tiny",)


@pytest.mark.parametrize("name, model, options", _matrix(_bf16_models))
def test_state_bytes_match_with_bf16_parameters(name, model, options):
    params, extra, measured, _ = run_case(name, model, options, torch.bfloat16)
    assert _predict(name, params, extra, options, "bfloat16") == measured.by_key


# ------------------------------------------------------------------------- host vs device placement

META_RUNNABLE = {
    "Adam": "adam",
    "AdamW": "adamw",
    "Adagrad": "adagrad",
    "Adadelta": "adadelta",
    "Adamax": "adamax",
    "NAdam": "nadam",
    "RAdam": "radam",
    "RMSprop": "rmsprop",
    "Rprop": "rprop",
    "SGD": "sgd-momentum",
    "Muon": "muon",
}


@pytest.mark.parametrize("cls, name", sorted(META_RUNNABLE.items()))
def test_host_resident_scalars_match_torch_placement(cls, name):
    # GIVEN parameters on the meta device (a stand-in for the GPU: anything torch puts on the
    # parameters' device lands on meta, anything it keeps on the host lands on the CPU)
    p = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    p.grad = torch.empty(4, 3, device="meta")
    opt = getattr(torch.optim, cls)([p], **({"momentum": 0.9} if cls == "SGD" else {}))
    opt.step()
    on_host = {k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.device.type == "cpu"}
    # THEN the registry flags exactly those states as host-resident
    tensors = get_optimizer(name).state_tensors([ParamTensor("w", (4, 3))])
    assert {t.key for t in tensors if getattr(t, "host", False)} == on_host
    assert {t.key for t in tensors} == set(opt.state[p])
    spec = get_optimizer(name)
    host_bytes = 4 * len(on_host)
    w = [ParamTensor("w", (4, 3))]
    assert spec.device_state_bytes(w) == spec.state_bytes(w) - host_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="capturable/fused placement needs a CUDA device")
@pytest.mark.parametrize(
    "name, cls, kwargs",
    [
        ("adamw", "AdamW", {"fused": True}),
        ("adam", "Adam", {"capturable": True}),
        ("adamw", "AdamW", {}),
        ("asgd", "ASGD", {}),
        ("adafactor", "Adafactor", {}),
        ("nadam", "NAdam", {"capturable": True}),
        ("adagrad", "Adagrad", {"fused": True}),
    ],
)
def test_device_state_bytes_on_cuda(name, cls, kwargs):
    model = torch.nn.Linear(64, 32).cuda()
    opt = getattr(torch.optim, cls)(model.parameters(), **kwargs)
    model(torch.randn(8, 64, device="cuda")).sum().backward()
    opt.step()
    on_device = sum(
        v.numel() * v.element_size()
        for st in opt.state.values()
        for v in st.values()
        if torch.is_tensor(v) and v.is_cuda
    )
    params = [ParamTensor(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert get_optimizer(name).device_state_bytes(params, **kwargs) == on_device


# ---------------------------------------------------------------------------------- pinned figures


def _params(model_name):
    from optimizer_cases import build_model

    model, _ = build_model(model_name)
    return [ParamTensor(n, tuple(p.shape)) for n, p in model.named_parameters()]


def test_pinned_figures_for_the_tiny_gpt2():
    # 110,336 parameters in 28 tensors (tied lm_head counted once)
    params = _params("gpt2")
    assert sum(p.numel for p in params) == 110336 and len(params) == 28
    assert get_optimizer("adamw").state_bytes(params) == 8 * 110336 + 4 * 28 == 882800
    assert get_optimizer("adamw").state_bytes(params, "bfloat16") == 4 * 110336 + 4 * 28
    assert get_optimizer("adam").state_bytes(params, amsgrad=True) == 12 * 110336 + 4 * 28
    assert get_optimizer("sgd").state_bytes(params) == 0
    assert get_optimizer("sgd-momentum").state_bytes(params) == 4 * 110336
    assert get_optimizer("nadam").state_bytes(params) == 8 * 110336 + 8 * 28
    assert get_optimizer("asgd").state_bytes(params) == 4 * 110336 + 12 * 28
    assert get_optimizer("lbfgs").state_bytes(params, history_size=3) == 8 * 110336 * 4 + 7 * 4
    assert get_optimizer("adamw8bit").state_bytes(params) == 249088
    assert get_optimizer("adamw").bytes_per_parameter(params) == pytest.approx(882800 / 110336)


def test_adamw8bit_quantizes_only_large_tensors_in_blocks_of_256():
    # 16000-element tensor: 2 uint8 moments + 2 * ceil(16000/256)=63 float32 absmax + 2 shared 256-entry maps
    big = [ParamTensor("w", (160, 100))]
    assert get_optimizer("adamw8bit").state_bytes(big) == 2 * 16000 + 2 * 63 * 4 + 2 * 256 * 4
    small = [ParamTensor("b", (4095,))]
    assert get_optimizer("adamw8bit").state_bytes(small) == 8 * 4095
    # the maps are shared: a second 8-bit tensor adds no second pair
    two = big + [ParamTensor("w2", (160, 100))]
    assert get_optimizer("adamw8bit").state_bytes(two) == 2 * (2 * 16000 + 2 * 63 * 4) + 2 * 256 * 4


def test_galore_fp32_projector_keeps_the_whole_svd_factor():
    # GIVEN GaLore at rank 8 on the tiny GPT-2 in float32
    _params, _, measured, opts = run_case("galore", "gpt2", {"rank": 8})
    projectors = [st["projector"].ortho_matrix for st in opts[0].state.values() if "projector" in st]
    # THEN each projection matrix is a rank-8 view of a k x k factor (k = the smaller side of the
    # weight), whose whole storage stays allocated
    shapes = [tuple(p.shape) for p in opts[0].param_groups[1]["params"]]
    assert len(projectors) == len(shapes) == 10 and all(8 in t.shape for t in projectors)
    assert [t.untyped_storage().nbytes() for t in projectors] == [min(s) ** 2 * 4 for s in shapes]
    assert measured.by_key["projector"] == sum(min(s) ** 2 * 4 for s in shapes) > sum(t.numel() * 4 for t in projectors)
    # while in bfloat16 the copy is compact
    p = [ParamTensor("w", (64, 256))]
    assert get_optimizer("galore").bytes_by_key(p, "bfloat16", rank=8)["projector"] == 64 * 8 * 2


def test_lbfgs_steady_state_is_a_full_history():
    params, _, measured, opts = run_case("lbfgs", "tiny", {"history_size": 3})
    state = opts[0].state[opts[0]._params[0]]
    assert len(state["old_dirs"]) == len(state["old_stps"]) == len(state["ro"]) == 3
    n = sum(p.numel for p in params)
    assert measured.by_key["old_dirs"] == 3 * n * 4 and measured.by_key["d"] == n * 4


def test_lion_pytorch_keeps_the_same_state_as_pytorch_optimizer_lion():
    from lion_pytorch import Lion

    from optimizer_cases import build_model, measure_state

    model, loss = build_model("tiny")
    opt = Lion(model.parameters())
    loss(model).backward()
    opt.step()
    params = [ParamTensor(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert measure_state([opt]).by_key == get_optimizer("lion").bytes_by_key(params)


def test_population_methods_are_analytic_copies_of_the_weights():
    params = [ParamTensor("w", (10, 10)), ParamTensor("b", (10,))]
    ga, pso = get_optimizer("ga"), get_optimizer("pso")
    assert not ga.measured and not pso.measured
    assert ga.state_bytes(params, population_size=8) == 8 * 110 * 4 + 8 * 4
    assert pso.state_bytes(params, "bfloat16", population_size=8) == (3 * 8 + 1) * 110 * 2 + 8 * 4


# ------------------------------------------------------------------------------------------ registry


def _torch_optimizer_classes():
    return sorted(
        n
        for n in torch.optim.__all__
        if isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    )


def test_every_torch_optimizer_is_registered():
    implemented = {s.implementation.split(" ")[0] for s in OPTIMIZERS.values()}
    missing = [n for n in _torch_optimizer_classes() if f"torch.optim.{n}" not in implemented]
    assert not missing
    assert len(_torch_optimizer_classes()) == 15  # torch 2.13: Adafactor ... SparseAdam, Muon


def test_every_measured_entry_has_a_real_case_and_the_reverse():
    assert {n for n, s in OPTIMIZERS.items() if s.measured} == set(CASES)


@pytest.mark.parametrize("name", [n for n, s in OPTIMIZERS.items() if s.measured])
def test_implementation_names_an_installed_class_and_version(name):
    spec = OPTIMIZERS[name]
    match = re.fullmatch(r"([\w.]+)\.(\w+) \(([\w-]+) ([\w.+]+)\)", spec.implementation)
    assert match, spec.implementation
    module, cls, dist, version = match.groups()
    assert isinstance(getattr(importlib.import_module(module), cls), type)
    installed = importlib.metadata.version(dist).split("+")[0]
    if dist == "torch":  # torch is not pinned; its optimizer state layout is stable across minors
        installed, version = installed.rsplit(".", 1)[0], version.rsplit(".", 1)[0]
    assert installed == version, f"{dist} {installed} installed; {name} was verified against {version}"


def test_families_cover_the_seed_taxonomy():
    assert {s.family for s in OPTIMIZERS.values()} == set(Family)


def test_lookup_is_case_insensitive_and_knows_aliases():
    assert get_optimizer("AdamW").name == "adamw"
    assert get_optimizer(" L-BFGS ").name == "lbfgs"
    assert get_optimizer("SophiaH").name == "sophia"
    assert get_optimizer("AdamW8bit").name == "adamw8bit"
    assert optimizer_names() == sorted(OPTIMIZERS)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(MemprofUserError, match=r"unknown optimizer 'adamww'; did you mean .*adamw"):
        get_optimizer("adamww")


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(
        MemprofUserError,
        match=r"unknown option\(s\) momentum for optimizer 'adam'; "
        r"valid: amsgrad, capturable, fused$",
    ):
        get_optimizer("adam").state_bytes([ParamTensor("w", (2, 2))], momentum=0.9)
    with pytest.raises(MemprofUserError, match="valid: none"):
        get_optimizer("sophia").state_bytes([ParamTensor("w", (2, 2))], amsgrad=True)


def test_bad_option_values_and_dtypes_are_user_errors():
    w = [ParamTensor("w", (4, 4)), ParamTensor("b", (4,))]
    with pytest.raises(MemprofUserError, match="history_size"):
        get_optimizer("lbfgs").state_bytes(w, history_size=0)
    with pytest.raises(MemprofUserError, match="unknown dtype"):
        get_optimizer("adam").state_bytes(w, "float33")
    with pytest.raises(MemprofUserError, match="only accepts 2-D parameters; not 2-D: b"):
        get_optimizer("muon").state_bytes(w, fallback="none")
    with pytest.raises(MemprofUserError, match="galore_params not among"):
        get_optimizer("galore").state_bytes(w, galore_params=["nope"])
    with pytest.raises(MemprofUserError, match="proj_type"):
        get_optimizer("galore").state_bytes(w, proj_type="full")


def test_optimizer_table_is_sorted_by_family_then_bytes():
    params = _params("llama")
    rows = optimizer_table(params, "float32")
    assert len(rows) == len(OPTIMIZERS)
    assert set(rows[0]) == {"name", "family", "implementation", "state_bytes", "bytes_per_param", "measured"}
    order = [f.value for f in Family]
    keys = [(order.index(r["family"]), r["state_bytes"]) for r in rows]
    assert keys == sorted(keys)
    adamw = next(r for r in rows if r["name"] == "adamw")
    assert adamw["state_bytes"] == 723540 and adamw["bytes_per_param"] == pytest.approx(723540 / 90432)


def test_sgd_without_momentum_keeps_no_state_at_all():
    # torch only touches optimizer.state when momentum != 0: no entry, not even a None buffer
    _, _, measured, opts = run_case("sgd", "tiny", {})
    assert len(opts[0].state) == 0 and measured.total == 0


def test_registry_imports_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; from memprof.estimators.optimizers import optimizer_table; "
        "from memprof.estimators.tensors import ParamTensor; "
        "optimizer_table([ParamTensor('w', (3, 3))]); "
        "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
