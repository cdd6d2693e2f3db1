"""PGL objectives: BYOL's global loss and the voxel-wise local loss on aligned maps.

Both are ``2 - 2 cos`` (the squared distance of L2-normalised vectors), computed in float32
whatever the input dtype (safe under bf16 autocast).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-6


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """Mean over the batch of 2 - 2 cos(p_i, z_i); p, z (B, D). ``z`` is used as given (detach it)."""
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(f"byol_loss needs two (B, D) tensors of one shape, got {tuple(p.shape)}, {tuple(z.shape)}")
    p = F.normalize(p.float(), dim=1, eps=_EPS)
    z = F.normalize(z.float(), dim=1, eps=_EPS)
    return (2 - 2 * (p * z).sum(1)).mean()


def local_loss(q: Tensor, z: Tensor) -> Tensor:
    """Mean over batch and voxels of 2 - 2 cos over channels; q, z aligned (B, C, d, h, w)."""
    if q.shape != z.shape or q.dim() != 5:
        raise ValueError(
            f"local_loss needs two aligned (B, C, d, h, w) tensors, got {tuple(q.shape)}, {tuple(z.shape)}"
        )
    q = F.normalize(q.float(), dim=1, eps=_EPS)
    z = F.normalize(z.float(), dim=1, eps=_EPS)
    return (2 - 2 * (q * z).sum(1)).mean()
