"""Stand-ins for the tracking tests: a small segmenter model directory and a predictor.

``make_model_dir`` writes what a fine-tuned segmenter directory holds (``model.pt`` +
``contract.json`` naming its predictor); ``threshold_predict`` has the signature of
``pgl_core.predict.predict_file`` and writes a label map (voxels above the contract's
``threshold_hu``) in the input image's geometry with SimpleITK.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

PREDICTOR = "tests.tracking.standins:threshold_predict"


def make_model_dir(path: str | Path, threshold_hu: float = 100.0, lineage: dict | None = None) -> str:
    """A segmenter directory whose contract points at :func:`threshold_predict`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"head.weight": torch.full((2, 4), threshold_hu)}, path / "model.pt")
    contract = {
        "kind": "pgl-segmenter", "format_version": 1, "predictor": PREDICTOR,
        "label_names": ["background", "bone"], "spacing_mm": [1.0, 1.0, 2.0],
        "hu_window": [-1024.0, 325.0], "normalisation": {"kind": "zscore", "mean_hu": 0.0, "std_hu": 1.0},
        "patch_vox": [8, 16, 16], "orientation": "LPS", "architecture": {"name": "ResidualUNet"},
        "threshold_hu": threshold_hu,
        "lineage": lineage or {"pretrain_run": "r-0", "manifest_hash": "ab" * 32},
    }
    (path / "contract.json").write_text(json.dumps(contract))
    return str(path)


def threshold_predict(model_dir: str, input_uri: str, output_uri: str) -> str:
    """Label voxels of ``input_uri`` above the contract's threshold; writes ``output_uri``."""
    contract = json.loads((Path(model_dir) / "contract.json").read_text())
    weights = torch.load(Path(model_dir) / "model.pt", weights_only=True)
    assert float(weights["head.weight"][0, 0]) == contract["threshold_hu"]
    image = sitk.ReadImage(input_uri)
    labels = (sitk.GetArrayFromImage(image) > contract["threshold_hu"]).astype(np.uint8)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    Path(output_uri).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, output_uri)
    return output_uri


def write_ct(path: str | Path, seed: int = 0, shape_zyx=(6, 12, 10)) -> tuple[str, np.ndarray]:
    """A small int16 CT-like NIfTI with non-trivial geometry; returns (path, array)."""
    arr = np.random.default_rng(seed).integers(-1000, 1000, shape_zyx).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    sitk.WriteImage(image, str(path))
    return str(path), arr
