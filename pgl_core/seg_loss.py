"""Segmentation loss: soft Dice over the foreground classes (batch Dice) plus cross-entropy.

Layouts: logits ``(B, K, D, H, W)`` (K classes including background 0), target ``(B, D, H, W)``
integer labels in ``[0, K)``. Batch Dice sums intersections and volumes over the batch and all
voxels before the ratio, so a class absent from one patch does not produce a 0/0 term; a class
absent from the whole batch (and not predicted) contributes ``smooth / smooth = 1`` (no loss).
Loss = ``ce_weight * CE + dice_weight * (1 - mean_k Dice_k)``, computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_dice_per_class(probs: Tensor, onehot: Tensor, smooth: float = 1e-5) -> Tensor:
    """Batch soft Dice per class (K,) from probabilities and a one-hot target, both (B, K, D, H, W)."""
    dims = (0, *range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    volume = probs.sum(dims) + onehot.sum(dims)
    return (2.0 * inter + smooth) / (volume + smooth)


def dice_ce_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 smooth: float = 1e-5) -> dict[str, Tensor]:
    """``{"loss", "dice_loss", "ce"}`` scalars for logits (B, K, D, H, W) and labels (B, D, H, W)."""
    if logits.ndim != 5 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match "
                         "(B, K, D, H, W) / (B, D, H, W)")
    k = logits.shape[1]
    logits = logits.float()
    target = target.long()
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, k).movedim(-1, 1).to(probs.dtype)
    dice = soft_dice_per_class(probs[:, 1:], onehot[:, 1:], smooth) if k > 1 else probs.new_ones(1)
    dice_loss = 1.0 - dice.mean()
    return {"loss": ce_weight * ce + dice_weight * dice_loss, "dice_loss": dice_loss, "ce": ce}
