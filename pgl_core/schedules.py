"""Step-indexed schedules: learning rate (linear warm-up then cosine to a floor) and EMA tau.

Both are pure functions of the step, so the schedule position in a checkpoint is the step itself.
"""

from __future__ import annotations

import math

from pgl_core.ema import ema_tau


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning rate for optimisation step ``step`` (0-based).

    Linear warm-up from ``peak_lr / warmup_steps`` to ``peak_lr`` over ``warmup_steps`` steps, then a
    half cosine from ``peak_lr`` down to ``peak_lr * min_lr_ratio`` at ``total_steps - 1``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - 1 - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    floor = peak_lr * min_lr_ratio
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def tau_at(step: int, total_steps: int, base_tau: float) -> float:
    """EMA momentum for ``step``: BYOL's cosine from ``base_tau`` to 1 (:func:`pgl_core.ema.ema_tau`)."""
    return ema_tau(step, total_steps, base_tau)


def set_lr(optimizer, lr: float) -> None:  # noqa: ANN001 - any torch optimizer
    """Write ``lr`` into every param group (groups may carry an ``lr_scale``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
