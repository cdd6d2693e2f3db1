"""Optimisers built from :class:`pgl_core.config.OptimConfig`: AdamW, SGD and LARS.

As in BYOL, biases and normalisation parameters (every parameter with fewer than two dimensions)
get no weight decay and, under LARS, no trust-ratio adaptation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pgl_core.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum, weight decay and layer-wise trust ratio (You et al. 2017, BYOL variant).

    Per parameter ``p`` with gradient ``g``: ``g += wd * p``; if adapted,
    ``g *= eta * ||p|| / ||g||`` (when both norms are positive); ``m = momentum * m + g``;
    ``p -= lr * m``. Groups with ``lars_exclude=True`` skip both decay and adaptation.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3) -> None:
        if lr <= 0:
            raise ValueError(f"LARS lr must be > 0, got {lr}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad
        if not group["lars_exclude"]:
            if group["weight_decay"] != 0:
                grad = grad.add(p, alpha=group["weight_decay"])
            p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
            one = torch.ones_like(p_norm)
            trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, one)
            grad = grad.mul(trust)
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.clone(grad).detach()
        else:
            state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
        p.add_(state["momentum_buffer"], alpha=-group["lr"])


def is_excluded(name: str, param: nn.Parameter) -> bool:
    """Biases and norm weights (ndim < 2) are excluded from decay and LARS adaptation."""
    return param.ndim < 2 or name.endswith(".bias")


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two groups: decayed/adapted weights, and excluded biases + norm params (``lars_exclude``)."""
    decay, excluded = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (excluded if is_excluded(name, p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.name`` over ``model``'s trainable parameters."""
    groups = param_groups(model.named_parameters(), cfg.weight_decay)
    if not groups[0]["params"] and not groups[1]["params"]:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    if cfg.name == "adamw":
        for g in groups:
            g.pop("lars_exclude")
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars_exclude")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimiser {cfg.name!r}; choose adamw, sgd or lars")
