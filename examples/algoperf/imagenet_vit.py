"""AlgoPerf "imagenet_vit": ViT-S/16 on ImageNet, as a memprof workload in plain PyTorch.

    memprof estimate examples/algoperf/imagenet_vit.py:workload --batch-size 1024

The AlgoPerf ViT (algoperf/workloads/imagenet_vit/imagenet_pytorch/models.py, variant "S/16":
width 384, depth 12, 6 heads, MLP 1536, patch 16): fixed 2-D sin-cos position embeddings (no
parameters), no class token (global average pooling), a tanh pre-logits layer, a 1000-way head —
22,122,472 parameters (its PyTorch reference instantiated, counted). timm's vit_small_patch16_224
(class token, learned position embeddings, no pre-logits) has a different count; this is AlgoPerf's.
Inputs: 224×224 RGB images and labels, random; loss: cross-entropy.

Batch size: 1024 (algorithms/target_setting_algorithms/get_batch_size.py,
mlcommons/algorithmic-efficiency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_SIZE = 1024
SIZES = {
    "full": dict(width=384, depth=12, heads=6, mlp=1536, patch=16, image=224, num_classes=1000),
    "tiny": dict(width=32, depth=2, heads=2, mlp=64, patch=8, image=32, num_classes=10),
}


def posemb_sincos_2d(h: int, w: int, dim: int, device: torch.device, temperature: float = 10_000.0) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, device=device) / (dim // 4 - 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.heads, C // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Encoder1DBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.layer_norm0 = nn.LayerNorm(width, eps=1e-6)
        self.self_attention1 = SelfAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp3 = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention1(self.layer_norm0(x))
        return x + self.mlp3(self.layer_norm2(x))


class ViT(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, mlp: int, patch: int, num_classes: int, **_: object) -> None:
        super().__init__()
        self.width = width
        self.conv_patch_extract = nn.Conv2d(3, width, patch, stride=patch)
        self.blocks = nn.ModuleList([Encoder1DBlock(width, heads, mlp) for _ in range(depth)])
        self.encoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.pre_logits = nn.Linear(width, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_patch_extract(x)  # (B, width, h, w)
        h, w = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2) + posemb_sincos_2d(h, w, self.width, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.encoder_norm(x).mean(dim=1)  # global average pooling, no class token
        return self.head(torch.tanh(self.pre_logits(x)))


def workload(batch_size: int = BATCH_SIZE, size: str = "full") -> dict[str, object]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    model = ViT(**cfg)
    device = model.head.weight.device
    images = torch.randn(batch_size, 3, cfg["image"], cfg["image"], device=device)
    labels = torch.randint(0, cfg["num_classes"], (batch_size,), device=device)
    return {"model": model, "inputs": images, "loss": lambda out, inputs: F.cross_entropy(out, labels)}
