"""Dice + CE loss and the foreground-aware patch stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgl_core.data import CropSampler
from pgl_core.seg_data import SegPatchStream, present_classes
from pgl_core.seg_loss import dice_ce_loss
from storage.store import DatasetStore


def test_dice_ce_perfect_vs_wrong_and_batch_dice():
    target = torch.zeros(2, 4, 8, 8, dtype=torch.long)
    target[0, 1:3, 2:6, 2:6] = 1
    target[1, 1:3, 2:6, 2:6] = 2  # class 2 absent from sample 0: batch Dice has no 0/0 term
    good = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 20.0
    bad = torch.roll(good, 1, dims=1)
    lg, lb = dice_ce_loss(good, target), dice_ce_loss(bad, target)
    assert lg["loss"] < 1e-3 and lg["dice_loss"] < 1e-3
    assert lb["dice_loss"] > 0.9 and lb["ce"] > 10
    logits = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    dice_ce_loss(logits, target)["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def _stream(store, ids, fg_p, start=0, seed=0):
    m = store.manifest()["cases"]
    shapes = {c: tuple(m[c]["shape_zyx"]) for c in ids}
    return SegPatchStream(store, ids, shapes, CropSampler(len(ids), 2, 0, 1, seed), 2, (8, 16, 16), fg_p, start)


def test_foreground_patches_are_centred_on_foreground(kits_store):
    store = DatasetStore(kits_store, "kits")
    ids = store.done_cases()
    assert present_classes(store.case_attrs(ids[0])) == [1, 2]
    stream = _stream(store, ids, 1.0)
    for j in range(6):
        batch = stream.make_batch(j)
        assert batch["image"].shape == (2, 1, 8, 16, 16) and batch["image"].dtype == torch.int16
        assert batch["label"].shape == (2, 8, 16, 16) and batch["label"].dtype == torch.uint8
        assert (batch["label"][:, 4, 8, 8] > 0).all()  # the centre voxel is the chosen foreground voxel
    never = _stream(store, ids, 0.0)
    fg_fraction = np.mean([float((never.make_batch(j)["label"] > 0).float().mean()) for j in range(6)])
    always = np.mean([float((stream.make_batch(j)["label"] > 0).float().mean()) for j in range(6)])
    assert always > 2 * fg_fraction


def test_stream_is_deterministic_and_resumable(kits_store):
    store = DatasetStore(kits_store, "kits")
    ids = store.done_cases()
    a, b = _stream(store, ids, 0.5), _stream(store, ids, 0.5, start=3)
    first = [a.make_batch(j) for j in range(5)]
    resumed = next(iter(b))
    assert torch.equal(first[3]["image"], resumed["image"]) and torch.equal(first[3]["label"], resumed["label"])
    other = _stream(store, ids, 0.5, seed=1).make_batch(0)
    assert not torch.equal(other["image"], first[0]["image"])


@pytest.mark.slow
def test_worker_processes_deliver_the_same_batches(kits_store):
    from pgl_core.data import make_loader

    store = DatasetStore(kits_store, "kits")
    ids = store.done_cases()
    direct = [_stream(store, ids, 0.7).make_batch(j) for j in range(4)]
    it = iter(make_loader(_stream(store, ids, 0.7), workers=2, pin_memory=False, prefetch_factor=2))
    for j in range(4):
        got = next(it)
        assert got["batch"] == j and torch.equal(got["label"], direct[j]["label"])
        assert torch.equal(got["image"], direct[j]["image"])
