"""nanoGPT's GPT (karpathy/nanoGPT model.py) as a memprof workload, in plain PyTorch.

    memprof estimate examples/nanogpt.py:workload --batch-size 12 --seq-len 1024
    workload(batch_size=12, seq_len=1024, size="gpt2-xl")      # a mapping: model, inputs, loss, optimizer

The model keeps model.py's structure and parameter names (GPTConfig, CausalSelfAttention on
F.scaled_dot_product_attention, MLP with GELU, weight tying, the gpt2 sizes table). The sizes are
built as `GPT.from_pretrained` builds them (vocab_size 50257, block_size 1024, bias=True), so
`get_num_params()` is nanoGPT's own figure: 123.65M for gpt2 (scaling_laws.ipynb prints 123.653376;
124,439,808 with the position embeddings), 1,557,611,200 in all for gpt2-xl ("1558M params").
karpathy/nanoGPT's model.py itself, instantiated on the meta device with the same configs, has the
same counts and the same parameter names and shapes. The step is train.py's:
`logits, loss = model(X, Y)`, AdamW in two groups (2-D tensors decayed, the rest not), betas
(0.9, 0.95), fused on CUDA.

No memprof import: a workload file is plain PyTorch.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# model.py's from_pretrained table; the comments are nanoGPT's
SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
    # not nanoGPT's: a CPU-sized model with the same structure, for tests
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, vocab_size=128, block_size=64),
}


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nn.LayerNorm cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # nanoGPT's default: 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one tensor, counted once
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding: bool = True) -> int:
        """nanoGPT's count: the position embeddings are left out by default; the token embeddings
        stay because the tied lm_head uses them."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = idx.size(1)
        assert t <= self.config.block_size, f"sequence of length {t} > block size {self.config.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:  # inference: the last position only
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        """model.py's AdamW: 2-D tensors (matmul weights, embeddings) decayed, biases and norms not."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **(dict(fused=True) if fused else {}))


def config_for(size: str = "gpt2", **overrides: Any) -> GPTConfig:
    """The GPTConfig of a row of SIZES, built as from_pretrained builds it (vocab 50257, bias)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    args: dict[str, Any] = dict(vocab_size=50257, block_size=1024, bias=True, dropout=0.0)
    args.update(SIZES[size])
    args.update(overrides)
    return GPTConfig(**args)


def workload(batch_size: int = 12, seq_len: int = 1024, size: str = "gpt2") -> dict[str, object]:
    """One train.py step: batch_size 12 × block_size 1024 are train.py's defaults (the micro-batch)."""
    config = config_for(size)
    if seq_len > config.block_size:
        raise ValueError(f"seq_len {seq_len} > block_size {config.block_size} of {size}")
    model = GPT(config)
    device = model.lm_head.weight.device
    # next-token data: targets are the inputs shifted by one, as train.py's get_batch makes them
    tokens = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), device=device)
    inputs = {"idx": tokens[:, :-1].contiguous(), "targets": tokens[:, 1:].contiguous()}

    def optimizer(params: object) -> torch.optim.Optimizer:
        # train.py: weight_decay 1e-1, learning_rate 6e-4, betas (0.9, 0.95)
        return model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), model.lm_head.weight.device.type)

    return {"model": model, "inputs": inputs, "loss": lambda out, inputs: out[1], "optimizer": optimizer}
