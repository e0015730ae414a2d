"""The modded-nanoGPT speedrun's model and optimizers as a memprof workload, in plain PyTorch.

    memprof estimate examples/speedrun.py:workload --precision bf16-mixed --batch-size 64 --seq-len 1024
    workload(batch_size=64, seq_len=1024)          # a mapping: model, inputs, loss, optimizer

Which record: KellerJordan/modded-nanogpt, record #9 "Value and embedding skip connections,
momentum warmup, logit softcap" (11/06/24, 8.2 minutes; the code is at the top of
records/track_1_short/2024-11-06_ShortcutsTweaks/dd7304a6-cc43-4d5e-adb8-c070111464a1.txt). It is
the last record with every feature this example models and nothing it does not (record #12 moved to
FlexAttention, #14 added value embeddings):
- rotary embeddings (base 10000, cos/sin cached in bfloat16), QK-norm (F.rms_norm on q and k),
  ReLU² MLP, F.rms_norm (no weights) on the embedding, before each sub-block and before the head;
- head dim 128 (n_head 6 at n_embd 768), 12 layers, vocabulary 50304, no biases anywhere;
- attention and MLP output projections and the untied lm_head zero-initialised;
- value residual (a learnable scalar `lamb` per attention layer) and embedding skip (two learnable
  scalars `lambdas` per block);
- logits soft-capped with 30·tanh(logits/30), then cast to float32 for the cross-entropy (record #18
  lowered the cap to 15: `softcap=15` builds that);
- optimizers: Adam(betas (0.9, 0.95), fused) on the embedding (lr 0.3), the head (lr 0.002) and the
  scalars (lr 0.02), Muon (lr 0.02, momentum 0.95, Nesterov, 5 Newton-Schulz steps) on the hidden
  2-D matrices. The record's own Muon keeps one `momentum_buffer` per matrix, as torch.optim.Muon
  does; this file uses torch.optim.Muon (its default learning-rate adjustment, max(1, rows/cols)^0.5,
  is the record's scale).

The record steps four optimizers; a workload's `optimizer(params)` returns one object, so
`ChainedOptimizer` holds one Adam (three parameter groups, the record's three Adams) and one Muon
and steps both. It is a torch.optim.Optimizer whose `param_groups` are its children's groups and whose
`state` is a merged view of theirs. memprof's profiler sees the chain and, through its global step
hooks, each child; optimizer-state bytes are counted once per storage. The registry's prediction of
the same states is get_optimizer("adam") on the embedding, head and scalars plus get_optimizer("muon")
on the hidden matrices.

The parameter count: 2 × 50304 × 768 (embedding, head) + 12 × (4·768² attention + 8·768² MLP +
3 scalars) = 162,201,636 — also what the record's own model code, instantiated on the meta device,
counts, with the same parameter names and shapes as this file.

No memprof import: a workload file is plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SIZES = {
    "speedrun": dict(vocab_size=50304, n_layer=12, n_head=6, n_embd=768),  # record #9
    "tiny": dict(vocab_size=128, n_layer=2, n_head=2, n_embd=64),  # not the record's: for tests
}


class Rotary(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(x.shape[1], device=x.device).type_as(self.inv_freq)
        freqs = torch.outer(t, self.inv_freq)
        return freqs.cos().bfloat16()[None, :, None, :], freqs.sin().bfloat16()[None, :, None, :]


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], 3).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj.weight.data.zero_()
        self.rotary = Rotary(self.head_dim)
        self.lamb = nn.Parameter(torch.tensor(0.5))  # value residual

    def forward(self, x: torch.Tensor, v1: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if v1 is None:
            v1 = v  # the first block's values feed every later block
        v = (1 - self.lamb) * v + self.lamb * v1.view_as(v)
        cos, sin = self.rotary(q)
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))  # QK-norm
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view_as(x)), v1


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.c_proj.weight.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0]))  # embedding skip

    def forward(self, x: torch.Tensor, v1: torch.Tensor | None, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.lambdas[0] * x + self.lambdas[1] * x0
        x1, v1 = self.attn(F.rms_norm(x, (x.size(-1),)), v1)
        x = x + x1
        return x + self.mlp(F.rms_norm(x, (x.size(-1),))), v1


@dataclass
class GPTConfig:
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6
    n_embd: int = 768
    softcap: float = 30.0


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied
        self.lm_head.weight.data.zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(self.transformer.wte(idx), (self.config.n_embd,))
        x0, v1 = x, None
        for block in self.transformer.h:
            x, v1 = block(x, v1, x0)
        x = F.rms_norm(x, (x.size(-1),))
        logits = self.lm_head(x)
        cap = self.config.softcap
        logits = (cap * torch.tanh(logits / cap)).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


class ChainedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one: `step()` steps each in order, `zero_grad()` clears every
    group. `param_groups` are the children's own group dicts; `state` is a read-only merged view of
    the children's states (each child keeps and updates its own)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    @state.setter
    def state(self, value: Any) -> None:
        if value:  # Optimizer.__init__ assigns an empty defaultdict: the children own the state
            raise AttributeError("a ChainedOptimizer's state belongs to its optimizers; load it through them")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(s)


def speedrun_optimizer(model: GPT, params: Iterable[torch.Tensor] | None = None) -> ChainedOptimizer:
    """The record's optimizers over `params` (default: every parameter of `model`)."""
    wanted = {id(p) for p in (model.parameters() if params is None else params)}
    hidden = [p for p in model.transformer.h.parameters() if id(p) in wanted]
    matrices = [p for p in hidden if p.ndim == 2]
    scalars = [p for p in hidden if p.ndim < 2]
    fused = model.lm_head.weight.device.type == "cuda"  # the record's fused=True, where it exists
    groups = [
        {"params": [p for p in [model.transformer.wte.weight] if id(p) in wanted], "lr": 0.3},
        {"params": [p for p in [model.lm_head.weight] if id(p) in wanted], "lr": 0.002},
        {"params": scalars, "lr": 0.02},
    ]
    adam = torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.95), fused=fused or None)
    muon = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5)
    return ChainedOptimizer([adam, muon])


def workload(
    batch_size: int = 64, seq_len: int = 1024, size: str = "speedrun", softcap: float = 30.0
) -> dict[str, object]:
    """One training micro-step of the record: device_batch_size 64 × sequence_length 1024 per GPU
    (8 GPUs, no gradient accumulation: 512 sequences a step)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    config = GPTConfig(**SIZES[size], softcap=softcap)
    model = GPT(config)
    device = model.lm_head.weight.device
    tokens = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), device=device)
    inputs = {"idx": tokens[:, :-1].contiguous(), "targets": tokens[:, 1:].contiguous()}
    return {
        "model": model,
        "inputs": inputs,
        "loss": lambda out, inputs: out,  # the model returns the loss
        "optimizer": lambda params: speedrun_optimizer(model, params),
    }
