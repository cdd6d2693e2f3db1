"""Evaluation of fine-tuned segmenters: metrics in mm, sliding-window prediction, overlays, tables.

- :mod:`.metrics`: per-case, per-class Dice / HD95 / NSD, spacing-aware (spacing in z, y, x mm).
- :mod:`.sliding_window`: memory-bounded whole-volume prediction into a uint8 label map.
- :mod:`.overlays`: one PNG of axial / coronal / sagittal slices with true and predicted contours.
- :mod:`.report`: nan-aware mean / std tables over cases, written as CSV and JSON.

Heavy dependencies (MONAI for surface distances, matplotlib for overlays) are imported inside the
functions that use them, so importing this package costs only torch + numpy.
"""

from pgl_core.evaluation.metrics import segmentation_metrics, spacing_zyx_from_xyz
from pgl_core.evaluation.overlays import save_overlays
from pgl_core.evaluation.report import summarise, write_tables
from pgl_core.evaluation.sliding_window import sliding_window_predict

__all__ = [
    "save_overlays",
    "segmentation_metrics",
    "sliding_window_predict",
    "spacing_zyx_from_xyz",
    "summarise",
    "write_tables",
]
