"""AlgoPerf "librispeech_conformer": a Conformer CTC model on LibriSpeech, as a memprof workload.

    memprof estimate examples/algoperf/librispeech_conformer.py:workload --batch-size 256

The AlgoPerf Conformer (algoperf/workloads/librispeech_conformer/librispeech_pytorch/models.py,
ConformerConfig defaults): a 2-layer stride-2 convolutional subsampler (512 channels) into a
512-wide linear, 4 Conformer blocks (half-step feed-forwards ×4, 8-head self-attention with a learned
per-dimension query scale, a GLU + depthwise-convolution (kernel 5) + batch-norm + swish module,
a final layer norm), a layer norm and a 1024-way output — 32,321,792 parameters (its PyTorch
reference instantiated, counted).

A stand-in for the input pipeline: the reference's frontend turns 320,000 samples (20 s at 16 kHz)
into 2,000 frames of 80 log-mel bins without parameters; here those frames are random. Targets:
random token ids, 256 per utterance (the reference pads transcripts to 256); loss: CTC (blank 0).

Batch size: 256 (algorithms/target_setting_algorithms/get_batch_size.py,
mlcommons/algorithmic-efficiency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_SIZE = 256
SIZES = {
    "full": dict(dim=512, heads=8, layers=4, kernel=5, vocab=1024, frames=2000, mel=80, target_len=256),
    "tiny": dict(dim=32, heads=2, layers=1, kernel=5, vocab=16, frames=64, mel=16, target_len=4),
}


class Subsample(nn.Module):
    """Two 3×3 stride-2 convolutions: time and frequency ÷ 4, then a linear to the model width."""

    def __init__(self, mel: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, dim, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        self.linear = nn.Linear(dim * ((mel + 3) // 4), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, mel) -> (B, T/4, dim)
        x = F.relu(self.conv2(F.relu(self.conv1(x[:, None]))))
        B, C, T, Fq = x.shape
        return self.linear(x.permute(0, 2, 1, 3).reshape(B, T, C * Fq))


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(self.ln(x))))


class MHSA(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.query_scale = nn.Parameter(torch.zeros(dim // heads))  # per-dimension, softplus-scaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.in_proj(self.ln(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q = q * F.softplus(self.query_scale) * 1.442695041  # 1/softplus(0): the scale starts at 1
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class ConvModule(nn.Module):
    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.lin1 = nn.Linear(dim, dim)
        self.lin2 = nn.Linear(dim, dim)
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        self.lin3 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln(x)
        x = F.glu(torch.cat([self.lin1(x), self.lin2(x)], dim=2))
        x = self.bn(self.conv1(x.transpose(1, 2)))
        return self.lin3(F.silu(x).transpose(1, 2))


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kernel: int) -> None:
        super().__init__()
        self.ff1 = FeedForward(dim)
        self.mhsa = MHSA(dim, heads)
        self.conv = ConvModule(dim, kernel)
        self.ff2 = FeedForward(dim)
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.mhsa(x)
        x = x + self.conv(x)
        x = x + 0.5 * self.ff2(x)
        return self.ln(x)


class Conformer(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, kernel: int, vocab: int, mel: int, **_: object) -> None:
        super().__init__()
        self.subsample = Subsample(mel, dim)
        self.conformers = nn.ModuleList([ConformerBlock(dim, heads, kernel) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)
        self.lin = nn.Linear(dim, vocab)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.subsample(features)
        for block in self.conformers:
            x = block(x)
        return self.lin(self.ln(x))  # (B, T/4, vocab) logits


def ctc_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CTC over every output frame and every target token (no padding in the synthetic batch)."""
    B, T, _ = logits.shape
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, vocab)
    # lengths as Python ints: their shapes are then static (memprof's tracer runs on fake tensors)
    input_lengths, target_lengths = [T] * B, [targets.shape[1]] * B
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, zero_infinity=True)


def workload(batch_size: int = BATCH_SIZE, size: str = "full") -> dict[str, object]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    model = Conformer(**cfg)
    device = model.lin.weight.device
    features = torch.randn(batch_size, cfg["frames"], cfg["mel"], device=device)
    targets = torch.randint(1, cfg["vocab"], (batch_size, cfg["target_len"]), device=device)  # 0 is the blank
    return {"model": model, "inputs": features, "loss": lambda out, inputs: ctc_loss(out, targets)}
