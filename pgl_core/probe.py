"""SSL progress you can judge: a dense-correspondence probe on held-out view pairs.

Every ``train.probe_every`` steps, rank 0 encodes a fixed set of view pairs (crops and view
parameters drawn once, from a seed apart from training's) with the online backbone and asks
whether its features know *where* they are: for the voxels the two views share (aligned with the
prior, :func:`pgl_core.align.align_features`), the distance ``2 - 2 cos`` between L2-normalised
features of true correspondences is compared with the same voxels spatially permuted within each
sample. Logged through the metrics sink (so to MLflow):

- ``probe_true_dist`` / ``probe_perm_dist``: mean distance of true and permuted pairs;
- ``probe_gap`` = perm - true (0: features carry no spatial content; larger is better);
- ``probe_nn_acc``: fraction of view-a voxels whose nearest view-b voxel (cosine) is the true one
  (chance = 1 / voxels per sample).

Features: the backbone's encoder stage at in-plane stride 4, which every mode (global, local,
pgl) trains and which fine-tuning reuses through its skip connection, so inits compare alike.
Cost: one no-grad forward of ``2 * train.probe_pairs`` views per probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pgl_core.align import align_features
from pgl_core.nets.unet import cumulative_strides
from pgl_core.views import ViewParams


@dataclass
class ProbeSet:
    """Fixed held-out view pairs: ``view_a`` / ``view_b`` (P, C, D, H, W) normalised, their params."""

    view_a: Tensor
    view_b: Tensor
    params: ViewParams


def probe_stage(model_cfg) -> int:  # noqa: ANN001 - a ModelConfig
    """Index of the encoder stage with in-plane stride 4 (else the last stage below it)."""
    cum = cumulative_strides(model_cfg)
    below = [i for i, s in enumerate(cum) if s[2] <= 4]
    return max(below) if below else 0


def _unit(x: Tensor) -> Tensor:
    """(B, C, d, h, w) -> (B, N, C) L2-normalised voxel features."""
    return F.normalize(x.flatten(2).transpose(1, 2).float(), dim=-1)


@torch.no_grad()
def correspondence_scores(features_a: Tensor, features_b: Tensor, params: ViewParams,
                          seed: int = 0) -> dict[str, float]:
    """Probe metrics (module doc) from two views' feature maps (B, C, d, h, w) and their params."""
    fa, fb = align_features(features_a.float(), features_b.float(), params)
    ua, ub = _unit(fa), _unit(fb)  # (B, N, C)
    n = ua.shape[1]
    true = (2 - 2 * (ua * ub).sum(-1)).mean()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(ub.device)
    if n > 1:  # a permutation with no fixed point, so every permuted pair is a wrong one
        perm = torch.where(perm == torch.arange(n, device=ub.device), (perm + 1) % n, perm)
    permuted = (2 - 2 * (ua * ub[:, perm]).sum(-1)).mean()
    nn_idx = torch.bmm(ua, ub.transpose(1, 2)).argmax(-1)  # (B, N)
    acc = (nn_idx == torch.arange(n, device=ua.device)).float().mean()
    return {"probe_true_dist": float(true), "probe_perm_dist": float(permuted),
            "probe_gap": float(permuted - true), "probe_nn_acc": float(acc)}


@torch.no_grad()
def run_probe(backbone: torch.nn.Module, probe: ProbeSet, stage: int) -> dict[str, float]:
    """Encode both views with ``backbone`` (a ResidualUNet: ``encode`` -> per-stage maps) and score."""
    was = backbone.training
    backbone.eval()
    try:
        p = probe.view_a.shape[0]
        feats = backbone.encode(torch.cat([probe.view_a, probe.view_b]))[stage]
    finally:
        backbone.train(was)
    return correspondence_scores(feats[:p], feats[p:], probe.params)


def build_probe_set(store_list: list, cases: list, cfg, norm, device: torch.device,  # noqa: ANN001
                    render_views, sample_views, source_shape) -> ProbeSet:  # noqa: ANN001
    """``cfg.train.probe_pairs`` crops (one per case visit, sampler seed apart from training's) and
    their two views, rendered once with augmentation from a fixed generator."""
    from pgl_core.data import CropSampler, CropStream

    pairs, seed = cfg.train.probe_pairs, cfg.train.seed + 7919
    size_vox = tuple(source_shape(cfg.views))
    sampler = CropSampler(len(cases), 1, 0, 1, seed)
    batch = CropStream(store_list, cases, sampler, pairs, size_vox).make_batch(0)
    volumes = norm.apply(batch["image"].to(device))
    gen = torch.Generator().manual_seed(seed)
    params = sample_views(size_vox, cfg.views, gen, pairs).to(device)
    a, b = render_views(volumes, params, intensity=True, config=cfg.views, generator=gen,
                        units_per_hu=norm.units_per_hu())
    return ProbeSet(a, b, params)


def probe_hook(cfg, raw: torch.nn.Module, stores: dict[str, Any], cases: list, norm, device: torch.device,  # noqa: ANN001
               comps, sink, history: list) -> Callable[[int], None] | None:  # noqa: ANN001
    """The pretraining loop's probes as ``probe(step)`` (this module's, and
    :mod:`pgl_core.linear_probe` when ``train.probe_dataset`` names one of ``stores``): each call
    logs ``probe_*`` metrics and their cost ``probe_ms`` to ``sink`` and appends them to
    ``history``. None when ``train.probe_every`` is 0 or the model has no ResidualUNet backbone."""
    from pgl_core.config import ConfigError
    from pgl_core.linear_probe import linear_probe_dice, load_labelled_crops

    online = getattr(raw, "online", None)
    backbone = online["backbone"] if isinstance(online, torch.nn.ModuleDict) and "backbone" in online else None
    if cfg.train.probe_every <= 0 or not hasattr(backbone, "encode"):
        return None
    probe_set = build_probe_set(list(stores.values()), cases, cfg, norm, device, comps.render_views,
                                comps.sample_views, comps.source_shape)
    stage = probe_stage(cfg.model)
    crops = None
    if cfg.train.probe_dataset is not None:
        if cfg.train.probe_dataset not in stores:
            raise ConfigError(f"train.probe_dataset {cfg.train.probe_dataset!r} is not one of the pretraining "
                              f"datasets {sorted(stores)}")
        crops = load_labelled_crops(stores[cfg.train.probe_dataset], tuple(cfg.views.patch_vox), norm,
                                    cfg.train.probe_label_cases, device)

    def probe(step: int) -> None:
        t0 = time.perf_counter()
        scores = run_probe(backbone, probe_set, stage)
        if crops is not None:
            scores["probe_linear_dice"] = linear_probe_dice(backbone, crops, stage)
        scores["probe_ms"] = 1000.0 * (time.perf_counter() - t0)  # its cost, to keep it bounded
        sink.log_metrics(step, scores)
        history.append({"step": float(step), **scores})

    return probe
