"""Rules that fit the pretraining recipe to the run: the EMA base tau from the run length, the local
loss levels from the views' overlap, and the body-voxel (foreground) CT normalisation."""

import numpy as np
import pytest
import torch

from pgl_core.config import IntensityConfig, load_config
from pgl_core.ema import base_tau_for_steps
from pgl_core.intensity_norm import body_norm_stats, resolve_norm
from pgl_core.levels import auto_levels, overlap_cells, resolve_local_levels
from storage.layout import body_stats
from storage.manifest import pool_body_stats


def test_tau_rule_fits_run_length_and_published_anchors():
    assert base_tau_for_steps(93750) == pytest.approx(0.996, abs=2e-4)  # BYOL, 300 ImageNet epochs
    assert base_tau_for_steps(1000) == pytest.approx(0.990, abs=5e-4)
    assert base_tau_for_steps(250) < 0.99
    taus = [base_tau_for_steps(n) for n in (10, 100, 1000, 10**4, 10**5, 10**7)]
    assert taus == sorted(taus) and 0.9 <= taus[0] and taus[-1] <= 0.9999
    # the horizon 1 / (1 - tau) stays a small fraction of the run
    assert all(1 / (1 - base_tau_for_steps(n)) < 0.35 * n for n in (250, 1000, 10**5))


def test_pretraining_saves_the_fitted_tau():
    cfg = load_config(preset="tiny", overrides=["train.steps=250"])
    assert cfg.optim.ema_tau is None  # default: fitted, not a constant


def test_auto_levels_drop_a_level_without_spatial_extent():
    small = load_config(preset="tiny", overrides=["views.patch_vox=[8,24,24]"])
    cells = overlap_cells(small, "bottleneck")
    assert min(cells) < 1.0  # ~0.5 x 1.3 x 1.3 cells: no spatial content
    assert auto_levels(small) == ("decoder_s4",)
    paper = load_config()
    assert min(overlap_cells(paper, "bottleneck")) >= 2.0
    assert auto_levels(paper) == ("bottleneck", "decoder_s4")
    resolved = resolve_local_levels(small)
    assert resolved.loss.local_levels == ("decoder_s4",) and small.loss.local_levels == ("auto",)
    explicit = load_config(preset="tiny", overrides=["loss.local_levels=[bottleneck]"])
    assert resolve_local_levels(explicit).loss.local_levels == ("bottleneck",)


def _ct_like(seed: int) -> np.ndarray:
    """Half air, the rest fat (-100), soft tissue (50) and a little bone (700), int16 (z, y, x)."""
    rng = np.random.default_rng(seed)
    vol = np.full((16, 32, 32), -1000, dtype=np.int16)
    vol[:, 8:24, 8:24] = -100
    vol[:, 12:20, 12:20] = 50
    vol[:, 15:17, 15:17] = 700
    return (vol + rng.normal(0, 5, vol.shape)).astype(np.int16)


def test_foreground_norm_uses_body_voxels_not_air():
    a, b = body_stats(_ct_like(0)), body_stats(_ct_like(1))
    assert a["n_vox"] == 16 * 16 * 16 // 8  # body = the 16x16 block on 16 slices, every 2nd voxel per axis
    pooled = pool_body_stats([a, b])
    assert pooled["n_vox"] == a["n_vox"] + b["n_vox"]
    lo, hi, mean, std = body_norm_stats([pooled], (0.5, 99.5))
    assert -130 < lo < -90 and 40 < hi < 720  # air is not part of the range
    norm = resolve_norm(IntensityConfig(normalisation="foreground"), {"d": {"stats": {"body": pooled}}})
    assert norm.kind == "foreground" and norm.hu_window == (lo, hi)
    soft, fat = norm.apply(torch.tensor([50.0])), norm.apply(torch.tensor([-100.0]))
    old = resolve_norm(IntensityConfig(normalisation="zscore"),
                       {"d": {"stats": {"mean_hu": -600.0, "std_hu": 455.0, "n_vox": 1}}})
    # organs 10-15 HU apart stay several times further apart than with the whole-volume z-score
    gap = float(norm.apply(torch.tensor([60.0])) - norm.apply(torch.tensor([47.0])))
    old_gap = float(old.apply(torch.tensor([60.0])) - old.apply(torch.tensor([47.0])))
    assert gap > 2.5 * old_gap and float(soft - fat) > 1.0
    assert norm.units_per_hu() == pytest.approx(1 / std)


def test_foreground_norm_refuses_stores_without_body_stats():
    with pytest.raises(ValueError, match="body statistics.*--force"):
        resolve_norm(IntensityConfig(normalisation="foreground"), {"old": {"stats": {"mean_hu": 0.0, "std_hu": 1.0}}})
