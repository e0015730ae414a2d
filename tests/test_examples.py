"""The example workloads (examples/): real models people train, at their published sizes.

- Every workload builds at its real size on the meta device with the published parameter count, to
  the parameter (nanoGPT's own figures; the AlgoPerf PyTorch references, counted by instantiating
  them; torchvision's resnet50), and its factory's default batch is the published one.
- A tiny configuration of each trains one real step on the CPU under `memprof.track`: the loss is
  finite, parameters and gradients are their exact bytes, and the optimizer states equal the
  registry's prediction for the real optimizer, to the byte and key by key.
- `memprof.trace` of each tiny workload against the same step measured: the peak within 1 %, the
  states exact (the speech workloads' CTC loss included: memprof.tracer.rules).
- README.md's AlgoPerf table (scripts/render_algoperf.py) is what the tracer gives today.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import memprof
from memprof.estimators.optimizers import get_optimizer
from memprof.estimators.tensors import ParamTensor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# case -> (workload file, published parameter count, the factory's keyword arguments at the real size)
REAL_SIZES = {
    "nanogpt-gpt2": ("nanogpt.py", 124_439_808, {"size": "gpt2"}),  # get_num_params() 123,653,376
    "nanogpt-gpt2-xl": ("nanogpt.py", 1_557_611_200, {"size": "gpt2-xl"}),  # nanoGPT: "1558M params"
    "speedrun": ("speedrun.py", 162_201_636, {}),
    "imagenet_resnet": ("algoperf/imagenet_resnet.py", 25_557_032, {}),  # = torchvision resnet50
    "imagenet_vit": ("algoperf/imagenet_vit.py", 22_122_472, {}),
    "librispeech_conformer": ("algoperf/librispeech_conformer.py", 32_321_792, {}),
    "librispeech_deepspeech": ("algoperf/librispeech_deepspeech.py", 18_393_600, {}),
    "fastmri": ("algoperf/fastmri.py", 7_756_097, {}),
    "criteo1tb": ("algoperf/criteo1tb.py", 539_267_457, {}),
    "ogbg": ("algoperf/ogbg.py", 3_554_176, {}),
    "wmt": ("algoperf/wmt.py", 133_521_408, {}),
}

# AlgoPerf's global batch sizes (algorithms/target_setting_algorithms/get_batch_size.py), and the
# nanoGPT / speedrun micro-batches (train.py's batch_size 12; the record's device_batch_size 64)
DEFAULT_BATCH = {
    "nanogpt.py": 12,
    "speedrun.py": 64,
    "algoperf/imagenet_resnet.py": 1024,
    "algoperf/imagenet_vit.py": 1024,
    "algoperf/librispeech_conformer.py": 256,
    "algoperf/librispeech_deepspeech.py": 256,
    "algoperf/fastmri.py": 32,
    "algoperf/criteo1tb.py": 262_144,
    "algoperf/ogbg.py": 512,
    "algoperf/wmt.py": 128,
}
ALGOPERF = [f for f in DEFAULT_BATCH if f.startswith("algoperf/")]


@cache
def load(path: str) -> ModuleType:
    """A workload file imported by path, as `memprof estimate path/to/file.py:workload` does."""
    name = "memprof_example_" + path.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def param_tensors(model: torch.nn.Module) -> list[ParamTensor]:
    """The model's trainable parameters as the registry takes them (tied tensors once)."""
    return [ParamTensor(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


def call(model: torch.nn.Module, inputs: Any) -> Any:
    """The workload contract: dict -> model(**inputs), tuple/list -> model(*inputs), else model(inputs)."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def step(workload: dict[str, Any], optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The modelled step: forward, loss, backward, optimizer step, zero_grad(set_to_none=True)."""
    model, inputs = workload["model"], workload["inputs"]
    out = call(model, inputs)
    loss = workload["loss"](out, inputs)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_one_step(
    workload: dict[str, Any], optimizer: torch.optim.Optimizer, *, steady: bool = False
) -> tuple[float, Any]:
    """One step under memprof.track; returns the loss and the profile record. `steady`: a first step
    runs before the measured one, so that the optimizer states exist all through it (the traced step
    is a steady-state step)."""
    if steady:
        step(workload, optimizer)
    with memprof.track(workload["model"], optimizer) as run:
        loss = step(workload, optimizer)
    return loss.item(), run.record


# ------------------------------------------------------------------------------- real sizes


@pytest.mark.parametrize("case", list(REAL_SIZES))
def test_builds_at_its_real_size_with_the_published_parameter_count(case):
    # GIVEN the factory at the workload's real size, called on the meta device (nothing allocated)
    path, published, kwargs = REAL_SIZES[case]
    with torch.device("meta"):
        workload = load(path).workload(**kwargs)
    # THEN it is a plain mapping of the workload contract, and the count is the published one
    assert set(workload) <= {"model", "inputs", "loss", "optimizer"}
    assert {"model", "inputs", "loss"} <= set(workload)
    assert sum(p.numel() for p in workload["model"].parameters()) == published


def test_nanogpt_counts_as_nanogpt_reports_them():
    nanogpt = load("nanogpt.py")
    with torch.device("meta"):
        gpt2 = nanogpt.GPT(nanogpt.config_for("gpt2"))
        no_bias = nanogpt.GPT(nanogpt.config_for("gpt2", bias=False))
    # "number of parameters: 123.65M": get_num_params() leaves out the position embeddings
    # (scaling_laws.ipynb prints 123.653376); transformer_sizing.ipynb checks 124,337664 with bias=False
    assert gpt2.get_num_params() == 123_653_376
    assert no_bias.get_num_params(non_embedding=False) == 124_337_664
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # weight tying


def test_nanogpt_xl_is_memprofs_gpt2_xl_preset():
    from memprof.estimators.models import load_model

    with torch.device("meta"):
        model = load("nanogpt.py").workload(size="gpt2-xl")["model"]
    assert sum(p.numel() for p in model.parameters()) == load_model("gpt2-1.5b").num_parameters


@pytest.mark.parametrize("path", list(DEFAULT_BATCH))
def test_the_default_batch_is_the_published_one(path):
    factory = load(path).workload
    assert inspect.signature(factory).parameters["batch_size"].default == DEFAULT_BATCH[path]


@pytest.mark.parametrize("path", ALGOPERF)
def test_algoperf_inputs_at_the_published_batch(path):
    with torch.device("meta"):
        workload = load(path).workload()
    inputs = workload["inputs"]
    first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
    if path.endswith("ogbg.py"):  # a batch of graphs: 26 nodes per graph on average
        assert first.shape[0] == 512 * 26
    else:
        assert first.shape[0] == DEFAULT_BATCH[path]


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        load("algoperf/wmt.py").workload(size="huge")


# ------------------------------------------------------------------- one real step, measured


def _real_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    raise AssertionError(name)


TINY_STEPS = [pytest.param(path, "adamw", id=f"{Path(path).stem}-adamw") for path in ALGOPERF] + [
    pytest.param("algoperf/imagenet_resnet.py", "sgd-momentum", id="imagenet_resnet-sgd-momentum"),
]


def _assert_model_states(record: Any, model: torch.nn.Module, predicted_states: dict[str, int]) -> None:
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert record.model_states.parameters == param_bytes
    assert record.model_states.gradients == param_bytes  # every parameter gets a gradient
    assert dict(record.optimizer_state_breakdown) == predicted_states
    assert record.model_states.optimizer_states == sum(predicted_states.values())


@pytest.mark.slow
@pytest.mark.parametrize("path, optimizer", TINY_STEPS)
def test_algoperf_tiny_step_matches_the_registry(path, optimizer):
    # GIVEN the workload's tiny configuration and the real optimizer
    torch.manual_seed(0)
    workload = load(path).workload(batch_size=2, size="tiny")
    model = workload["model"]
    opt = _real_optimizer(optimizer, model)
    # WHEN one step trains under memprof.track
    loss, record = train_one_step(workload, opt)
    # THEN the loss is finite and the model states are the registry's, to the byte
    assert math.isfinite(loss)
    _assert_model_states(record, model, get_optimizer(optimizer).bytes_by_key(param_tensors(model)))


@pytest.mark.slow
def test_nanogpt_tiny_step_with_its_own_adamw():
    torch.manual_seed(0)
    workload = load("nanogpt.py").workload(batch_size=2, seq_len=16, size="tiny")
    model = workload["model"]
    opt = workload["optimizer"](list(model.parameters()))
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2  # decayed, not decayed
    loss, record = train_one_step(workload, opt)
    assert math.isfinite(loss)
    _assert_model_states(record, model, get_optimizer("adamw").bytes_by_key(param_tensors(model)))


@pytest.mark.slow
def test_speedrun_tiny_step_adam_plus_muon():
    # GIVEN the speedrun's optimizers: Adam on the embedding, head and scalars, Muon on the hidden matrices
    torch.manual_seed(0)
    speedrun = load("speedrun.py")
    workload = speedrun.workload(batch_size=2, seq_len=16, size="tiny")
    model = workload["model"]
    opt = workload["optimizer"](list(model.parameters()))
    adam, muon = opt.optimizers
    assert isinstance(adam, torch.optim.Adam) and isinstance(muon, torch.optim.Muon)
    matrices = {id(p) for g in muon.param_groups for p in g["params"]}
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert id(model.transformer.wte.weight) not in matrices and id(model.lm_head.weight) not in matrices
    # WHEN one step trains under memprof.track
    loss, record = train_one_step(workload, opt)
    # THEN the states are the registry's Adam over Adam's parameters plus its Muon over the matrices
    assert math.isfinite(loss)
    named = param_tensors(model)
    ids = [id(p) for _, p in model.named_parameters()]
    on_muon = [t for t, i in zip(named, ids) if i in matrices]
    on_adam = [t for t, i in zip(named, ids) if i not in matrices]
    predicted = get_optimizer("adam").bytes_by_key(on_adam)
    for key, n in get_optimizer("muon").bytes_by_key(on_muon).items():
        predicted[key] = predicted.get(key, 0) + n
    _assert_model_states(record, model, predicted)
    # and the chain's merged state view holds every parameter's state
    assert len(opt.state) == len(named)


def test_speedrun_chained_optimizer_delegates():
    speedrun = load("speedrun.py")
    workload = speedrun.workload(batch_size=1, seq_len=8, size="tiny")
    model = workload["model"]
    opt = workload["optimizer"](list(model.parameters()))
    assert [g for o in opt.optimizers for g in o.param_groups] == opt.param_groups
    workload["loss"](model(**workload["inputs"]), workload["inputs"]).backward()
    opt.step()
    saved = opt.state_dict()
    assert len(saved["optimizers"]) == 2
    opt.load_state_dict(saved)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(AttributeError, match="belongs to its optimizers"):
        opt.state = {"x": 1}


def test_speedrun_softcap_is_the_records():
    speedrun = load("speedrun.py")
    assert speedrun.GPTConfig().softcap == 30.0  # record #9; record #18 lowered it to 15
    assert speedrun.workload(batch_size=1, seq_len=8, size="tiny", softcap=15)["model"].config.softcap == 15


# --------------------------------------------------------------- the tracer against the measurement

# the speech workloads' CTC loss traces through memprof.tracer.rules (its lengths are Python ints)
TRACED = ["nanogpt.py", "speedrun.py", *ALGOPERF]


@pytest.mark.slow
@pytest.mark.parametrize("path", TRACED)
def test_traced_tiny_step_matches_the_measured_one(path):
    # GIVEN the tiny workload traced on fake tensors (adamw, or the workload's own optimizer), fp32, CPU
    module = load(path)
    shape = {"seq_len": 16} if path in ("nanogpt.py", "speedrun.py") else {}

    def factory(batch_size: int) -> dict[str, Any]:
        return module.workload(batch_size=batch_size, size="tiny", **shape)

    traced = memprof.trace(factory, optimizer="adamw", precision="32-true", device="cpu", batch_size=2).record
    # WHEN the same step runs for real under memprof.track, after a first step (a steady-state step)
    torch.manual_seed(0)
    workload = factory(batch_size=2)
    model = workload["model"]
    own = workload.get("optimizer")
    opt = own(list(model.parameters())) if own is not None else _real_optimizer("adamw", model)
    loss, measured = train_one_step(workload, opt, steady=True)
    # THEN the traced peak is the measured one within 1 %, and the model states are exact
    assert math.isfinite(loss)
    assert traced.peak.allocated == pytest.approx(measured.peak.allocated, rel=0.01)
    assert traced.model_states.optimizer_states == measured.model_states.optimizer_states
    assert dict(traced.optimizer_state_breakdown) == dict(measured.optimizer_state_breakdown)
    assert traced.model_states.parameters == measured.model_states.parameters


# ------------------------------------------------------------------ README's AlgoPerf table


@cache
def render_script() -> ModuleType:
    path = EXAMPLES.parent / "scripts" / "render_algoperf.py"
    spec = importlib.util.spec_from_file_location("render_algoperf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_algoperf_table_rows_are_up_to_date(capsys):
    # one row traced again (the whole table takes minutes: `python scripts/render_algoperf.py --check`)
    assert render_script().main(["--check", "--only", "ogbg"]) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_algoperf_check_fails_on_a_stale_row(tmp_path, capsys):
    readme = (EXAMPLES.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| librispeech_deepspeech |"))
    stale = tmp_path / "README.md"
    stale.write_text(readme.replace(row, row.replace("32 (of 256)", "31 (of 256)")))
    assert render_script().main(["--check", "--only", "librispeech_deepspeech", "--readme", str(stale)]) == 1
    assert "out of date (librispeech_deepspeech)" in capsys.readouterr().err


def test_algoperf_table_covers_every_workload():
    assert list(render_script().WORKLOADS) == [Path(p).stem for p in ALGOPERF]
    assert {f"algoperf/{name}.py": batch for name, batch in render_script().WORKLOADS.items()} == {
        p: DEFAULT_BATCH[p] for p in ALGOPERF
    }
