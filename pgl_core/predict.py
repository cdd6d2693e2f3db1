"""Segment one CT file or DICOM series folder with a fine-tuned model directory.

:func:`predict_file` is the contract's ``predictor`` (also behind ``pgl predict`` and the MLflow
pyfunc model): read the input through ``storage.readers`` with the refusals of ingest under the
training dataset's plan (the contract's ``plan``: spacing range, HU rule, DICOM checks; defaults
for contracts without one), apply the model's preprocessing contract (canonical LPS orientation,
resampling to ``spacing_mm``, HU window and normalisation), sliding-window prediction (Gaussian
blending, the contract's overlap), then map the label map back onto the input's own grid (nearest
neighbour through physical space) and write it with exactly the input's size, spacing, origin and
direction (uint8).
"""

from __future__ import annotations

import numpy as np
import torch

from pgl_core.contracts import SegmenterContract, load_segmenter
from pgl_core.evaluation.sliding_window import sliding_window_predict
from pgl_core.nets.unet import SegmentationUNet
from storage.errors import RefusedInput
from storage.geometry import canonicalize, resample
from storage.plan import read_options
from storage.readers import CaseSource, discover_cases, read_case
from storage.readers.image_file import image_suffix
from storage.volume import Volume
from storage.writers import resample_to_reference, write_volume


def input_source(input_uri: str, storage_options: dict | None = None) -> CaseSource:
    """A CaseSource for a single volume file, or the one series found in a DICOM folder (refused
    when the folder also holds a DICOM file that cannot be read: it may be a slice of that series;
    pixel-less objects beside it are no reason)."""
    name = input_uri.rstrip("/").rsplit("/", 1)[-1]
    if image_suffix(name) is not None:
        return CaseSource("input", "image", (input_uri,), None, "unlabelled")
    cases, problems, _ = discover_cases(input_uri, storage_options)
    unreadable = [(where, why) for where, why in problems if "without pixel data" not in why]
    if len(cases) == 1 and unreadable:
        raise RefusedInput(*unreadable[0])
    if len(cases) != 1:
        found = ", ".join(c.case_id for c in cases) or "none"
        extra = f"; problems: {problems[:3]}" if problems else ""
        raise RefusedInput(input_uri, f"expected exactly one image series or volume, found {len(cases)} "
                                      f"({found}){extra}")
    return cases[0]


def read_input(input_uri: str, storage_options: dict | None = None, plan: dict | None = None) -> Volume:
    """The input CT in its own geometry (z, y, x), HU, read with the reader settings of ``plan`` (a
    dataset plan dict; None or {}: the defaults)."""
    image, _, _ = read_case(input_source(input_uri, storage_options), storage_options=storage_options,
                            **read_options(plan or {}))
    return image


def to_model_grid(image: Volume, contract: SegmenterContract) -> Volume:
    """Canonical orientation, then the contract's spacing (x, y, z) when it has one."""
    vol = canonicalize(image)
    spacing = contract.spacing_mm
    return resample(vol, tuple(float(s) for s in spacing)) if spacing else vol


SW_BATCH = 2  # windows per network call (CPU and GPU; benchmarks/predict.py measures the choice)


def segment_tensor(model: SegmentationUNet, contract: SegmenterContract, x: torch.Tensor, device: torch.device,
                   sw_batch_size: int = SW_BATCH) -> torch.Tensor:
    """uint8 label map (z, y, x) of a volume (z, y, x) already on the model's grid and normalised."""
    norm = contract.norm_from()
    pad = float(norm.apply(torch.tensor([norm.hu_window[0]])).item())
    num_classes = int(contract.architecture["num_classes"])
    return sliding_window_predict(x[None, None], model, contract.patch_vox, num_classes,
                                  overlap=float(contract.sw_overlap), sw_batch_size=sw_batch_size, device=device,
                                  pad_value=pad)


def segment_array(model: SegmentationUNet, contract: SegmenterContract, array_hu: np.ndarray,
                  device: torch.device) -> np.ndarray:
    """uint8 label map (z, y, x) of a HU array (z, y, x) already on the model's grid."""
    x = contract.norm_from().apply(torch.from_numpy(np.ascontiguousarray(array_hu, dtype=np.float32)))
    return segment_tensor(model, contract, x, device).numpy()


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predict_volume(model: SegmentationUNet, contract: SegmenterContract, image: Volume,
                   device: torch.device) -> Volume:
    """Label map (uint8) of ``image`` on ``image``'s own grid."""
    if contract.in_channels != 1:
        raise ValueError(f"model expects {contract.in_channels} input channels; a CT file gives 1")
    work = to_model_grid(image, contract)
    labels = segment_array(model, contract, work.array, device)
    on_grid = Volume(labels, work.spacing_mm, work.origin_mm, work.direction)
    out = resample_to_reference(on_grid, image, is_label=True)
    out.array = out.array.astype(np.uint8, copy=False)
    return out


def predict_file(model_dir: str, input_uri: str, output_uri: str, device: str | torch.device | None = None,
                 storage_options: dict | None = None) -> str:
    """Segment ``input_uri`` (NIfTI / NRRD / MHA file or DICOM series folder) and write the label map
    to ``output_uri`` (``.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.mha``, local or s3) in the input's
    geometry; returns ``output_uri``."""
    dev = pick_device(device)
    model, contract = load_segmenter(model_dir, storage_options, device=dev)
    image = read_input(input_uri, storage_options, contract.plan)
    out = predict_volume(model, contract, image, dev)
    return write_volume(out, output_uri, storage_options)
