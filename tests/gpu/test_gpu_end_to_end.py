"""On CUDA: the real pretraining loop and fine-tuning (bf16) from a Zarr store, PGL init -> segmenter.

Imports stay light (torch, zarr, the project) so the check runs on a bare GPU machine. Skipped without
CUDA; not part of CI.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pgl_core.config import load_config
from pgl_core.finetune import run_finetuning
from pgl_core.pretrain import run_pretraining
from storage.store import DatasetStore

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPE = (32, 80, 80)


def _phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A body-like ellipsoid with one brighter 'organ' (label 1); int16 HU and uint8 label."""
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]].astype(np.float32)
    body = ((y - 40) / 34) ** 2 + ((x - 40) / 36) ** 2 < 1
    c = rng.uniform(25, 55, size=3)
    organ = ((z - c[0] * 0.5) / 8) ** 2 + ((y - c[1]) / 12) ** 2 + ((x - c[2]) / 10) ** 2 < 1
    img = np.where(body, 40.0, -1000.0) + np.where(organ & body, 60.0, 0.0) + rng.normal(0, 15, SHAPE)
    return img.astype(np.int16), (organ & body).astype(np.uint8)


def _store(root: Path, n: int = 6) -> str:
    ds = DatasetStore(str(root), "gpu", create=True)
    ds.ensure({"target_spacing_mm": [1.0, 1.0, 2.0], "orientation": "LPS"}, {0: "background", 1: "organ"})
    rng = np.random.default_rng(0)
    attrs = {"spacing": [1.0, 1.0, 2.0], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
             "source_checksum": "synthetic", "plan_hash": ""}
    for i in range(n):
        img, lab = _phantom(rng)
        ds.write_case(f"c{i}", img, lab, {**attrs, "plan_hash": ds.manifest()["plan_hash"]})
    ds.consolidate_manifest()
    return str(root)


def test_pretrain_then_finetune_bf16_on_cuda(tmp_path: Path):
    store = _store(tmp_path / "store")
    cfg = load_config(preset="tiny", overrides=["train.steps=20", "train.batch_size=8",
                                                "finetune.steps=40", "finetune.eval_every=20"])
    t0 = time.perf_counter()
    pre = run_pretraining(cfg, store, ["gpu"], str(tmp_path / "pre"))
    t_pre = time.perf_counter() - t0
    assert pre.status == "completed" and math.isfinite(pre.last_loss)
    t0 = time.perf_counter()
    ft = run_finetuning(cfg, store, "gpu", str(tmp_path / "pre"), str(tmp_path / "ft"), device="cuda")
    t_ft = time.perf_counter() - t0
    assert (Path(ft.model_dir) / "model.pt").exists() and (Path(ft.model_dir) / "contract.json").exists()
    assert math.isfinite(ft.best_val_dice)
    print(f"\nGPU {torch.cuda.get_device_name()}: pretrain 20 steps {t_pre:.1f} s "
          f"({pre.samples_per_s:.1f} samples/s), fine-tune 40 steps {t_ft:.1f} s, best val Dice "
          f"{ft.best_val_dice:.3f}")


def test_sliding_window_on_a_full_size_ct_streams_labels_to_the_cpu():
    """300 x 512 x 512, 9 classes, default CPU output: bounded GPU memory, and not CPU-bound."""
    from pgl_core.evaluation import sliding_window_predict

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(8, 9, 1)).cuda().eval()
    volume = torch.randn(1, 1, 300, 512, 512)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    labels = sliding_window_predict(volume, net, (64, 160, 160), 9, overlap=0.5, sw_batch_size=4,
                                    device="cuda", max_prob_bytes=1 << 30)
    seconds = time.perf_counter() - t0
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    print(f"\nsliding window 300x512x512, 9 classes -> CPU labels: {seconds:.1f} s, peak GPU {peak_gib:.2f} GiB")
    assert labels.shape == (300, 512, 512) and labels.device.type == "cpu"
    assert peak_gib < 4.0
