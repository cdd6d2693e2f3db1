"""Training crops straight from the chunked store: a seeded, sharded, resumable stream of batches.

Each sample is one raw source sub-volume of ``source_size_vox(patch, scale_range)`` voxels per axis
(``ceil(patch * (max_scale + margin_frac))``: enough to hold both view boxes with room to move),
read with ``DatasetStore.read_crop`` (only the chunks the crop touches) and delivered as int16 HU.
The HU window + normalisation and the two views' crop-resize-flip run batched on the training
device in the loop, never in the CPU workers.

Work order (identical on every restart): the work of one epoch is every ``(case, crop)`` pair of
every dataset; epoch ``e`` is a permutation seeded by ``(seed, e)``; rank ``r`` of ``W`` takes
``perm[r::W]`` truncated to ``n_items // W`` (disjoint, equal length); that per-rank stream is cut
into batches of the per-rank batch size, and loader worker ``w`` of ``K`` builds batches ``j`` with
``j % K == w`` (the DataLoader hands them back in ``j`` order). Each crop's position is drawn from
a generator seeded by ``(seed, epoch, item)``, so no worker holds state and resuming at batch ``j``
reproduces the same sequence for any number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

DEFAULT_MARGIN_FRAC = 0.25


class CropSource(Protocol):
    """What the loader needs from a dataset store (``storage.store.DatasetStore`` satisfies it)."""

    def done_cases(self) -> list[str]: ...

    def shape(self, case_id: str) -> tuple[int, int, int]: ...

    def read_crop(self, case_id: str, start_zyx: tuple[int, int, int], size_zyx: tuple[int, int, int],
                  array: str = "image") -> np.ndarray: ...


@dataclass(frozen=True)
class CaseRef:
    """One case: index of its dataset in the run's list, id, array shape ``(z, y, x)``."""

    dataset: int
    case_id: str
    shape_zyx: tuple[int, int, int]


def source_size_vox(patch_vox: tuple[int, ...], scale_range: tuple[float, float],
                    margin_frac: float = DEFAULT_MARGIN_FRAC) -> tuple[int, int, int]:
    """Sub-volume read per sample ``(z, y, x)``: ``ceil(patch * (max_scale + margin_frac))``."""
    top = max(scale_range) + margin_frac
    return tuple(int(math.ceil(p * top - 1e-9)) for p in patch_vox)  # type: ignore[return-value]


def _shapes_from_manifest(store: Any, ids: list[str]) -> dict[str, tuple[int, int, int]] | None:
    try:
        cases = store.manifest().get("cases", {})
        return {c: tuple(int(v) for v in cases[c]["shape_zyx"]) for c in ids}
    except (AttributeError, KeyError, TypeError):
        return None


def index_cases(stores: list[CropSource]) -> list[CaseRef]:
    """Every done case of every store, in a fixed order (dataset, then sorted case id)."""
    refs: list[CaseRef] = []
    for d, store in enumerate(stores):
        ids = sorted(store.done_cases())
        shapes = _shapes_from_manifest(store, ids) or {c: tuple(store.shape(c)) for c in ids}
        refs.extend(CaseRef(d, c, shapes[c]) for c in ids)
    if not refs:
        raise ValueError(f"no done cases in any of the {len(stores)} dataset store(s): {stores!r}")
    return refs


class CropSampler:
    """The per-rank infinite work stream: item ``pos`` -> ``(epoch, index, item_id)``.

    ``item_id = case_index * crops_per_volume + crop``.
    """

    def __init__(self, n_cases: int, crops_per_volume: int, rank: int, world_size: int, seed: int) -> None:
        self.n_items = n_cases * crops_per_volume
        self.crops_per_volume = crops_per_volume
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.per_rank = self.n_items // world_size
        if self.per_rank < 1:
            raise ValueError(f"{self.n_items} (case, crop) items cannot be shared by {world_size} ranks")
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_items(self, epoch: int) -> np.ndarray:
        """This rank's item ids for ``epoch`` in order (int64, length ``per_rank``)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        perm = np.random.default_rng([self.seed, epoch, 0x5A3F]).permutation(self.n_items)
        items = perm[self.rank::self.world_size][: self.per_rank]
        self._cache = (epoch, items)
        return items

    def item(self, pos: int) -> tuple[int, int, int]:
        epoch, index = divmod(pos, self.per_rank)
        return epoch, index, int(self.epoch_items(epoch)[index])

    def position(self, batches_done: int, batch_size: int) -> dict[str, int]:
        """Sampler position after ``batches_done`` batches: {"epoch", "index", "batch"}."""
        epoch, index = divmod(batches_done * batch_size, self.per_rank)
        return {"epoch": epoch, "index": index, "batch": batches_done}


class BatchStream(IterableDataset):
    """Infinite stream of batches ``make_batch(j)`` for j = ``start_batch``, ... ; DataLoader worker w of
    n takes j = start_batch + w, + w + n, ... so the batch sequence is the same with any worker count."""

    start_batch: int = 0

    def make_batch(self, j: int) -> dict[str, Any]:
        raise NotImplementedError

    def __iter__(self):  # noqa: ANN204 - iterator of dicts
        info = get_worker_info()
        n_workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        j = self.start_batch + worker
        while True:
            yield self.make_batch(j)
            j += n_workers


class CropStream(BatchStream):
    """Yields ``{"image": int16 (B, 1, z, y, x), "batch": int, "case"/"item"/"epoch": int64 (B,)}`` from batch
    ``start_batch`` on, forever. ``B`` is the per-rank batch size."""

    def __init__(self, stores: list[CropSource], cases: list[CaseRef], sampler: CropSampler,
                 batch_size: int, size_vox: tuple[int, int, int], start_batch: int = 0) -> None:
        super().__init__()
        self.stores, self.cases, self.sampler = stores, cases, sampler
        self.batch_size, self.size_vox, self.start_batch = batch_size, tuple(size_vox), start_batch

    def crop_start(self, epoch: int, item_id: int) -> tuple[int, int, int]:
        """Start ``(z, y, x)`` of the item's crop (padding when the case is smaller)."""
        ref = self.cases[item_id // self.sampler.crops_per_volume]
        rng = np.random.default_rng([self.sampler.seed, epoch, item_id, 0xC40])
        start = []
        for n, s in zip(ref.shape_zyx, self.size_vox):
            lo, hi = min(0, n - s), max(0, n - s)
            start.append(int(rng.integers(lo, hi + 1)))
        return tuple(start)  # type: ignore[return-value]

    def make_batch(self, j: int) -> dict[str, Any]:
        crops, case_idx, items, epochs = [], [], [], []
        for pos in range(j * self.batch_size, (j + 1) * self.batch_size):
            epoch, _, item_id = self.sampler.item(pos)
            items.append(item_id)
            epochs.append(epoch)
            c = item_id // self.sampler.crops_per_volume
            ref = self.cases[c]
            arr = self.stores[ref.dataset].read_crop(ref.case_id, self.crop_start(epoch, item_id), self.size_vox)
            if tuple(arr.shape) != self.size_vox:
                raise ValueError(f"case {ref.case_id}: crop shape {arr.shape} != requested {self.size_vox}")
            crops.append(np.asarray(arr, dtype=np.int16))
            case_idx.append(c)
        image = torch.from_numpy(np.stack(crops)[:, None])
        return {"image": image, "batch": j, "case": torch.tensor(case_idx, dtype=torch.int64),
                "item": torch.tensor(items, dtype=torch.int64), "epoch": torch.tensor(epochs, dtype=torch.int64)}


def make_loader(stream: CropStream, workers: int, pin_memory: bool, prefetch_factor: int = 4) -> DataLoader:
    """DataLoader over ``stream`` (already batched): pinned memory, persistent workers, prefetch."""
    kwargs: dict[str, Any] = {"batch_size": None, "num_workers": workers, "pin_memory": pin_memory}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    return DataLoader(stream, **kwargs)
