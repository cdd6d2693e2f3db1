"""The method on CUDA: exact alignment under TF32 + bf16 autocast, device-resident steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pgl_core.align import align_features
from pgl_core.config import ViewConfig, load_config
from pgl_core.pgl import PGLModel
from pgl_core.views import render_views, sample_views
from tests.method.conftest import coordinate_volume

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_alignment_exact_on_cuda_with_tf32_and_autocast(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    cfg = ViewConfig(patch_vox=(16, 96, 96), rotate90=True)
    shape = (34, 202, 202)
    params = sample_views(shape, cfg, torch.Generator().manual_seed(0), 8).to("cuda")
    vol = coordinate_volume(shape, 8).cuda()
    a, b = render_views(vol, params, intensity=False)
    cpu_a, _ = render_views(vol.cpu(), params.to("cpu"), intensity=False)
    torch.testing.assert_close(a.cpu(), cpu_a, atol=1e-3, rtol=0)
    for stride in [(1, 2, 2), (2, 4, 4), (4, 16, 16)]:
        feat_a, feat_b = F.avg_pool3d(a.double(), stride), F.avg_pool3d(b.double(), stride)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            al_a, al_b = align_features(feat_a, feat_b, params)
        assert al_a.is_cuda and (al_a - al_b).abs().max().item() < 1e-3


def test_pgl_step_on_cuda_in_bf16():
    cfg = load_config(preset="tiny", overrides=["loss.local_levels=[bottleneck,decoder_s4]"])
    model = PGLModel(cfg.model, cfg.loss, cfg.views.patch_vox).cuda()
    gen = torch.Generator().manual_seed(0)
    params = sample_views((30, 52, 52), cfg.views, gen, 4)
    vol = torch.randn(4, 1, 30, 52, 52, device="cuda")
    a, b = render_views(vol, params.to("cuda"), config=cfg.views, generator=gen)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(a, b, params.to("cuda"))
    out["loss"].backward()
    assert all(v.is_cuda and torch.isfinite(v) for v in out.values())
    assert all(p.grad is not None for p in model.trainable_parameters())
