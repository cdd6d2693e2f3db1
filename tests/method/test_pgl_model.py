"""PGLModel: loss composition per mode, gradients, EMA target, overfitting, weight transfer."""

from __future__ import annotations

import pytest
import torch

from pgl_core.adapt import load_encoder_into
from pgl_core.config import PGLConfig, config_to_dict, load_config
from pgl_core.contracts import PretrainContract
from pgl_core.levels import resolve_local_levels
from pgl_core.model import ResidualUNet, SegmentationUNet
from pgl_core.pgl import PGLModel
from pgl_core.views import ViewParams, render_views, sample_views

SOURCE = (30, 52, 52)


def _cfg(*overrides: str) -> PGLConfig:
    return resolve_local_levels(load_config(preset="tiny", overrides=list(overrides)))


def _batch(cfg: PGLConfig, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = sample_views(SOURCE, cfg.views, gen, batch)
    vol = torch.randn(batch, 1, *SOURCE, generator=gen)
    a, b = render_views(vol, params, intensity=True, config=cfg.views, generator=gen)
    return a, b, params


def _model(cfg: PGLConfig) -> PGLModel:
    return PGLModel(cfg.model, cfg.loss, cfg.views.patch_vox)


@pytest.mark.parametrize("mode", ["pgl", "global", "local"])
def test_modes_give_the_right_components(mode):
    cfg = _cfg(f"loss.mode={mode}", "loss.local_weight=0.5")
    model = _model(cfg)
    out = model(*_batch(cfg))
    lg, ll = out["loss_global"].item(), out["loss_local"].item()
    assert (lg > 0) == (mode != "local") and (ll > 0) == (mode != "global")
    assert out["loss"].item() == pytest.approx(lg + 0.5 * ll, rel=1e-6)
    assert ("global_proj" in model.online) == (mode != "local")
    assert ("local_proj" in model.online) == (mode != "global")


def test_every_trainable_parameter_gets_a_gradient_and_the_target_none():
    cfg = _cfg("loss.local_levels=[bottleneck,decoder_s4]")
    model = _model(cfg)
    model(*_batch(cfg))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"unused parameters: {missing[:5]}"
    target = list(model.target.parameters())
    assert target and all(not p.requires_grad and p.grad is None for p in target)
    assert {id(p) for p in model.trainable_parameters()}.isdisjoint({id(p) for p in target})


def test_loss_is_symmetric_in_the_two_views():
    cfg = _cfg("loss.local_levels=[bottleneck,decoder_s4]", "views.rotate90=true")
    model = _model(cfg)
    a, b, p = _batch(cfg, batch=3, seed=2)
    swapped = ViewParams(p.box_lo.flip(1), p.box_size.flip(1), p.flips.flip(1), p.rot90.flip(1), p.patch_vox)
    with torch.no_grad():
        out_ab, out_ba = model(a, b, p), model(b, a, swapped)
    for key in out_ab:
        assert out_ab[key].item() == pytest.approx(out_ba[key].item(), rel=1e-4)


def test_update_target_follows_online():
    cfg = _cfg()
    model = _model(cfg)
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    on = torch.cat([p.flatten() for p in model.online.parameters()])
    tg0 = torch.cat([p.flatten() for p in model.target.parameters()])
    model.update_target(0.75)
    tg1 = torch.cat([p.flatten() for p in model.target.parameters()])
    torch.testing.assert_close(tg1, 0.75 * tg0 + 0.25 * on)


def test_loss_decreases_when_overfitting_a_fixed_batch():
    cfg = _cfg("views.patch_vox=[8,16,16]", "loss.local_levels=[bottleneck,decoder_s4]")
    model = _model(cfg)
    batch = _batch(cfg, batch=2, seed=1)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        out = model(*batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.update_target(0.99)
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_encoder_weights_load_into_segmentation_unet():
    cfg = _cfg("loss.local_levels=[bottleneck,decoder_s4]")
    model = _model(cfg)
    state = model.encoder_state_dict()
    assert all(k.startswith(("encoder.", "decoder.")) for k in state)
    seg = SegmentationUNet(cfg.model, num_classes=3)
    norm = {"hu_window": [-1024.0, 325.0], "kind": "minmax", "mean_hu": None, "std_hu": None}
    pre = PretrainContract.build(config_to_dict(cfg), norm, {}, {}, steps=0)
    missing = load_encoder_into(seg, state, pre, "init t")
    assert all(k.startswith("seg_head.") or k.startswith(("decoder.ups.", "decoder.blocks.")) for k in missing)
    assert any(k.startswith("seg_head.") for k in missing)
    assert not any(k.startswith("encoder.") for k in missing)
    for k, v in state.items():
        assert torch.equal(seg.state_dict()[k], v)
    # A full-decoder backbone leaves only the head missing.
    full = ResidualUNet(cfg.model)
    assert all(k.startswith("seg_head.") for k in load_encoder_into(seg, full.state_dict(), pre, "init t"))
    assert seg(torch.randn(1, 1, 16, 32, 32)).shape == (1, 3, 16, 32, 32)
    with pytest.raises(ValueError, match="lacks"):
        load_encoder_into(seg, {"encoder.nope": torch.zeros(1)}, pre, "init t")


def test_backbone_strides_and_paper_size():
    tiny = _cfg()
    net = ResidualUNet(tiny.model)
    feats = net.encode(torch.randn(1, 1, 16, 32, 32))
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 32, 32), (16, 16, 16), (8, 8, 8), (4, 4, 4)]
    assert [tuple(d.shape[2:]) for d in net.decode(feats)] == [(8, 8, 8), (16, 16, 16), (16, 32, 32)]
    assert isinstance(net.encoder.stages[0][1], torch.nn.Module)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(m.affine for m in norms)
    paper = load_config().model
    n_params = sum(p.numel() for p in SegmentationUNet(paper, 14).parameters())
    assert 20e6 < n_params < 30e6, n_params


def test_bad_shapes_are_refused():
    cfg = _cfg()
    with pytest.raises(ValueError, match="divisible"):
        PGLModel(cfg.model, cfg.loss, (9, 32, 32))
    model = _model(cfg)
    a, b, p = _batch(cfg)
    with pytest.raises(ValueError, match=r"\(16, 32, 32\)"):
        model(a[..., :16], b[..., :16], p)
