"""View sampling constraints, rendering conventions and intensity augmentations."""

from __future__ import annotations

import pytest
import torch

from pgl_core.config import ViewConfig
from pgl_core.view_intensity import augment_intensity, gaussian_blur, gaussian_kernels
from pgl_core.views import ViewParams, render_views, sample_views, source_shape_for
from tests.method.conftest import coordinate_volume

SHAPE = (40, 72, 72)


def _overlap(params: ViewParams) -> torch.Tensor:
    lo, size = params.box_lo.double(), params.box_size.double()
    hi = lo + size
    return (torch.minimum(hi[:, 0], hi[:, 1]) - lo.amax(1)).clamp(min=0)  # (B, 3)


@pytest.mark.parametrize("min_overlap", [0.1, 0.4, 0.7])
def test_boxes_meet_overlap_size_and_bounds(min_overlap):
    cfg = ViewConfig(patch_vox=(16, 32, 32), min_overlap=min_overlap, max_tries=5)
    params = sample_views(SHAPE, cfg, torch.Generator().manual_seed(0), 256)
    inter = _overlap(params)
    larger = params.box_size.double().amax(1)
    assert (inter.prod(1) >= min_overlap * larger.prod(1) - 1e-3).all()
    assert (inter >= 0.25 * larger - 1e-4).all()
    if min_overlap < 0.7:
        ratio = params.box_size / torch.tensor(cfg.patch_vox)
        assert (ratio >= 1.1 - 1e-5).all() and (ratio <= 1.4 + 1e-5).all()
    assert (params.box_lo >= 0).all()
    assert (params.box_lo + params.box_size <= torch.tensor(SHAPE) + 1e-4).all()


def test_sampling_spreads_and_is_deterministic():
    cfg = ViewConfig(patch_vox=(16, 32, 32), rotate90=True)
    p1 = sample_views(SHAPE, cfg, torch.Generator().manual_seed(4), 64)
    p2 = sample_views(SHAPE, cfg, torch.Generator().manual_seed(4), 64)
    p3 = sample_views(SHAPE, cfg, torch.Generator().manual_seed(5), 64)
    for name in ("box_lo", "box_size", "flips", "rot90"):
        assert torch.equal(getattr(p1, name), getattr(p2, name))
    assert not torch.equal(p1.box_lo, p3.box_lo)
    flip_rate = p1.flips.float().mean().item()
    assert 0.35 < flip_rate < 0.65
    assert set(p1.rot90.unique().tolist()) == {0, 1, 2, 3}
    assert not (p1.box_lo[:, 0] == p1.box_lo[:, 1]).all()
    no_rot = sample_views(SHAPE, ViewConfig(patch_vox=(16, 32, 32)), torch.Generator().manual_seed(4), 64)
    assert (no_rot.rot90 == 0).all()


def test_small_volume_shrinks_boxes_inside_it():
    cfg = ViewConfig(patch_vox=(16, 32, 32))
    params = sample_views((18, 30, 80), cfg, torch.Generator().manual_seed(0), 32)
    assert (params.box_size[..., 0] <= 18 + 1e-5).all() and (params.box_size[..., 1] <= 30 + 1e-5).all()
    assert (params.box_lo >= 0).all()
    assert (params.box_lo + params.box_size <= torch.tensor((18, 30, 80)) + 1e-4).all()


def test_bad_inputs_are_refused_with_the_value():
    with pytest.raises(ValueError, match="square"):
        sample_views(SHAPE, ViewConfig(patch_vox=(16, 32, 48), rotate90=True), torch.Generator(), 2)
    params = sample_views(SHAPE, ViewConfig(patch_vox=(16, 32, 32)), torch.Generator(), 2)
    with pytest.raises(ValueError, match=r"\(B=2"):
        render_views(torch.zeros(3, 1, *SHAPE), params, intensity=False)
    with pytest.raises(ValueError, match="box_size"):
        ViewParams(params.box_lo, params.box_size[:1], params.flips, params.rot90, (16, 32, 32))


def test_source_shape_holds_largest_boxes():
    cfg = ViewConfig(patch_vox=(16, 96, 96))
    shape = source_shape_for(cfg)
    assert shape == (34, 202, 202)
    params = sample_views(shape, cfg, torch.Generator().manual_seed(0), 128)
    ratio = params.box_size / torch.tensor(cfg.patch_vox)
    assert (ratio >= 1.1 - 1e-5).all() and (ratio <= 1.4 + 1e-5).all()


def test_identity_box_renders_the_volume():
    vol = torch.randn(2, 2, 8, 12, 10)
    lo = torch.zeros(2, 2, 3)
    size = torch.tensor([8.0, 12.0, 10.0]).expand(2, 2, 3).clone()
    flips, rot = torch.zeros(2, 2, 3, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.long)
    params = ViewParams(lo, size, flips, rot, (8, 12, 10))
    a, b = render_views(vol, params, intensity=False)
    torch.testing.assert_close(a, vol, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, vol, atol=1e-5, rtol=0)


def test_flips_and_rotations_match_torch_flip_and_rot90():
    cfg = ViewConfig(patch_vox=(8, 16, 16), rotate90=True)
    params = sample_views(SHAPE, cfg, torch.Generator().manual_seed(1), 8)
    vol = torch.randn(8, 2, *SHAPE)
    plain = ViewParams(params.box_lo, params.box_size, torch.zeros_like(params.flips),
                       torch.zeros_like(params.rot90), params.patch_vox)
    views = render_views(vol, params, intensity=False)
    ref_views = render_views(vol, plain, intensity=False)
    for v in range(2):
        for i in range(8):
            dims = [2 + ax for ax in range(3) if params.flips[i, v, ax]]
            ref = torch.flip(ref_views[v][i : i + 1], dims) if dims else ref_views[v][i : i + 1]
            ref = torch.rot90(ref, int(params.rot90[i, v]), dims=(-2, -1))
            torch.testing.assert_close(views[v][i : i + 1], ref, atol=1e-4, rtol=0)


def test_rendered_view_samples_box_at_voxel_centres():
    params = sample_views(SHAPE, ViewConfig(patch_vox=(8, 16, 16), flip_p=0.0), torch.Generator().manual_seed(3), 4)
    a, _ = render_views(coordinate_volume(SHAPE, 4), params, intensity=False)
    k = torch.arange(16, dtype=torch.float32)
    expected_y = params.box_lo[:, 0, 1:2] + (k + 0.5) * params.box_size[:, 0, 1:2] / 16 - 0.5  # (B, 16)
    torch.testing.assert_close(a[:, 1, 0, :, 0], expected_y, atol=1e-3, rtol=0)


def _region_volume(batch: int) -> torch.Tensor:
    labels = torch.zeros(8, 16, 16, dtype=torch.long)
    labels[2:6, 4:12, 4:12] = 1
    labels[:, :, 12:] = 2
    labels[6:, :4, :] = 3
    values = torch.tensor([-1.0, 2.0, 0.5, 4.0])
    return values[labels].expand(batch, 1, 8, 16, 16).clone(), labels


def test_pointwise_intensity_ops_keep_region_structure():
    cfg = ViewConfig(noise_p=0.0, blur_p=0.0, contrast_p=1.0, gamma_p=1.0)
    vol, labels = _region_volume(6)
    out = augment_intensity(vol, cfg, torch.Generator().manual_seed(0))
    assert not torch.allclose(out, vol)
    for i in range(6):
        means = []
        for r in range(4):
            vals = out[i, 0][labels == r]
            assert (vals.max() - vals.min()).item() < 1e-5
            means.append(vals.mean().item())
        order = sorted(range(4), key=lambda r: means[r])
        assert order == [0, 2, 1, 3]  # the input's value order


def test_intensity_never_moves_anatomy():
    """A bright symmetric blob stays where geometry put it, with every op switched on."""
    cfg = ViewConfig(patch_vox=(16, 32, 32), noise_p=1.0, blur_p=1.0, contrast_p=1.0, gamma_p=1.0)
    vol = torch.zeros(4, 1, *SHAPE)
    vol[:, :, 18:23, 34:39, 30:35] = 50.0
    vol[:, :, 20, 36, 32] = 100.0
    params = sample_views(SHAPE, cfg, torch.Generator().manual_seed(0), 4)
    params.box_lo[:] = torch.tensor([6.0, 12.0, 10.0])  # both boxes hold the blob
    geo = render_views(vol, params, intensity=False)
    aug = render_views(vol, params, intensity=True, config=cfg, generator=torch.Generator().manual_seed(1),
                       units_per_hu=1 / 400.0)  # values in z-score units of a ~400 HU std
    for g, a in zip(geo, aug):
        assert not torch.allclose(g, a)
        assert torch.equal(g.flatten(1).argmax(1), a.flatten(1).argmax(1))


def test_intensity_is_seeded_and_independent_per_view():
    cfg = ViewConfig(patch_vox=(8, 16, 16), noise_p=1.0)
    vol = torch.randn(3, 1, *SHAPE)
    params = sample_views(SHAPE, cfg, torch.Generator().manual_seed(0), 3)
    params.box_lo[:, 1] = params.box_lo[:, 0]
    params.box_size[:, 1] = params.box_size[:, 0]
    params.flips[:, 1] = params.flips[:, 0]
    a1, b1 = render_views(vol, params, config=cfg, generator=torch.Generator().manual_seed(9))
    a2, b2 = render_views(vol, params, config=cfg, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.allclose(a1, b1)  # same geometry, independent intensity draws


def test_blur_kernel_is_identity_when_off_and_preserves_mean():
    x = torch.randn(2, 1, 8, 10, 12)
    k = gaussian_kernels(torch.tensor([0.7, 1.0]), torch.tensor([False, True]), radius=3)
    y = gaussian_blur(x, k)
    torch.testing.assert_close(y[0], x[0])
    assert y[1].std() < x[1].std()
    const = torch.full((1, 1, 6, 6, 6), 3.0)
    torch.testing.assert_close(gaussian_blur(const, k[1:]), const)
