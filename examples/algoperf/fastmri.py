"""AlgoPerf "fastmri": a U-Net reconstructing single-coil knee MRI, as a memprof workload.

    memprof estimate examples/algoperf/fastmri.py:workload --batch-size 32

The AlgoPerf U-Net (algoperf/workloads/fastmri/fastmri_pytorch/models.py, 32 channels, 4 pooling
layers): blocks of two bias-free 3×3 convolutions with instance norm and LeakyReLU(0.2), 2×2 average
pooling down, bias-free 2×2 transposed convolutions up, skip connections, a 1×1 output convolution —
7,756,097 parameters (its PyTorch reference instantiated, counted).
Inputs: 320×320 single-channel images and targets, random; loss: L1 (the reference trains on
mean absolute error).

Batch size: 32 (algorithms/target_setting_algorithms/get_batch_size.py,
mlcommons/algorithmic-efficiency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_SIZE = 32
SIZES = {
    "full": dict(channels=32, pools=4, image=320),
    "tiny": dict(channels=4, pools=2, image=32),
}


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.InstanceNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout2d(0.0),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.InstanceNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout2d(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(x)


class TransposeConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
            nn.InstanceNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UNet(nn.Module):
    def __init__(self, channels: int = 32, pools: int = 4, **_: object) -> None:
        super().__init__()
        self.down_sample_layers = nn.ModuleList([ConvBlock(1, channels)])
        ch = channels
        for _ in range(pools - 1):
            self.down_sample_layers.append(ConvBlock(ch, ch * 2))
            ch *= 2
        self.conv = ConvBlock(ch, ch * 2)
        self.up_transpose_conv = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for _ in range(pools - 1):
            self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
            self.up_conv.append(ConvBlock(ch * 2, ch))
            ch //= 2
        self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
        self.up_conv.append(nn.Sequential(ConvBlock(ch * 2, ch), nn.Conv2d(ch, 1, 1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, H, W) -> (B, H, W)
        stack, x = [], image[:, None]
        for layer in self.down_sample_layers:
            x = layer(x)
            stack.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.conv(x)
        for up, conv in zip(self.up_transpose_conv, self.up_conv):
            x = conv(torch.cat([up(x), stack.pop()], dim=1))
        return x[:, 0]


def workload(batch_size: int = BATCH_SIZE, size: str = "full") -> dict[str, object]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    model = UNet(**cfg)
    device = model.up_conv[-1][1].weight.device
    images = torch.randn(batch_size, cfg["image"], cfg["image"], device=device)
    targets = torch.randn(batch_size, cfg["image"], cfg["image"], device=device)
    return {"model": model, "inputs": images, "loss": lambda out, inputs: F.l1_loss(out, targets)}
