"""The dense-correspondence probe: true pairs beat permuted ones when features know where they are,
and do not when features are position-blind."""

import torch
import torch.nn.functional as F

from pgl_core.config import ViewConfig
from pgl_core.probe import correspondence_scores
from pgl_core.views import render_views, sample_views

SOURCE = (24, 48, 48)


def _views(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cfg = ViewConfig(patch_vox=(8, 24, 24), flip_p=0.5)
    params = sample_views(SOURCE, cfg, gen, 4)
    noise = torch.randn(4, 1, *SOURCE, generator=gen)
    texture = F.avg_pool3d(F.avg_pool3d(noise, 5, 1, 2), 5, 1, 2)  # smooth random "anatomy"
    a, b = render_views(texture, params, intensity=False)
    return a, b, params


def _descriptors(x: torch.Tensor) -> torch.Tensor:
    """A position-aware stand-in network: each voxel's 3x3x3 neighbourhood (27 channels)."""
    pad = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
    return torch.cat([pad[:, :, i:i + x.shape[2], j:j + x.shape[3], k:k + x.shape[4]]
                      for i in range(3) for j in range(3) for k in range(3)], dim=1)


def test_true_correspondences_beat_permuted_pairs_for_local_features():
    a, b, params = _views()
    s = correspondence_scores(_descriptors(a), _descriptors(b), params)
    assert s["probe_gap"] > 0.3 and s["probe_true_dist"] < s["probe_perm_dist"]
    chance = 1.0 / (8 * 24 * 24)  # one true match among the aligned voxels of a sample
    assert s["probe_nn_acc"] > 10 * chance


def test_position_blind_features_show_no_gap():
    a, b, params = _views(1)
    # the same vector at every voxel of a sample (a global descriptor broadcast): no spatial content
    blind_a = _descriptors(a).mean(dim=(2, 3, 4), keepdim=True).expand(-1, -1, *a.shape[2:])
    blind_b = _descriptors(b).mean(dim=(2, 3, 4), keepdim=True).expand(-1, -1, *b.shape[2:])
    s = correspondence_scores(blind_a, blind_b, params)
    assert abs(s["probe_gap"]) < 1e-4
    noise = correspondence_scores(torch.randn(4, 16, *a.shape[2:]), torch.randn(4, 16, *b.shape[2:]), params)
    assert abs(noise["probe_gap"]) < 0.1 and noise["probe_nn_acc"] < 0.2
