"""Labelled training patches from the store: a seeded, sharded, resumable stream with
foreground-aware sampling.

Work order is that of :mod:`pgl_core.data` (a :class:`~pgl_core.data.CropSampler` over the
training cases; batch ``j`` is a pure function of ``(seed, j)``), so a resumed run sees the same
patches for any number of loader workers. Each item draws from a generator seeded by
``(seed, epoch, item)``:

- with probability ``foreground_p`` the patch is centred on a random voxel of a random
  foreground class present in the case (classes from the case's stored ``label_counts``, so a
  case without foreground never has its label read for this purpose);
- otherwise the patch start is uniform over the case (padding where the case is smaller).

Foreground voxel coordinates are found from one read of the case's label (uint8, cheap) the
first time the worker needs them, and cached per case in that worker (at most
``max_coords_per_class`` coordinates per class, an evenly strided subset in raster order).

Delivered batches: ``{"image": int16 (B, 1, D, H, W) HU, "label": uint8 (B, D, H, W),
"batch": int, "case": int64 (B,)}``. Augmentation (:mod:`pgl_core.seg_augment`) and normalisation happen
on the training device, in the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pgl_core.data import BatchStream, CropSampler


def present_classes(case_attrs: dict[str, Any]) -> list[int] | None:
    """Foreground label values present in a case per its ``label_counts`` (None when unknown)."""
    counts = case_attrs.get("label_counts")
    if counts is None:
        return None
    return sorted(int(v) for v, n in counts.items() if int(v) > 0 and int(n) > 0)


class ForegroundIndex:
    """Per-case cache of foreground voxel coordinates ``(N, 3)`` int32 (z, y, x) per class."""

    def __init__(self, store: Any, max_coords_per_class: int = 20000) -> None:
        self.store = store
        self.max_coords = int(max_coords_per_class)
        self._classes: dict[str, list[int]] = {}
        self._coords: dict[str, dict[int, np.ndarray]] = {}

    def classes(self, case_id: str) -> list[int]:
        """Foreground classes present (from attributes; from the label when they lack counts)."""
        if case_id not in self._classes:
            found = present_classes(self.store.case_attrs(case_id))
            self._classes[case_id] = found if found is not None else sorted(self.coords(case_id))
        return self._classes[case_id]

    def coords(self, case_id: str) -> dict[int, np.ndarray]:
        if case_id not in self._coords:
            label = np.asarray(self.store.read_full(case_id, "label"))
            flat = label.reshape(-1)
            out: dict[int, np.ndarray] = {}
            for value in np.unique(flat[flat > 0]):
                idx = np.flatnonzero(flat == value)
                if idx.size > self.max_coords:
                    idx = idx[np.linspace(0, idx.size - 1, self.max_coords).astype(np.int64)]
                out[int(value)] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int32)
            self._coords[case_id] = out
        return self._coords[case_id]


class SegPatchStream(BatchStream):
    """Batches of (image, label) patches of ``patch_vox`` (z, y, x) from ``case_ids`` of ``store``."""

    def __init__(self, store: Any, case_ids: list[str], shapes: dict[str, tuple[int, int, int]],
                 sampler: CropSampler, batch_size: int, patch_vox: tuple[int, int, int],
                 foreground_p: float, start_batch: int = 0) -> None:
        super().__init__()
        self.store, self.case_ids, self.shapes, self.sampler = store, list(case_ids), dict(shapes), sampler
        self.batch_size, self.patch_vox = int(batch_size), tuple(int(p) for p in patch_vox)
        self.foreground_p, self.start_batch = float(foreground_p), int(start_batch)
        self._index: ForegroundIndex | None = None

    @property
    def index(self) -> ForegroundIndex:
        if self._index is None:
            self._index = ForegroundIndex(self.store)
        return self._index

    def _uniform_start(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[int]:
        out = []
        for n, s in zip(shape, self.patch_vox):
            lo, hi = min(0, n - s), max(0, n - s)
            out.append(int(rng.integers(lo, hi + 1)))
        return out

    def patch_start(self, epoch: int, item_id: int) -> tuple[int, int, int]:
        """Start (z, y, x) of the item's patch (see module doc)."""
        case_id = self.case_ids[item_id // self.sampler.crops_per_volume]
        rng = np.random.default_rng([self.sampler.seed, epoch, item_id, 0x5E6])
        want_fg = rng.random() < self.foreground_p
        shape = self.shapes[case_id]
        if want_fg:
            classes = self.index.classes(case_id)
            if classes:
                cls = classes[int(rng.integers(len(classes)))]
                pts = self.index.coords(case_id).get(cls)
                if pts is not None and len(pts):
                    centre = pts[int(rng.integers(len(pts)))]
                    return tuple(int(c) - s // 2 for c, s in zip(centre, self.patch_vox))  # type: ignore[return-value]
        return tuple(self._uniform_start(shape, rng))  # type: ignore[return-value]

    def make_batch(self, j: int) -> dict[str, Any]:
        images, labels, cases = [], [], []
        for pos in range(j * self.batch_size, (j + 1) * self.batch_size):
            epoch, _, item_id = self.sampler.item(pos)
            c = item_id // self.sampler.crops_per_volume
            start = self.patch_start(epoch, item_id)
            case_id = self.case_ids[c]
            images.append(np.asarray(self.store.read_crop(case_id, start, self.patch_vox), dtype=np.int16))
            labels.append(np.asarray(self.store.read_crop(case_id, start, self.patch_vox, array="label"),
                                     dtype=np.uint8))
            cases.append(c)
        return {"image": torch.from_numpy(np.stack(images)[:, None]), "label": torch.from_numpy(np.stack(labels)),
                "batch": j, "case": torch.tensor(cases, dtype=torch.int64)}
