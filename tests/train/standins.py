"""Small stand-ins for the training-loop tests: an in-memory dataset store and a tiny two-view model.

``MemStore`` has the read side of ``storage.store.DatasetStore`` (deterministic int16 volumes from a
seed); ``TinyPGL`` has ``PGLModel``'s interface (forward(view_a, view_b, params) -> losses,
update_target(tau), encoder_state_dict()) with an online net and an EMA target.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from pgl_core.config import PGLConfig, load_config
from pgl_core.data import source_size_vox
from pgl_core.pretrain import Components


class MemStore:
    """``n_cases`` random CT-like int16 volumes of ``shape_zyx`` (picklable, deterministic)."""

    def __init__(self, name: str, n_cases: int = 3, shape_zyx=(24, 40, 40), seed: int = 0) -> None:
        self.name, self.n_cases, self.shape_zyx, self.seed = name, n_cases, tuple(shape_zyx), seed
        self.reads = 0

    def _volume(self, case_id: str) -> np.ndarray:
        idx = int(case_id.rsplit("_", 1)[-1])
        rng = np.random.default_rng([self.seed, idx])
        return rng.integers(-1000, 300, self.shape_zyx).astype(np.int16)

    def done_cases(self) -> list[str]:
        return [f"{self.name}_{i:03d}" for i in range(self.n_cases)]

    def shape(self, case_id: str) -> tuple[int, int, int]:
        return self.shape_zyx

    def read_crop(self, case_id, start_zyx, size_zyx, array="image") -> np.ndarray:
        self.reads += 1
        vol = self._volume(case_id)
        out = np.full(size_zyx, -1024, np.int16)
        src = tuple(slice(max(s, 0), min(s + k, n)) for s, k, n in zip(start_zyx, size_zyx, vol.shape))
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start_zyx))
        out[dst] = vol[src]
        return out

    def manifest(self) -> dict:
        return {"stats": {"mean_hu": -350.0, "std_hu": 375.0, "n_vox": int(np.prod(self.shape_zyx)) * self.n_cases},
                "plan": {"target_spacing_mm": [1.5, 1.5, 3.0], "orientation": "LPS"}, "plan_hash": "p0"}

    def manifest_hash(self) -> str:
        return f"hash-{self.name}"


class TinyPGL(nn.Module):
    """Online conv encoder + projector with a frozen EMA copy; BYOL-like cosine loss."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv3d(1, channels, 3, padding=1), nn.GroupNorm(1, channels), nn.ReLU())
        self.projector = nn.Linear(channels, 8)
        self.predictor = nn.Linear(8, 8)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in list(self.target_encoder.parameters()) + list(self.target_projector.parameters()):
            p.requires_grad_(False)

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder(x).mean(dim=(2, 3, 4))))

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_encoder(x).mean(dim=(2, 3, 4)))

    def forward(self, view_a, view_b, params) -> dict:
        def byol(q, z):
            return (2 - 2 * nn.functional.cosine_similarity(q, z, dim=-1)).mean()
        lg = byol(self._online(view_a), self._target(view_b)) + byol(self._online(view_b), self._target(view_a))
        dims = (1, 2, 3, 4)
        ll = ((self.encoder(view_a).float().mean(dims) - self.encoder(view_b).float().mean(dims)) ** 2).mean()
        ll = ll + 0.0 * params.box_lo.sum()
        return {"loss": lg + ll, "loss_global": lg, "loss_local": ll}

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(tau).add_(po.detach(), alpha=1 - tau)

    def encoder_state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}


def _sample_views(volume_shape, config, generator, batch):
    from pgl_core.views import sample_views
    return sample_views(volume_shape, config, generator, batch)


def _render_views(volumes, params, intensity=True, config=None, generator=None, units_per_hu=1.0):
    from pgl_core.views import render_views
    return render_views(volumes, params, intensity=intensity, config=config, generator=generator,
                        units_per_hu=units_per_hu)


def _source_shape(views) -> tuple[int, int, int]:
    try:
        from pgl_core.views import source_shape_for
    except ImportError:
        return source_size_vox(views.patch_vox, views.scale_range)
    return source_shape_for(views)


def tiny_model(cfg: PGLConfig) -> nn.Module:
    return TinyPGL()


def standin_components() -> Components:
    """TinyPGL with the real view sampler / renderer."""
    return Components(tiny_model, _sample_views, _render_views, _source_shape)


def tiny_config(*overrides: str) -> PGLConfig:
    """The tiny preset, patch 8x16x16, 8 steps, with ``overrides``."""
    base = ["views.patch_vox=[8,16,16]", "train.steps=8", "train.batch_size=4", "train.log_every=2",
            "train.checkpoint_every_steps=4", "train.keep_checkpoints=5", "optim.warmup_steps=2",
            "train.loader_workers=0", "intensity.normalisation=zscore"]  # in-memory stores: no body stats
    return load_config(preset="tiny", overrides=base + list(overrides))


def mem_stores(seed: int = 0) -> dict:
    return {"dsA": MemStore("dsA", 3, (24, 40, 40), seed), "dsB": MemStore("dsB", 2, (20, 36, 44), seed + 1)}
