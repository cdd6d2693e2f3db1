"""A cheap voxel-wise linear probe of frozen pretraining features (``train.probe_dataset``).

At set-up, up to ``train.probe_label_cases`` labelled cases of the named dataset give one crop of
the pretraining view size each, centred on the case's foreground centroid (image normalised like
training, label read at each feature cell's centre). Each probe encodes the crops with the online
backbone (the encoder stage :func:`pgl_core.probe.probe_stage`), fits a class-balanced multinomial
logistic regression on the first half of the cases' voxel features (full-batch Adam, a few hundred
iterations: well under a second on CPU) and reports ``probe_linear_dice``, the mean Dice over the
foreground classes present in the other half. It says whether the features separate organs
linearly, without a fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LabelledCrops:
    """``images`` (N, 1, D, H, W) normalised float, ``labels`` (N, D, H, W) int64, ``num_classes``."""

    images: Tensor
    labels: Tensor
    num_classes: int


def load_labelled_crops(store, patch_vox: tuple[int, int, int], norm, max_cases: int,  # noqa: ANN001
                        device: torch.device) -> LabelledCrops:
    """One foreground-centred crop of ``patch_vox`` per labelled case (at most ``max_cases``)."""
    manifest = store.manifest()
    cases = manifest.get("cases", {})
    ids = [c for c in store.done_cases() if cases.get(c, {}).get("labelled")][:max_cases]
    if len(ids) < 2:
        raise ValueError(f"probe dataset {store.dataset!r} needs at least 2 labelled cases, has {len(ids)}")
    images, labels = [], []
    for case in ids:
        label = np.asarray(store.read_full(case, "label"))
        fg = np.argwhere(label > 0)
        centre = fg.mean(0).astype(int) if len(fg) else np.array(label.shape) // 2
        start = tuple(int(c) - p // 2 for c, p in zip(centre, patch_vox))
        images.append(np.asarray(store.read_crop(case, start, patch_vox), dtype=np.float32))
        labels.append(np.asarray(store.read_crop(case, start, patch_vox, array="label"), dtype=np.int64))
    names = manifest.get("label_names") or {}
    k = max([int(v) for v in names] + [int(max(lab.max() for lab in labels))]) + 1
    image = norm.apply(torch.from_numpy(np.stack(images))[:, None]).to(device)
    return LabelledCrops(image, torch.from_numpy(np.stack(labels)).to(device), k)


def _cell_labels(labels: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Label at each feature cell's centre: (N, D, H, W) -> (N, d, h, w)."""
    idx = [((torch.arange(n, device=labels.device) + 0.5) * (full / n)).long() for n, full in
           zip(shape, labels.shape[1:])]
    return labels[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]


@torch.no_grad()
def _features(backbone: torch.nn.Module, images: Tensor, stage: int) -> Tensor:
    was = backbone.training
    backbone.eval()
    try:
        return backbone.encode(images)[stage].float()
    finally:
        backbone.train(was)


def linear_probe_dice(backbone: torch.nn.Module, crops: LabelledCrops, stage: int, iters: int = 300) -> float:
    """Fit on the first half of the crops, Dice on the rest (see module doc)."""
    feats = _features(backbone, crops.images, stage)  # (N, C, d, h, w)
    cells = _cell_labels(crops.labels, tuple(feats.shape[2:]))
    n_train = max(1, crops.images.shape[0] // 2)
    x = feats.flatten(2).transpose(1, 2)  # (N, V, C)
    mean, std = x[:n_train].mean((0, 1)), x[:n_train].std((0, 1)) + 1e-6
    x = (x - mean) / std
    xt, yt = x[:n_train].reshape(-1, x.shape[-1]), cells[:n_train].reshape(-1)
    counts = torch.bincount(yt, minlength=crops.num_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), 0.0)
    head = torch.nn.Linear(x.shape[-1], crops.num_classes).to(x.device)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    with torch.enable_grad():
        for _ in range(iters):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(head(xt), yt, weight=weight).backward()
            opt.step()
    with torch.no_grad():
        pred = head(x[n_train:].reshape(-1, x.shape[-1])).argmax(-1)
    truth = cells[n_train:].reshape(-1)
    dice = [float(2 * ((pred == k) & (truth == k)).sum() / ((pred == k).sum() + (truth == k).sum()))
            for k in range(1, crops.num_classes) if (truth == k).any()]
    return float(np.mean(dice)) if dice else float("nan")
