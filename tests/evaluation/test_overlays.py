"""Overlay PNG: written, the expected size, non-trivial, physical aspect, centred on the foreground;
one colour per class (the label files' palette) and a legend naming each class."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from pgl_core.evaluation.overlays import foreground_centroid, overlay_figure, save_overlays, slice_views
from storage.palette import colour_of


def phantom(shape=(20, 48, 40)):
    """(image_hu, truth, pred): a 'liver' box of +60 HU in -1000 HU air, prediction shifted."""
    image = np.full(shape, -1000, np.int16)
    truth = np.zeros(shape, np.uint8)
    truth[6:14, 10:30, 12:28] = 1
    truth[8:12, 32:40, 5:10] = 2
    image[truth > 0] = 60
    pred = np.roll(truth, 3, axis=2)
    return image, truth, pred


def _near(png: np.ndarray, rgb: tuple[int, int, int], tol: float = 0.1) -> int:
    """Pixels within ``tol`` (0..1 per channel) of an 8-bit colour."""
    return int((np.abs(png[..., :3] - np.asarray(rgb) / 255.0) < tol).all(axis=-1).sum())


@pytest.mark.parametrize("with_truth", [True, False])
def test_png_is_written_with_the_expected_size_and_content(tmp_path, with_truth):
    image, truth, pred = phantom()
    out = save_overlays(image, truth if with_truth else None, pred, (3.0, 0.8, 0.8),
                        str(tmp_path / "sub" / "case_001.png"), {1: "liver", 2: "kidney"}, panel_px=200)
    png = imread(out)
    assert png.shape[:2] == (224, 600)
    assert float(png[..., :3].var()) > 0
    panels = png[:176]  # above the legend strip: contours only
    assert _near(panels, colour_of(1)) > 20 and _near(panels, colour_of(2)) > 5
    assert _near(panels, (255, 0, 255)) == 0  # no more one-colour-for-all predictions


@pytest.mark.parametrize("with_truth", [True, False])
def test_legend_names_every_class_with_its_own_colour(with_truth):
    from matplotlib.colors import to_hex

    image, truth, pred = phantom()
    names = {0: "background", 1: "liver", 2: "kidney", 3: "spleen"}
    fig = overlay_figure(image, truth if with_truth else None, pred, (3.0, 0.8, 0.8), names, panel_px=100)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["liver", "kidney", "spleen"] + (["truth"] if with_truth else []) + ["prediction"]
    patches = legend.legend_handles[:3]
    faces = [to_hex(p.get_facecolor()) for p in patches]
    assert faces == [to_hex(np.asarray(colour_of(v)) / 255.0) for v in (1, 2, 3)]
    assert len(set(faces)) == 3
    styles = [h.get_linestyle() for h in legend.legend_handles[3:]]
    assert styles == (["-", "--"] if with_truth else ["--"])


def test_slices_pass_through_the_foreground_centroid_with_physical_aspect():
    image, truth, pred = phantom()
    spacing = (3.0, 0.8, 0.5)
    cz, cy, cx = foreground_centroid(truth, pred)
    nz = np.nonzero(truth)
    assert (cz, cy, cx) == tuple(int(round(float(c.mean()))) for c in nz)
    axial, coronal, sagittal = slice_views(image, truth, pred, spacing)
    assert axial.image.shape == (48, 40) and coronal.image.shape == (20, 40) and sagittal.image.shape == (20, 48)
    assert np.array_equal(coronal.truth, truth[:, cy, :])
    assert (axial.aspect, coronal.aspect, sagittal.aspect) == pytest.approx((0.8 / 0.5, 3.0 / 0.5, 3.0 / 0.8))


def test_centroid_falls_back_to_prediction_then_centre():
    empty = np.zeros((10, 12, 14), np.uint8)
    pred = empty.copy()
    pred[2, 3, 4] = 1
    assert foreground_centroid(empty, pred) == (2, 3, 4)
    assert foreground_centroid(None, empty) == (5, 6, 7)


def test_mismatched_shapes_name_the_output(tmp_path):
    image, truth, pred = phantom()
    with pytest.raises(ValueError, match="bad.png"):
        save_overlays(image[:-1], truth, pred, (1, 1, 1), str(tmp_path / "bad.png"), {1: "liver"})
