"""AlgoPerf "wmt": an encoder-decoder Transformer translating WMT17 German→English, as a workload.

    memprof estimate examples/algoperf/wmt.py:workload --batch-size 128 --seq-len 256

The AlgoPerf Transformer (algoperf/workloads/wmt/wmt_pytorch/models.py, Transformer defaults):
32,000-token SentencePiece vocabulary with one embedding shared by the encoder, the decoder and the
output layer, d_model 1024, 16 heads, feed-forward 1024, 6 + 6 pre-LN layers, bias-free attention
projections, sinusoidal positions — 133,521,408 parameters (its PyTorch reference instantiated,
counted).
Inputs: source and target token ids of length 256 (the workload's maximum length), random;
loss: cross-entropy with label smoothing 0.1 (the PyTorch workload's loss_fn default), padding id 0
ignored.

Batch size: 128 (algorithms/target_setting_algorithms/get_batch_size.py,
mlcommons/algorithmic-efficiency).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BATCH_SIZE = 128
SEQ_LEN = 256
SIZES = {
    "full": dict(vocab=32000, d_model=1024, heads=16, d_hid=1024, layers=6),
    "tiny": dict(vocab=64, d_model=32, heads=2, d_hid=32, layers=1),
}


def sinusoids(length: int, dim: int, device: torch.device) -> torch.Tensor:
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    return torch.cat([torch.sin(position * div), torch.cos(position * div)], dim=1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    B, T, C = q.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, t.shape[1], heads, C // heads).transpose(1, 2)

    y = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=causal)
    return y.transpose(1, 2).reshape(B, T, C)


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        return self.out_proj(attention(q, k, v, self.heads, self.causal))


class CrossAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.kv_proj = nn.Linear(d, 2 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self.out_proj(attention(self.q_proj(x), k, v, self.heads, causal=False))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, d_hid: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d, heads, causal=False)
        self.linear1 = nn.Linear(d, d_hid)
        self.linear2 = nn.Linear(d_hid, d)
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        return x + self.linear2(F.relu(self.linear1(self.norm2(x))))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, d_hid: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d, heads, causal=True)
        self.multihead_attn = CrossAttention(d, heads)
        self.linear1 = nn.Linear(d, d_hid)
        self.linear2 = nn.Linear(d_hid, d)
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.norm3 = nn.LayerNorm(d, eps=1e-6)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.multihead_attn(self.norm2(x), memory)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class Transformer(nn.Module):
    def __init__(self, vocab: int, d_model: int, heads: int, d_hid: int, layers: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.shared_embedding = nn.Embedding(vocab, d_model)
        nn.init.normal_(self.shared_embedding.weight, std=d_model**-0.5)  # the reference's init
        self.encoder_layers = nn.ModuleList([EncoderLayer(d_model, heads, d_hid) for _ in range(layers)])
        self.encoder_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.decoder_layers = nn.ModuleList([DecoderLayer(d_model, heads, d_hid) for _ in range(layers)])
        self.decoder_norm = nn.LayerNorm(d_model, eps=1e-6)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.shared_embedding(tokens) * math.sqrt(self.d_model)
        return x + sinusoids(tokens.shape[1], self.d_model, tokens.device).to(x.dtype)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        memory = self.embed(src)
        for layer in self.encoder_layers:
            memory = layer(memory)
        memory = self.encoder_norm(memory)
        # teacher forcing: the decoder reads the target shifted right by one (0 starts the sequence)
        x = self.embed(F.pad(tgt[:, :-1], (1, 0)))
        for layer in self.decoder_layers:
            x = layer(x, memory)
        return self.decoder_norm(x) @ self.shared_embedding.weight.t()  # tied output layer


def workload(batch_size: int = BATCH_SIZE, seq_len: int = SEQ_LEN, size: str = "full") -> dict[str, object]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    model = Transformer(**cfg)
    device = model.shared_embedding.weight.device
    inputs = {
        "src": torch.randint(1, cfg["vocab"], (batch_size, seq_len), device=device),
        "tgt": torch.randint(1, cfg["vocab"], (batch_size, seq_len), device=device),
    }

    def loss(logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(
            logits.flatten(0, 1).float(), inputs["tgt"].flatten(), ignore_index=0, label_smoothing=0.1
        )

    return {"model": model, "inputs": inputs, "loss": loss}
