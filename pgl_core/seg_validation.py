"""Validation Dice of a segmenter during fine-tuning (:mod:`pgl_core.finetune`).

Sliding-window prediction over whole validation volumes (normalised as in training, padded with
the value of the window's lower HU bound), Dice per foreground class against the stored labels.
The cases are shared between ranks and the sums averaged over them, so every rank gets the same
mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pgl_core import distributed as dist_utils
from pgl_core.evaluation.metrics import dice_score
from pgl_core.evaluation.sliding_window import sliding_window_predict
from pgl_core.intensity_norm import IntensityNorm


@torch.no_grad()
def validation_dice(model: nn.Module, store: Any, norm: IntensityNorm, num_classes: int, case_ids: list[str],
                    patch_vox: Sequence[int], overlap: float, device: torch.device, bf16: bool) -> float:
    """Collective: mean Dice over (case, foreground class) pairs of ``case_ids`` in ``store`` (both
    empty counts 1); each rank predicts its share of the cases."""
    sums = torch.zeros(2, dtype=torch.float64)
    was_training = model.training
    model.eval()
    pad = float(norm.apply(torch.tensor([norm.hu_window[0]])).item())
    for case in case_ids[dist_utils.get_rank()::dist_utils.get_world_size()]:
        image = norm.apply(torch.from_numpy(np.asarray(store.read_full(case), dtype=np.float32)))
        pred = sliding_window_predict(image[None, None], model, patch_vox, num_classes, overlap=overlap,
                                      device=device, bf16=bf16, pad_value=pad).numpy()
        truth = np.asarray(store.read_full(case, "label"))
        for k in range(1, num_classes):
            sums[0] += dice_score(pred == k, truth == k)
            sums[1] += 1
    model.train(was_training)
    total = dist_utils.all_reduce_mean(sums.to(device)).cpu()
    return float(total[0] / total[1]) if total[1] > 0 else math.nan
