"""Tiny models for `--model tiny_models:FACTORY` in tests (tests/ is put on sys.path)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class InplaceNet(nn.Module):
    """conv1 → ReLU(inplace) → conv2 (stride 2) → ReLU(inplace) → pool → fc.

    Stage 0 is conv1's output, which the in-place ReLU overwrites right after: a tap
    that keeps a reference instead of the values would store the post-ReLU map.
    """

    feature_info: ClassVar[list[dict]] = [{"module": "conv1", "num_chs": 6}, {"module": "conv2", "num_chs": 8}]

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


class PlainNet(nn.Module):
    """Three strided convs without declared stages: fmpipe discovers them by probing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.head(self.body(self.stem(x)))).flatten(1)


def inplace_net() -> nn.Module:
    torch.manual_seed(1)
    return InplaceNet()


def plain_net() -> nn.Module:
    torch.manual_seed(2)
    return PlainNet()


class _Stage(nn.Module):
    """A strided conv whose output is scaled (1e6: float16 overflow) and optionally gets a NaN."""

    def __init__(self, factor: float, nan: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)
        self.factor, self.nan = factor, nan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) * self.factor
        if self.nan:
            y[:, 0, 0, 0] = float("nan")
        return y


class OneStageNet(nn.Module):
    feature_info: ClassVar[list[dict]] = [{"module": "stage", "num_chs": 2, "reduction": 2}]

    def __init__(self, factor: float = 1.0, nan: bool = False) -> None:
        super().__init__()
        self.stage = _Stage(factor, nan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x).mean((2, 3))


def overflow_net() -> nn.Module:
    torch.manual_seed(3)
    return OneStageNet(factor=1e6)


def nan_net() -> nn.Module:
    torch.manual_seed(4)
    return OneStageNet(nan=True)


class _Pair(nn.Module):
    """Returns a tuple: a module whose output cannot be stored as maps."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x * 2


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pair = _Pair()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pair(self.conv(x))
        return a + b


def tuple_net() -> nn.Module:
    """A conv, then a module that returns (x, 2x): `--layers pair` must be refused, naming what it returns."""
    return TupleNet()
