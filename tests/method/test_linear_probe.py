"""The linear probe: features that encode the labels give a high Dice, random features do not."""

import torch
import torch.nn.functional as F

from pgl_core.linear_probe import LabelledCrops, linear_probe_dice


class _Pooled(torch.nn.Module):
    """Stand-in backbone: one map per 'stage'; stage 0 = (one-hot of the image's label values or
    noise) average-pooled by 2, like a stride-2 encoder stage."""

    def __init__(self, informative: bool, k: int) -> None:
        super().__init__()
        self.informative, self.k = informative, k

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.informative:
            feats = torch.cat([(x.round() == v).float() for v in range(self.k)], dim=1)
        else:
            feats = torch.randn(x.shape[0], 8, *x.shape[2:], generator=torch.Generator().manual_seed(0))
        return [F.avg_pool3d(feats, 2)]


def _crops() -> LabelledCrops:
    labels = torch.zeros((6, 8, 16, 16), dtype=torch.long)
    for i in range(6):
        labels[i, :, 2 + i % 3:8 + i % 3, 4:10] = 1
        labels[i, :, 10:14, 2 + i % 2:12] = 2
    return LabelledCrops(labels[:, None].float(), labels, 3)


def test_informative_features_give_a_high_dice():
    assert linear_probe_dice(_Pooled(True, 3), _crops(), 0) > 0.8


def test_random_features_give_a_low_dice():
    assert linear_probe_dice(_Pooled(False, 3), _crops(), 0) < 0.5

