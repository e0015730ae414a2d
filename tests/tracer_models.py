"""Small non-Hugging-Face models and their workload factories, for the tracer's tests.

Each factory builds a model, its inputs and its loss exactly as a user's training script would; the
tests call it once on fake tensors (memprof.trace) and once for real under memprof.track, and
compare. Kept importable by name (`tracer_models:gpt_workload`) for the CLI tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import memprof

# ------------------------------------------------------------------ nanoGPT, abridged


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 256, block_size: int = 64, n_layer: int = 2, n_embd: int = 64, n_head: int = 4):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT does
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def gpt_workload(batch_size: int = 4, seq_len: int = 64) -> memprof.Workload:
    torch.manual_seed(0)
    model = GPT(block_size=max(64, seq_len))
    idx = torch.randint(0, 256, (batch_size, seq_len))
    return memprof.Workload(model, (idx, idx.clone()), loss=lambda out, inputs: out[1])


# ------------------------------------------------------------------------------- CNN


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def cnn_workload(batch_size: int = 8) -> memprof.Workload:
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32)
    labels = torch.randint(0, 10, (batch_size,))
    return memprof.Workload(SmallCNN(), images, loss=lambda out, inputs: F.cross_entropy(out, labels))


# ------------------------------------------------------- an MLP with its own checkpointing


class CheckpointedMLP(nn.Module):
    def __init__(self, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)) for _ in range(depth)
        )
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + checkpoint(block, x, use_reentrant=False)
        return self.out(x).pow(2).mean()  # a scalar: the default loss is the output itself


def mlp_workload(batch_size: int = 32) -> dict:
    torch.manual_seed(0)
    model = CheckpointedMLP()
    return {
        "model": model,
        "inputs": torch.randn(batch_size, 256),
        "optimizer": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    }


def tiny_workload(batch_size: int = 4) -> dict:
    """A few parameters, no optimizer of its own: fast to trace once per registry optimizer."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x, y = torch.randn(batch_size, 16), torch.randn(batch_size, 4)
    return {"model": model, "inputs": x, "loss": lambda out, inputs: torch.nn.functional.mse_loss(out, y)}


# ----------------------------------------------------------- a Hugging Face tiny model


def hf_llama_workload(batch_size: int = 2, seq_len: int = 32) -> memprof.Workload:
    from memprof.tiny_models import batch, build

    model, _ = build("llama", "sdpa")
    return memprof.Workload(model, batch("llama", batch_size, seq_len))


def hf_llama_model():  # a bare Hugging Face model: memprof makes its inputs
    from memprof.tiny_models import build

    return build("llama", "sdpa")[0]


def mlp_module():  # a bare module that is not a Hugging Face model
    return nn.Sequential(nn.Linear(4, 4))


def peft_lora_workload(batch_size: int = 2, seq_len: int = 32) -> memprof.Workload:
    """A tiny Llama with LoRA adapters (peft builds and moves them with Module.to() in the factory)."""
    import peft

    from memprof.tiny_models import batch, build

    model, _ = build("llama", "sdpa")
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    lora = peft.get_peft_model(model, config)
    lora.to(torch.float32)
    return memprof.Workload(lora, batch("llama", batch_size, seq_len))


# ----------------------------------------------------------- CTC, mixture of experts


class CtcModel(nn.Module):
    # no LSTM: on the CPU, nn.LSTM runs oneDNN's mkldnn_rnn_layer, whose training workspace the meta kernel
    # (torch/_meta_registrations.py) gives 0 bytes; that is the LSTM's limit, not the CTC rule's
    def __init__(self, features: int = 16, hidden: int = 32, vocab: int = 12) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.GELU())
        self.head = nn.Linear(hidden, vocab)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (T, B, features) -> log-probs (T, B, vocab)
        return self.head(self.body(frames)).log_softmax(-1)


def ctc_workload(batch_size: int = 3, tensor_lengths: bool = False) -> dict:
    """A CTC loss with Python-int lengths (the target lengths differ: the longest sets log_alpha's width)."""
    model = CtcModel()
    frames = torch.randn(40, batch_size, 16)
    targets = torch.randint(1, 12, (batch_size, 9))
    input_lengths = [40 - i for i in range(batch_size)]
    target_lengths = [9 - 2 * i for i in range(batch_size)]
    if tensor_lengths:
        input_lengths, target_lengths = torch.tensor(input_lengths), torch.tensor(target_lengths)

    def loss(out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return F.ctc_loss(out, targets, input_lengths, target_lengths)

    return {"model": model, "inputs": frames, "loss": loss}


def ctc_tensor_lengths_workload(batch_size: int = 3) -> dict:
    return ctc_workload(batch_size, tensor_lengths=True)


class TopTwoMoE(nn.Module):
    """A top-2 mixture of experts routed as Mixtral's sparse block does: torch.where on the expert mask."""

    def __init__(self, dim: int = 16, experts: int = 4) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, chosen = self.router(x).softmax(-1).topk(2, dim=-1)
        out = torch.zeros_like(x)
        mask = F.one_hot(chosen, len(self.experts)).permute(2, 1, 0)
        for e, expert in enumerate(self.experts):
            slot, token = torch.where(mask[e])
            out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return out.pow(2).mean()


def moe_workload(batch_size: int = 8) -> dict:
    return {"model": TopTwoMoE(), "inputs": torch.randn(batch_size, 16)}
