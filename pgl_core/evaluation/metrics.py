"""Per-case, per-class segmentation metrics in physical units: Dice, HD95 and NSD.

All functions here take label maps indexed ``(z, y, x)`` and a spacing ``spacing_zyx_mm`` in the
SAME order, (z, y, x), in millimetres. The store and :class:`storage.volume.Volume` keep spacing in
ITK order (x, y, z): convert with :func:`spacing_zyx_from_xyz` (a plain reversal).

Definitions (``P`` = predicted voxels of a class, ``T`` = true voxels, surfaces = voxels of the
mask that its 6-connected binary erosion removes, distances = Euclidean in mm between voxel
centres, computed with MONAI's edge / distance-transform routines):

- Dice  = 2 |P n T| / (|P| + |T|).
- HD95  = max(95th percentile of d(surface P -> surface T), 95th percentile of d(T -> P)), in mm,
  linear interpolation between order statistics (as ``monai.metrics.compute_hausdorff_distance``
  with ``percentile=95``).
- NSD   = (#P-surface voxels within tau of T's surface + #T-surface voxels within tau of P's
  surface) / (#P-surface + #T-surface), tau = ``nsd_tolerance_mm`` (as
  ``monai.metrics.compute_surface_dice`` without sub-voxel areas).

Edge cases (chosen so that mean tables stay meaningful):

- both empty (class absent and correctly not predicted): Dice 1, HD95 0, NSD 1;
- exactly one empty (missed or hallucinated class): Dice 0, HD95 **nan** (undefined: there is no
  surface to measure to), NSD 0. :func:`pgl_core.evaluation.report.summarise` skips nan values
  and reports how many cases contributed, so a missed organ lowers Dice / NSD but leaves HD95
  to the cases where it is defined.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def spacing_zyx_from_xyz(spacing_xyz_mm: Sequence[float]) -> tuple[float, float, float]:
    """ITK / store spacing (x, y, z) in mm -> the (z, y, x) order the metrics take."""
    if len(spacing_xyz_mm) != 3:
        raise ValueError(f"spacing needs 3 values (x, y, z) in mm, got {tuple(spacing_xyz_mm)}")
    x, y, z = (float(s) for s in spacing_xyz_mm)
    return (z, y, x)


def _as_numpy_labels(labels: ArrayLike, name: str) -> np.ndarray:
    """An integer label map (z, y, x), numpy or torch (any device) -> numpy, checked."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{name} must be a 3D label map (z, y, x), got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    return labels


def _check_spacing(spacing_zyx_mm: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx_mm must be 3 positive finite values in mm, got {tuple(spacing_zyx_mm)}")
    return spacing  # type: ignore[return-value]


def dice_score(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice of two boolean masks (z, y, x); 1.0 when both are empty."""
    total = int(pred_mask.sum()) + int(true_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred_mask, true_mask).sum()) / total


def surface_distances_mm(
    pred_mask: np.ndarray, true_mask: np.ndarray, spacing_zyx_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Surface-to-surface distances in mm of two NON-empty boolean masks (z, y, x).

    Returns ``(d_pred_to_true, d_true_to_pred)``: for every surface voxel of one mask, the
    distance (mm) to the nearest surface voxel of the other. Uses MONAI's
    ``get_edge_surface_distance`` (crops to the union's bounding box, then a scipy EDT with
    ``sampling=spacing``), so the cost scales with the objects, not the volume.
    """
    from monai.metrics.utils import get_edge_surface_distance  # heavy import, only when measuring

    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        _, (d_pt, d_tp), _ = get_edge_surface_distance(
            torch.from_numpy(np.ascontiguousarray(pred_mask)),
            torch.from_numpy(np.ascontiguousarray(true_mask)),
            distance_metric="euclidean",
            spacing=list(_check_spacing(spacing_zyx_mm)),
            symmetric=True,
            warn_empty=False,
        )
    return np.asarray(d_pt, dtype=np.float64), np.asarray(d_tp, dtype=np.float64)


def _hd95_nsd(d_pt: np.ndarray, d_tp: np.ndarray, nsd_tolerance_mm: float) -> tuple[float, float]:
    """HD95 (mm) and NSD at ``nsd_tolerance_mm`` from the two directed distance sets (see module doc)."""
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    within = int((d_pt <= nsd_tolerance_mm).sum()) + int((d_tp <= nsd_tolerance_mm).sum())
    return hd95, within / (d_pt.size + d_tp.size)


def binary_metrics(
    pred_mask: np.ndarray, true_mask: np.ndarray, spacing_zyx_mm: Sequence[float], nsd_tolerance_mm: float = 2.0
) -> dict[str, float]:
    """Dice, HD95 (mm) and NSD of two boolean masks (z, y, x), edge cases as in the module doc."""
    if pred_mask.shape != true_mask.shape:
        raise ValueError(f"prediction shape {pred_mask.shape} != truth shape {true_mask.shape}")
    dice = dice_score(pred_mask, true_mask)
    has_pred, has_true = bool(pred_mask.any()), bool(true_mask.any())
    if not has_pred and not has_true:
        return {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    if not (has_pred and has_true):
        return {"dice": dice, "hd95": float("nan"), "nsd": 0.0}
    d_pt, d_tp = surface_distances_mm(pred_mask, true_mask, spacing_zyx_mm)
    hd95, nsd = _hd95_nsd(d_pt, d_tp, nsd_tolerance_mm)
    return {"dice": dice, "hd95": hd95, "nsd": nsd}


def segmentation_metrics(
    pred: ArrayLike,
    truth: ArrayLike,
    spacing_zyx_mm: Sequence[float],
    label_names: Mapping[int, str],
    nsd_tolerance_mm: float = 2.0,
) -> dict[str, dict[str, float]]:
    """Per-class Dice, HD95 (mm) and NSD of one case.

    Args:
        pred, truth: integer label maps ``(z, y, x)`` on the same grid (numpy or torch).
        spacing_zyx_mm: voxel spacing in mm in array order **(z, y, x)** (not the store's x, y, z).
        label_names: label value -> class name for the classes to score (leave out background 0).
        nsd_tolerance_mm: NSD tolerance tau in mm.

    Returns:
        ``{class_name: {"dice": float, "hd95": float_mm, "nsd": float}}`` in ``label_names`` order.
    """
    pred_np, truth_np = _as_numpy_labels(pred, "pred"), _as_numpy_labels(truth, "truth")
    if pred_np.shape != truth_np.shape:
        raise ValueError(f"prediction shape {pred_np.shape} != truth shape {truth_np.shape}")
    spacing = _check_spacing(spacing_zyx_mm)
    if not nsd_tolerance_mm >= 0:
        raise ValueError(f"nsd_tolerance_mm must be >= 0 mm, got {nsd_tolerance_mm}")
    return {
        str(name): binary_metrics(pred_np == int(label), truth_np == int(label), spacing, nsd_tolerance_mm)
        for label, name in label_names.items()
    }
