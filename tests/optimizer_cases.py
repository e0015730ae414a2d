"""Real optimizer instances on tiny real models, and the measurement of their state.

Shared by tests/test_optimizers.py and the predicted-vs-measured validation matrix:
- `MODELS`: factories for a tiny nn.Module (Linear + Embedding + LayerNorm + a bias-free Linear), a tiny
  Hugging Face GPT-2 and a tiny Llama with grouped-query attention (built from configs, no downloads);
- `CASES`: for every measured registry entry, how to build the real optimizer(s) and drive them
  (steps to steady state, closure, create_graph);
- `run_case` -> (ParamTensor list, Measured): steps the real optimizer with real loss.backward();
- `measure_state`: bytes held by tensors in `optimizer.state`, de-duplicated by storage.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memprof.estimators.tensors import ParamTensor

VOCAB = 100


class TinyNet(nn.Module):
    """Embedding -> Linear -> GELU -> LayerNorm -> bias-free Linear. Sizes cross bitsandbytes'
    min_8bit_size (4096): embedding 3200 (stays 32-bit), fc 5120 (20 blocks of 256),
    head 16000 (62.5 blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.fc = nn.Linear(32, 160)
        self.norm = nn.LayerNorm(160)
        self.head = nn.Linear(160, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.nn.functional.gelu(self.fc(self.embed(ids)))))


class SparseNet(nn.Module):
    """Two embeddings with sparse gradients: SparseAdam rejects dense gradients, so every parameter
    of its model must be a sparse embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32, sparse=True)
        self.out = nn.Embedding(VOCAB, 32, sparse=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.embed(ids) * self.out(ids)).sum(-1)


def _tiny_net() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (4, 8), generator=g)
    targets = torch.randint(0, VOCAB, (4, 8), generator=g)

    def loss(model: nn.Module) -> torch.Tensor:
        logits = model(ids)
        return nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))

    return TinyNet(), loss


def _sparse_net():
    ids = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(1))
    return SparseNet(), lambda model: model(ids).float().pow(2).mean()


def _hf_loss(vocab: int):
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    return lambda model: model(input_ids=ids, labels=ids).loss


def _gpt2():
    import transformers

    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    cfg._attn_implementation = "eager"  # double backward (Hessian optimizers) through plain ops
    return transformers.GPT2LMHeadModel(cfg), _hf_loss(128)


def _llama():
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    cfg._attn_implementation = "eager"
    return transformers.LlamaForCausalLM(cfg), _hf_loss(128)


MODELS: dict[str, Callable[[], tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]]] = {
    "tiny": _tiny_net,
    "gpt2": _gpt2,
    "llama": _llama,
}


# ---------------------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    total: int
    by_key: dict[str, int]
    tensors: int


def _tensors_in(value: Any, seen: set[int]):
    """Every tensor reachable from a state value: lists, tuples, dicts, and plain objects (GaLore keeps
    its projection matrix in a GaLoreProjector)."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v, seen)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors_in(v, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, (type, nn.Module)):
        for v in vars(value).values():
            yield from _tensors_in(v, seen)


def measure_state(optimizers: list[torch.optim.Optimizer]) -> Measured:
    """Bytes of the storages behind every tensor in optimizer.state (parameter order of
    param_groups, then key order), each storage counted once, for the first key that holds it.
    Storage bytes equal numel * element_size except for views (GaLore's sliced SVD factor)."""
    storages: set[int] = set()
    by_key: dict[str, int] = {}
    count = 0
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    for t in _tensors_in(value, set()):
                        storage = t.untyped_storage()
                        ptr = storage.data_ptr()
                        if storage.nbytes() == 0 or ptr in storages:
                            continue
                        storages.add(ptr)
                        count += 1
                        by_key[key] = by_key.get(key, 0) + storage.nbytes()
    return Measured(sum(by_key.values()), by_key, count)


def group_tensor_bytes(optimizers: list[torch.optim.Optimizer]) -> int:
    """Tensors kept in param_groups besides the parameters (e.g. a tensor lr): not optimizer.state."""
    total = 0
    for opt in optimizers:
        for group in opt.param_groups:
            for k, v in group.items():
                if k != "params":
                    total += sum(t.untyped_storage().nbytes() for t in _tensors_in(v, set()))
    return total


# ---------------------------------------------------------------------------------- real optimizers

Factory = Callable[[nn.Module, dict], list[torch.optim.Optimizer]]


@dataclass
class Case:
    make: Factory
    steps: int = 1
    create_graph: bool = False  # Hutchinson Hessian optimizers differentiate the gradient
    closure: bool = False  # LBFGS
    train_mode: bool = False  # schedule-free optimizers must be put in train mode
    sparse: bool = False  # SparseAdam needs sparse gradients
    models: tuple[str, ...] = ("tiny", "gpt2", "llama")
    # options measured per case beyond the defaults: list of option dicts
    variants: list[dict] = field(default_factory=lambda: [{}])


def _one(cls: Callable[..., torch.optim.Optimizer], **fixed: Any) -> Factory:
    return lambda model, opts: [cls(model.parameters(), **{**fixed, **opts})]


def _muon(model: nn.Module, opts: dict) -> list[torch.optim.Optimizer]:
    opts = dict(opts)
    opts.pop("fallback", None)
    two_d = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2]
    opts_ = [torch.optim.Muon(two_d, **opts)]
    return opts_ + ([torch.optim.AdamW(rest)] if rest else [])


def _galore(model: nn.Module, opts: dict) -> list[torch.optim.Optimizer]:
    from galore_torch import GaLoreAdamW

    opts = dict(opts)
    chosen = opts.pop("galore_params", None)
    named = list(model.named_parameters())
    if chosen is None:
        chosen = {n for n, p in named if p.ndim == 2}
    galore = [p for n, p in named if n in chosen]
    regular = [p for n, p in named if n not in chosen]
    group = {
        "params": galore,
        "rank": opts.pop("rank", 128),
        "update_proj_gap": 200,
        "scale": 0.25,
        "proj_type": opts.pop("proj_type", "std"),
    }
    return [GaLoreAdamW([{"params": regular}, group], **opts)]


def _pyopt(name: str) -> Factory:
    def make(model, opts):
        import pytorch_optimizer

        return [getattr(pytorch_optimizer, name)(model.parameters(), **opts)]

    return make


def _prodigy(model, opts):
    from prodigyopt import Prodigy

    opts = dict(opts)
    opts.pop("zero_params", None)  # a description of the model for the estimate, not an argument
    return [Prodigy(model.parameters(), **opts)]


def _dadapt(model, opts):
    from dadaptation import DAdaptAdam

    return [DAdaptAdam(model.parameters(), **opts)]


def _schedulefree(model, opts):
    from schedulefree import AdamWScheduleFree

    return [AdamWScheduleFree(model.parameters(), **opts)]


def _adamw8bit(model, opts):
    import bitsandbytes as bnb

    return [bnb.optim.AdamW8bit(model.parameters(), **opts)]


CASES: dict[str, Case] = {
    "sgd": Case(_one(torch.optim.SGD, lr=0.01), variants=[{}, {"momentum": 0.9}]),
    "sgd-momentum": Case(
        _one(torch.optim.SGD, lr=0.01), variants=[{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}]
    ),
    "adam": Case(_one(torch.optim.Adam), variants=[{}, {"amsgrad": True}]),
    "adamw": Case(_one(torch.optim.AdamW), variants=[{}, {"amsgrad": True}]),
    "adagrad": Case(_one(torch.optim.Adagrad)),
    "adadelta": Case(_one(torch.optim.Adadelta)),
    "adamax": Case(_one(torch.optim.Adamax)),
    "asgd": Case(_one(torch.optim.ASGD)),
    "nadam": Case(_one(torch.optim.NAdam)),
    "radam": Case(_one(torch.optim.RAdam)),
    "rmsprop": Case(
        _one(torch.optim.RMSprop),
        variants=[{}, {"momentum": 0.9}, {"centered": True}, {"momentum": 0.9, "centered": True}],
    ),
    "rprop": Case(_one(torch.optim.Rprop)),
    "sparse-adam": Case(_one(torch.optim.SparseAdam), sparse=True, models=("sparse",)),
    "adafactor": Case(_one(torch.optim.Adafactor)),
    "muon": Case(_muon),
    "lbfgs": Case(
        _one(torch.optim.LBFGS, lr=0.1), closure=True, steps=10, variants=[{"history_size": 3}, {"history_size": 7}]
    ),
    "lion": Case(_pyopt("Lion")),
    "adabelief": Case(_pyopt("AdaBelief"), variants=[{}, {"ams_bound": True}, {"adanorm": True}]),
    "diffgrad": Case(_pyopt("DiffGrad"), variants=[{}, {"ams_bound": True}]),
    "adamw8bit": Case(_adamw8bit, variants=[{}, {"min_8bit_size": 5000}]),
    "galore": Case(_galore, variants=[{}, {"rank": 8}]),
    "shampoo": Case(_pyopt("Shampoo"), variants=[{}, {"momentum": 0.9}]),
    "soap": Case(
        _pyopt("SOAP"),
        steps=2,
        variants=[{"precondition_frequency": 1}, {"precondition_1d": True, "max_precondition_dim": 100}],
    ),
    "sophia": Case(_pyopt("SophiaH"), create_graph=True),
    "adahessian": Case(_pyopt("AdaHessian"), create_graph=True),
    "prodigy": Case(_prodigy, variants=[{}, {"slice_p": 11}, {"betas": (0.0, 0.999)}]),
    "dadapt-adam": Case(_dadapt),
    "schedulefree-adamw": Case(_schedulefree, train_mode=True),
}

# option names of the real constructors that do not change memory (not in the spec's options)
NON_MEMORY_OPTIONS = {"nesterov", "precondition_frequency"}


def _sparse():
    return _sparse_net()


_PRISTINE: dict[tuple[str, torch.dtype], tuple[nn.Module, Callable]] = {}


def build_model(name: str, dtype: torch.dtype = torch.float32):
    """A fresh copy of the seeded model (built once per name and dtype) and its loss function."""
    key = (name, dtype)
    if key not in _PRISTINE:
        torch.manual_seed(0)
        model, loss = _sparse() if name == "sparse" else MODELS[name]()
        _PRISTINE[key] = (model.to(dtype), loss)
    model, loss = _PRISTINE[key]
    return copy.deepcopy(model), loss


def run_case(name: str, model_name: str, options: dict, dtype: torch.dtype = torch.float32):
    """Step the real optimizer `name` on `model_name`; returns (params, extra, measured, optimizers).
    `extra` are the options the estimate needs that describe the model rather than the optimizer."""
    case = CASES[name]
    model, loss_fn = build_model(model_name, dtype)
    extra: dict[str, Any] = {}
    if name == "prodigy":
        extra["zero_params"] = tuple(n for n, p in model.named_parameters() if not p.detach().any())
    opts = case.make(model, dict(options))
    if case.train_mode:
        for o in opts:
            o.train()

    def closure():
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward(create_graph=case.create_graph)
        return loss

    for _ in range(case.steps):
        if case.closure:
            for o in opts:
                o.step(closure)
            if name == "lbfgs":
                state = opts[0].state[opts[0]._params[0]]
                if len(state.get("old_dirs", [])) == opts[0].param_groups[0]["history_size"]:
                    break
        else:
            closure()
            for o in opts:
                o.step()
    stepped = list(model.parameters()) if name == "adagrad" else [p for p in model.parameters() if p.grad is not None]
    if case.create_graph:  # drop the double-backward graph hanging off the gradients
        for p in model.parameters():
            p.grad = None
    names = {id(p): n for n, p in model.named_parameters()}
    params = [ParamTensor(names[id(p)], tuple(p.shape)) for p in stepped]
    return params, extra, measure_state(opts), opts
