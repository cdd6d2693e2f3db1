"""The crop stream: sharding across ranks x workers, determinism, resume position, intensity mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgl_core.config import IntensityConfig
from pgl_core.data import CropSampler, CropStream, index_cases, make_loader, source_size_vox
from pgl_core.intensity_norm import pool_stats, resolve_norm
from tests.train.standins import MemStore, mem_stores


def _positions_of_worker(start: int, worker: int, n_workers: int, n_batches: int, batch: int) -> list[int]:
    js = range(start + worker, start + n_batches, n_workers)
    return [p for j in js for p in range(j * batch, (j + 1) * batch)]


@pytest.mark.parametrize("world,workers,batch", [(1, 1, 4), (2, 3, 2), (3, 2, 5)])
def test_epoch_shards_cover_work_without_duplicates(world, workers, batch):
    n_cases, crops = 7, 3
    samplers = [CropSampler(n_cases, crops, r, world, seed=11) for r in range(world)]
    per_rank = samplers[0].per_rank
    seen: list[int] = []
    n_batches = per_rank // batch
    for s in samplers:
        for w in range(workers):
            for pos in _positions_of_worker(0, w, workers, n_batches, batch):
                epoch, _, item = s.item(pos)
                assert epoch == 0
                seen.append(item)
    assert len(seen) == len(set(seen)), "an item was assigned twice in one epoch"
    assert len(seen) == world * n_batches * batch
    full = np.concatenate([s.epoch_items(0) for s in samplers])
    assert len(set(full.tolist())) == world * per_rank >= n_cases * crops - world + 1


def test_epochs_are_different_permutations_and_seeded():
    a, b = CropSampler(5, 4, 0, 1, seed=3), CropSampler(5, 4, 0, 1, seed=3)
    assert np.array_equal(a.epoch_items(0), b.epoch_items(0))
    assert sorted(a.epoch_items(0).tolist()) == list(range(20))
    assert not np.array_equal(a.epoch_items(0), a.epoch_items(1))
    assert not np.array_equal(a.epoch_items(0), CropSampler(5, 4, 0, 1, seed=4).epoch_items(0))
    assert a.item(20) == (1, 0, int(a.epoch_items(1)[0]))
    assert a.position(7, 3) == {"epoch": 1, "index": 1, "batch": 7}


def test_too_little_work_for_ranks_is_an_error():
    with pytest.raises(ValueError, match="3 ranks"):
        CropSampler(1, 2, 0, 3, seed=0)


def _stream(start=0, batch=3, seed=5):
    stores = list(mem_stores().values())
    cases = index_cases(stores)
    sampler = CropSampler(len(cases), 2, rank=1, world_size=2, seed=seed)
    return CropStream(stores, cases, sampler, batch, (10, 20, 20), start_batch=start)


def test_stream_batches_are_int16_crops_of_the_right_cases():
    stream = _stream()
    batch = stream.make_batch(0)
    assert batch["image"].dtype == torch.int16 and tuple(batch["image"].shape) == (3, 1, 10, 20, 20)
    for i in range(3):
        item, epoch = int(batch["item"][i]), int(batch["epoch"][i])
        ref = stream.cases[item // 2]
        start = stream.crop_start(epoch, item)
        expect = stream.stores[ref.dataset].read_crop(ref.case_id, start, (10, 20, 20))
        assert np.array_equal(batch["image"][i, 0].numpy(), expect)
        assert all(0 <= s <= n - k for s, n, k in zip(start, ref.shape_zyx, (10, 20, 20)))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_loader_workers_deliver_the_sequential_order_and_resume():
    reference = [_stream().make_batch(j) for j in range(8)]
    for workers, start in ((0, 0), (2, 0), (2, 3), (3, 5)):
        loader = make_loader(_stream(start=start), workers, pin_memory=False, prefetch_factor=2)
        it = iter(loader)
        got = [next(it) for _ in range(8 - start)]
        del it, loader
        for g, r in zip(got, reference[start:]):
            assert g["batch"] == r["batch"]
            assert torch.equal(g["item"], r["item"]) and torch.equal(g["image"], r["image"])


def test_small_cases_are_padded_not_refused():
    store = MemStore("small", 1, (4, 8, 8))
    cases = index_cases([store])
    stream = CropStream([store], cases, CropSampler(1, 2, 0, 1, 0), 2, (6, 12, 12))
    img = stream.make_batch(0)["image"]
    assert tuple(img.shape) == (2, 1, 6, 12, 12)
    assert (img == -1024).any() and (img != -1024).any()


def test_source_size_holds_the_largest_box():
    assert source_size_vox((16, 96, 96), (1.1, 1.4)) == (27, 159, 159)
    assert all(s >= p * 1.4 for s, p in zip(source_size_vox((8, 16, 16), (1.1, 1.4)), (8, 16, 16)))


def test_intensity_norm_pools_stats_and_applies_window():
    stats = [{"mean_hu": -100.0, "std_hu": 10.0, "n_vox": 300}, {"mean_hu": 100.0, "std_hu": 10.0, "n_vox": 100}]
    mean, std = pool_stats(stats)
    assert mean == pytest.approx(-50.0)
    assert std == pytest.approx(np.sqrt(100 + 0.75 * 50**2 + 0.25 * 150**2))
    norm = resolve_norm(IntensityConfig(normalisation="zscore", hu_window=(-1024, 325)),
                        {"a": {"stats": stats[0]}, "b": {"stats": stats[1]}})
    x = torch.tensor([-3000, -50, 5000], dtype=torch.int16)
    y = norm.apply(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, (torch.tensor([-1024.0, -50.0, 325.0]) + 50.0) / std)
    over = resolve_norm(IntensityConfig(normalisation="zscore", mean_hu=0.0, std_hu=2.0), {})
    assert over.mean_hu == 0.0 and over.std_hu == 2.0
    mm = resolve_norm(IntensityConfig(normalisation="minmax", hu_window=(-1024, 325)), {})
    assert torch.allclose(mm.apply(x), torch.tensor([0.0, 974 / 1349, 1.0]))
    with pytest.raises(ValueError, match="mean_hu"):
        resolve_norm(IntensityConfig(normalisation="zscore"), {"a": {"stats": {}}})
