"""Quick-look PNG of a prediction: axial, coronal and sagittal slices with contours.

One figure, three panels side by side, each ``panel_px`` x ``panel_px`` pixels, above a legend
strip (so the PNG is ``3 * panel_px`` wide and ``1.12 * panel_px`` high). The slices pass through the centroid of the
foreground (the truth's if it has any, else the prediction's, else the volume centre). The CT is
shown in a HU window with one contour per class in the class's colour (``storage.palette``, the
colours of the ITK-SNAP and Slicer label files ``pgl predict`` writes): true contours solid,
predicted contours dashed. A legend under the panels names each class beside its colour and the two
line styles. Panels keep the physical aspect ratio: a pixel is drawn
``row_spacing / col_spacing`` times as tall as wide. Arrays follow the store's canonical layout
(z, y, x), LPS: axial rows run anterior -> posterior, columns right -> left (radiological view);
coronal and sagittal panels show superior (high z) at the top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.palette import colour_of, hex_colour

TRUE_STYLE, PRED_STYLE = "solid", "dashed"


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


def class_colours(label_names: Mapping[int, str]) -> dict[int, str]:
    """{label value: "#rrggbb"} of the classes (background 0 left out), from ``storage.palette``."""
    return {int(v): hex_colour(colour_of(int(v))) for v in sorted(int(k) for k in label_names) if int(v) != 0}


def _draw_contours(ax, labels: np.ndarray, colours: Mapping[int, str], style: str) -> None:
    """One contour line per present class of a 2D label slice (rows, cols), in the class's colour."""
    for value, colour in colours.items():
        mask = (labels == value).astype(np.float32)
        if mask.any() and not mask.all():
            ax.contour(mask, levels=[0.5], colors=colour, linestyles=style, linewidths=1.2)


def overlay_figure(
    image_hu: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    label_names: Mapping[int, str],
    hu_window: tuple[float, float] = (-160.0, 240.0),
    panel_px: int = 400,
):
    """The three-panel overlay as a matplotlib Figure (Agg canvas; arguments: :func:`save_overlays`).
    Its one legend holds a patch per class (label: the class name, face colour: the class colour)
    then the line styles ("truth" solid when a truth is given, "prediction" dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no global state
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if image_hu.shape != pred.shape or (truth is not None and truth.shape != pred.shape):
        shapes = (image_hu.shape, None if truth is None else truth.shape, pred.shape)
        raise ValueError(f"overlay: image / truth / pred shapes differ: {shapes}")
    dpi = 100
    fig = Figure(figsize=(3 * panel_px / dpi, panel_px / dpi * 1.12), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"left": 0.01, "right": 0.99, "top": 0.94, "bottom": 0.12, "wspace": 0.03})
    colours = class_colours(label_names)
    for ax, view in zip(axes, slice_views(image_hu, truth, pred, spacing_zyx_mm)):
        _draw_panel(ax, view, colours, hu_window)
    names = {int(k): str(v) for k, v in label_names.items()}
    handles = [Patch(facecolor=c, edgecolor=c, label=names[v]) for v, c in colours.items()]
    if truth is not None:
        handles.append(Line2D([], [], color="white", linestyle=TRUE_STYLE, label="truth"))
    handles.append(Line2D([], [], color="white", linestyle=PRED_STYLE, label="prediction"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=7, frameon=False,
               labelcolor="white", handlelength=1.6, columnspacing=1.2)
    return fig


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
        label_names: label value -> class name (background 0 left out of the contours and legend).
        hu_window: (low, high) HU shown black -> white.
        panel_px: side of one square panel in pixels (the PNG is 3 panels wide, 1.12 panels high:
            the legend's strip).
    """
    try:
        fig = overlay_figure(image_hu, truth, pred, spacing_zyx_mm, label_names, hu_window, panel_px)
    except ValueError as err:
        raise ValueError(f"overlay for {out_png}: {err}") from None
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=fig.dpi, facecolor=fig.get_facecolor())
    return str(out_png)


def _draw_panel(ax, view: SliceView, colours: Mapping[int, str], hu_window: tuple[float, float]) -> None:
    """Grey CT slice in the HU window, true (solid) and predicted (dashed) contours, physical aspect."""
    ax.imshow(view.image, cmap="gray", vmin=hu_window[0], vmax=hu_window[1], aspect=view.aspect,
              origin=view.origin, interpolation="nearest")
    if view.truth is not None:
        _draw_contours(ax, view.truth, colours, TRUE_STYLE)
    _draw_contours(ax, view.pred, colours, PRED_STYLE)
    ax.set_title(view.title, color="white", fontsize=8)
    ax.set_axis_off()
