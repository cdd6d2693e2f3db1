"""PGL projection / prediction heads (BYOL style).

- :class:`MLPHead`: global branch, (B, C) -> Linear -> norm -> ReLU -> Linear -> (B, out).
- :class:`LocalHead`: dense branch, the same MLP as 1x1x1 convs, (B, C, d, h, w) -> (B, out, d, h, w).

``norm``: "batch" (BYOL's choice; BatchNorm1d / BatchNorm3d) or "layer" (LayerNorm / GroupNorm(1)),
for small or uneven per-device batches.
"""

from __future__ import annotations

from torch import Tensor, nn


def _norm_1d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    raise ValueError(f"unknown head norm {kind!r}; choose batch or layer")


def _norm_3d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown head norm {kind!r}; choose batch or layer")


class MLPHead(nn.Module):
    """Global projector / predictor: (B, c_in) -> (B, c_out)."""

    def __init__(self, c_in: int, hidden: int, c_out: int, norm: str = "batch") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(c_in, hidden, bias=False),
            _norm_1d(norm, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LocalHead(nn.Module):
    """Dense projector / predictor of 1x1x1 convs: (B, c_in, d, h, w) -> (B, c_out, d, h, w)."""

    def __init__(self, c_in: int, hidden: int, c_out: int, norm: str = "batch") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(c_in, hidden, 1, bias=False),
            _norm_3d(norm, hidden),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, c_out, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
