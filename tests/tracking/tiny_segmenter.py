"""A real segmenter model directory without training: the tiny preset's SegmentationUNet with seeded
random weights and the contract fine-tuning would write for a store dataset (predictor
``pgl_core.predict:predict_file``, the one ``pgl predict`` and the pyfunc model use)."""

from __future__ import annotations

import torch

from pgl_core.config import config_to_dict, load_config
from pgl_core.contracts import SegmenterContract
from pgl_core.intensity_norm import resolve_norm
from pgl_core.nets.unet import SegmentationUNet
from storage.store import DatasetStore

TINY = ["finetune.patch_vox=[8,16,16]"]


def write_segmenter(model_dir: str, store_root: str, dataset: str, seed: int = 0) -> str:
    """A segmenter for ``dataset`` of ``store_root`` whose test split is every labelled case."""
    cfg = load_config(preset="tiny", overrides=TINY)
    store = DatasetStore(store_root, dataset)
    manifest = store.manifest()
    names = {int(k): str(v) for k, v in manifest["label_names"].items()}
    cases = sorted(c for c in store.done_cases() if manifest["cases"][c].get("labelled"))
    torch.manual_seed(seed)
    model = SegmentationUNet(cfg.model, max(names) + 1)
    plan = manifest.get("plan") or {}
    contract = SegmenterContract.build(
        config_to_dict(cfg), max(names) + 1, names, plan.get("target_spacing_mm"),
        resolve_norm(cfg.intensity, {dataset: manifest}), "random", None, dataset, store.manifest_hash(),
        {"train": [], "val": [], "test": cases}, {"steps": 0}, plan)
    return contract.write(model_dir, model.state_dict())
