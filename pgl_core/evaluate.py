"""Evaluate a fine-tuned segmenter on a split of a store dataset: Dice, HD95, NSD per case and class.

Sliding-window prediction (Gaussian blending, the contract's overlap) of every case of the split
(the model directory's ``split.json``; ``split="all"`` takes every labelled case), metrics in mm
with the case's stored spacing (x, y, z -> z, y, x), summary tables (``metrics.csv``,
``metrics.json``) and an overlay PNG for the first ``overlays`` cases, all under the local folder
``output_dir``. The dataset's plan must match the model's contract (spacing, orientation).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from pgl_core.contracts import load_segmenter, read_split
from pgl_core.evaluation import (save_overlays, segmentation_metrics, spacing_zyx_from_xyz, summarise,
                                 write_tables)
from pgl_core.predict import pick_device, segment_array


def split_cases(model_dir: str, store: Any, split: str, storage_options: dict | None) -> list[str]:
    """Case ids of ``split`` ("train", "val", "test" or "all" labelled cases) present in the store."""
    manifest = store.manifest()
    labelled = [c for c in store.done_cases() if manifest["cases"].get(c, {}).get("labelled")]
    if split == "all":
        return labelled
    ids = read_split(model_dir, storage_options).get(split)
    if ids is None:
        raise ValueError(f"{model_dir}/split.json has no split {split!r}; use train, val, test or all")
    missing = sorted(set(ids) - set(labelled))
    if missing:
        raise ValueError(f"dataset {store.dataset!r} lacks labelled cases {missing[:5]} of split {split!r}")
    return list(ids)


def evaluate_model(model_dir: str, store_root: str, dataset: str, output_dir: str, split: str = "test",
                   storage_options: dict | None = None, overlays: int = 3,
                   device: str | torch.device | None = None) -> dict[str, Any]:
    """Evaluate on ``split`` of ``dataset``; write tables and overlays to ``output_dir``; return the summary
    (:func:`pgl_core.evaluation.summarise`) plus ``"split"``, ``"cases"`` and ``"files"``."""
    from storage.store import DatasetStore

    dev = pick_device(device)
    model, contract = load_segmenter(model_dir, storage_options, device=dev)
    store = DatasetStore(store_root, dataset, storage_options=storage_options)
    contract.check_plan(store.manifest(), dataset)
    names = {int(k): v for k, v in contract.label_names.items() if int(k) > 0}
    tolerance = float(contract.config.get("finetune", {}).get("nsd_tolerance_mm", 2.0))
    cases = split_cases(model_dir, store, split, storage_options)
    per_case, pngs = [], []
    for i, case in enumerate(cases):
        image = np.asarray(store.read_full(case))
        truth = np.asarray(store.read_full(case, "label"))
        pred = segment_array(model, contract, image, dev)
        spacing = spacing_zyx_from_xyz(store.case_attrs(case)["spacing"])
        per_case.append({"case": case, "metrics": segmentation_metrics(pred, truth, spacing, names, tolerance)})
        if i < overlays:
            pngs.append(save_overlays(image, truth, pred, spacing, os.path.join(output_dir, "overlays",
                                                                                f"{case}.png"), names))
    summary = summarise(per_case)
    files = write_tables(per_case, summary, output_dir)
    return {**summary, "split": split, "cases": cases, "files": {**files, "overlays": pngs}}
