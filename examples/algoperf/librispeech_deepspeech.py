"""AlgoPerf "librispeech_deepspeech": a DeepSpeech-style LSTM CTC model on LibriSpeech, as a workload.

    memprof estimate examples/algoperf/librispeech_deepspeech.py:workload --batch-size 256

The AlgoPerf DeepSpeech (algoperf/workloads/librispeech_deepspeech/librispeech_pytorch/models.py,
DeepspeechConfig defaults): the same stride-2 convolutional subsampler as the Conformer, 6 residual
layers of batch-norm + bidirectional LSTM (256 per direction), 3 residual layers of batch-norm +
linear + ReLU, a layer norm and a 1024-way output — 18,393,600 parameters (its PyTorch reference
instantiated, counted).

A stand-in for the input pipeline: 2,000 frames of 80 log-mel bins (what the reference's
parameter-free frontend makes of 320,000 samples), random; targets: random token ids, 256 per
utterance; loss: CTC (blank 0).

Batch size: 256 (algorithms/target_setting_algorithms/get_batch_size.py,
mlcommons/algorithmic-efficiency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_SIZE = 256
SIZES = {
    "full": dict(dim=512, lstm_layers=6, ffn_layers=3, vocab=1024, frames=2000, mel=80, target_len=256),
    "tiny": dict(dim=32, lstm_layers=1, ffn_layers=1, vocab=16, frames=64, mel=16, target_len=4),
}


class Subsample(nn.Module):
    """Two 3×3 stride-2 convolutions: time and frequency ÷ 4, then a linear to the model width."""

    def __init__(self, mel: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, dim, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        self.lin = nn.Linear(dim * ((mel + 3) // 4), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x[:, None]))))
        B, C, T, Fq = x.shape
        return self.lin(x.permute(0, 2, 1, 3).reshape(B, T, C * Fq))


class BatchRNN(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn_normalization_layer = nn.BatchNorm1d(dim)
        self.lstm = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_normalization_layer(x.transpose(1, 2)).transpose(1, 2)
        return self.lstm(x)[0]


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn_normalization_layer = nn.BatchNorm1d(dim)
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.lin(self.bn_normalization_layer(x.transpose(1, 2)).transpose(1, 2)))


class DeepSpeech(nn.Module):
    def __init__(self, dim: int, lstm_layers: int, ffn_layers: int, vocab: int, mel: int, **_: object) -> None:
        super().__init__()
        self.subsample = Subsample(mel, dim)
        self.lstms = nn.ModuleList([BatchRNN(dim) for _ in range(lstm_layers)])
        self.ffns = nn.ModuleList([FeedForward(dim) for _ in range(ffn_layers)])
        self.ln = nn.LayerNorm(dim)
        self.lin = nn.Linear(dim, vocab)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.subsample(features)
        for layer in [*self.lstms, *self.ffns]:
            x = x + layer(x)  # residual connections (enable_residual_connections)
        return self.lin(self.ln(x))


def ctc_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    B, T, _ = logits.shape
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)
    # lengths as Python ints: their shapes are then static (memprof's tracer runs on fake tensors)
    input_lengths, target_lengths = [T] * B, [targets.shape[1]] * B
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, zero_infinity=True)


def workload(batch_size: int = BATCH_SIZE, size: str = "full") -> dict[str, object]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    model = DeepSpeech(**cfg)
    device = model.lin.weight.device
    features = torch.randn(batch_size, cfg["frames"], cfg["mel"], device=device)
    targets = torch.randint(1, cfg["vocab"], (batch_size, cfg["target_len"]), device=device)
    return {"model": model, "inputs": features, "loss": lambda out, inputs: ctc_loss(out, targets)}
