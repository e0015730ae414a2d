"""AlgoPerf "criteo1tb": DLRM-small click-through prediction on Criteo 1TB, as a memprof workload.

    memprof estimate examples/algoperf/criteo1tb.py:workload --batch-size 262144

The AlgoPerf DLRM-small (algoperf/workloads/criteo1tb/criteo1tb_pytorch/models.py, DlrmSmall with
the workload's defaults): one embedding table of 4,194,304 × 128 shared by the 26 categorical
features (the reference stores it as 4 row chunks), a bottom MLP 13 → 512 → 256 → 128 on the dense
features, the pairwise dot products of the 27 feature vectors (upper triangle with the diagonal:
378) concatenated with the bottom output (506 inputs), a top MLP 506 → 1024 → 1024 → 512 → 256 → 1
— 539,267,457 parameters (its PyTorch reference instantiated, counted). The embedding's gradient
is dense, as in the reference.
Inputs: 13 dense features and 26 hashed categorical ids, random; loss: sigmoid cross-entropy.

Batch size: 262,144 (algorithms/target_setting_algorithms/get_batch_size.py,
mlcommons/algorithmic-efficiency).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

BATCH_SIZE = 262_144
NUM_DENSE, NUM_SPARSE = 13, 26
SIZES = {
    "full": dict(vocab=4_194_304, embed=128, bottom=(512, 256, 128), top=(1024, 1024, 512, 256, 1)),
    "tiny": dict(vocab=1000, embed=16, bottom=(32, 16), top=(32, 16, 1)),
}


def mlp(dims: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if last_relu or i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DlrmSmall(nn.Module):
    def __init__(self, vocab: int, embed: int, bottom: tuple[int, ...], top: tuple[int, ...]) -> None:
        super().__init__()
        assert bottom[-1] == embed, "the bottom MLP ends at the embedding width"
        self.embedding = nn.Embedding(vocab, embed)
        self.bot_mlp = mlp([NUM_DENSE, *bottom], last_relu=True)
        n = NUM_SPARSE + 1
        self.register_buffer("triu", torch.triu_indices(n, n), persistent=False)
        self.top_mlp = mlp([embed + n * (n + 1) // 2, *top], last_relu=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.bot_mlp(dense)
        features = torch.cat([x[:, None], self.embedding(sparse)], dim=1)  # (B, 27, embed)
        interactions = torch.bmm(features, features.transpose(1, 2))[:, self.triu[0], self.triu[1]]
        return self.top_mlp(torch.cat([x, interactions], dim=1))[:, 0]


def workload(batch_size: int = BATCH_SIZE, size: str = "full") -> dict[str, object]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    model = DlrmSmall(**cfg)
    device = model.embedding.weight.device
    inputs = {
        "dense": torch.randn(batch_size, NUM_DENSE, device=device),
        "sparse": torch.randint(0, cfg["vocab"], (batch_size, NUM_SPARSE), device=device),
    }
    clicks = torch.randint(0, 2, (batch_size,), device=device).float()
    return {
        "model": model,
        "inputs": inputs,
        "loss": lambda out, inputs: F.binary_cross_entropy_with_logits(out, clicks),
    }
