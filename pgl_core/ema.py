"""Momentum (EMA) target network updates and the BYOL cosine schedule of the momentum."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target = tau * target + (1 - tau) * online for parameters; buffers are copied.

    Both modules must have the same structure (names and shapes); a mismatch names the key.
    """
    on_p, tg_p = dict(online.named_parameters()), dict(target.named_parameters())
    on_b, tg_b = dict(online.named_buffers()), dict(target.named_buffers())
    if on_p.keys() != tg_p.keys() or on_b.keys() != tg_b.keys():
        diff = sorted((on_p.keys() ^ tg_p.keys()) | (on_b.keys() ^ tg_b.keys()))
        raise ValueError(f"online and target networks differ in keys: {diff[:5]}")
    names = list(tg_p)
    tgt = [tg_p[n].data for n in names]
    src = [on_p[n].data.to(tg_p[n].dtype) for n in names]
    if tgt:
        torch._foreach_lerp_(tgt, src, 1.0 - float(tau))
    for name, buf in tg_b.items():
        buf.copy_(on_b[name])


def ema_tau(step: int, total_steps: int, base_tau: float) -> float:
    """BYOL schedule: tau = 1 - (1 - base_tau) * (cos(pi * step / total_steps) + 1) / 2."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    frac = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base_tau) * (math.cos(math.pi * frac) + 1.0) / 2.0
