"""Quick-look PNG of a prediction: axial, coronal and sagittal slices with contours.

One figure, three panels side by side, each ``panel_px`` x ``panel_px`` pixels (so the PNG is
``3 * panel_px`` wide and ``panel_px`` high). The slices pass through the centroid of the
foreground (the truth's if it has any, else the prediction's, else the volume centre). The CT is
shown in a HU window, true contours in green (solid), predicted contours in magenta (dashed),
one contour per class. Panels keep the physical aspect ratio: a pixel is drawn
``row_spacing / col_spacing`` times as tall as wide. Arrays follow the store's canonical layout
(z, y, x), LPS: axial rows run anterior -> posterior, columns right -> left (radiological view);
coronal and sagittal panels show superior (high z) at the top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRUE_COLOUR = "#00ff00"
PRED_COLOUR = "#ff00ff"


@dataclass
class SliceView:
    """One 2D panel: ``image`` / ``truth`` / ``pred`` are (rows, cols); ``aspect`` = row mm / col mm."""

    title: str
    image: np.ndarray
    truth: np.ndarray | None
    pred: np.ndarray
    aspect: float
    origin: str


def foreground_centroid(truth: np.ndarray | None, pred: np.ndarray) -> tuple[int, int, int]:
    """Voxel (z, y, x) of the truth's foreground centroid, else the prediction's, else the centre."""
    for labels in (truth, pred):
        if labels is not None and np.any(labels > 0):
            return tuple(int(round(float(c.mean()))) for c in np.nonzero(labels > 0))  # type: ignore[return-value]
    return tuple(int(s) // 2 for s in pred.shape)  # type: ignore[return-value]


def slice_views(
    image_hu: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, spacing_zyx_mm: Sequence[float]
) -> list[SliceView]:
    """Axial, coronal, sagittal slices through the foreground centroid, with their aspects."""
    sz, sy, sx = (float(s) for s in spacing_zyx_mm)
    cz, cy, cx = foreground_centroid(truth, pred)
    cuts = [
        ("axial z=%d" % cz, (cz, slice(None), slice(None)), sy / sx, "upper"),
        ("coronal y=%d" % cy, (slice(None), cy, slice(None)), sz / sx, "lower"),
        ("sagittal x=%d" % cx, (slice(None), slice(None), cx), sz / sy, "lower"),
    ]
    return [
        SliceView(title, image_hu[idx], None if truth is None else truth[idx], pred[idx], aspect, origin)
        for title, idx, aspect, origin in cuts
    ]


def _draw_contours(ax, labels: np.ndarray, label_values: Sequence[int], colour: str, style: str) -> None:
    """One contour line per present class of a 2D label slice (rows, cols)."""
    for value in label_values:
        mask = (labels == value).astype(np.float32)
        if mask.any() and not mask.all():
            ax.contour(mask, levels=[0.5], colors=colour, linestyles=style, linewidths=1.0)


def save_overlays(
    image_hu: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    out_png: str,
    label_names: Mapping[int, str],
    hu_window: tuple[float, float] = (-160.0, 240.0),
    panel_px: int = 400,
) -> str:
    """Write the three-panel overlay PNG (see module doc) and return its path.

    Args:
        image_hu: CT in Hounsfield units, (z, y, x).
        truth: true label map (z, y, x) or None (prediction only).
        pred: predicted label map (z, y, x), same grid.
        spacing_zyx_mm: voxel spacing in mm, (z, y, x) order.
        out_png: local path of the PNG; its folder is created.
        label_names: label value -> class name (background 0 left out).
        hu_window: (low, high) HU shown black -> white.
        panel_px: side of one square panel in pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no global state
    from matplotlib.figure import Figure

    if image_hu.shape != pred.shape or (truth is not None and truth.shape != pred.shape):
        shapes = (image_hu.shape, None if truth is None else truth.shape, pred.shape)
        raise ValueError(f"overlay for {out_png}: image / truth / pred shapes differ: {shapes}")
    dpi = 100
    fig = Figure(figsize=(3 * panel_px / dpi, panel_px / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"left": 0.01, "right": 0.99, "top": 0.93, "bottom": 0.06, "wspace": 0.03})
    for ax, view in zip(axes, slice_views(image_hu, truth, pred, spacing_zyx_mm)):
        _draw_panel(ax, view, sorted(int(k) for k in label_names), hu_window)
    legend = "truth: green solid   prediction: magenta dashed   classes: "
    fig.text(0.01, 0.01, legend + ", ".join(str(v) for v in label_names.values()), color="white", fontsize=7)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi, facecolor=fig.get_facecolor())
    return str(out_png)


def _draw_panel(ax, view: SliceView, label_values: Sequence[int], hu_window: tuple[float, float]) -> None:
    """Grey CT slice in the HU window, true and predicted contours, physical aspect."""
    ax.imshow(view.image, cmap="gray", vmin=hu_window[0], vmax=hu_window[1], aspect=view.aspect,
              origin=view.origin, interpolation="nearest")
    if view.truth is not None:
        _draw_contours(ax, view.truth, label_values, TRUE_COLOUR, "solid")
    _draw_contours(ax, view.pred, label_values, PRED_COLOUR, "dashed")
    ax.set_title(view.title, color="white", fontsize=8)
    ax.set_axis_off()
