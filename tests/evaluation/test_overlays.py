"""Overlay PNG: written, the expected size, non-trivial, physical aspect, centred on the foreground."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from pgl_core.evaluation.overlays import foreground_centroid, save_overlays, slice_views


def phantom(shape=(20, 48, 40)):
    """(image_hu, truth, pred): a 'liver' box of +60 HU in -1000 HU air, prediction shifted."""
    image = np.full(shape, -1000, np.int16)
    truth = np.zeros(shape, np.uint8)
    truth[6:14, 10:30, 12:28] = 1
    truth[8:12, 32:40, 5:10] = 2
    image[truth > 0] = 60
    pred = np.roll(truth, 3, axis=2)
    return image, truth, pred


@pytest.mark.parametrize("with_truth", [True, False])
def test_png_is_written_with_the_expected_size_and_content(tmp_path, with_truth):
    image, truth, pred = phantom()
    out = save_overlays(image, truth if with_truth else None, pred, (3.0, 0.8, 0.8),
                        str(tmp_path / "sub" / "case_001.png"), {1: "liver", 2: "kidney"}, panel_px=200)
    png = imread(out)
    assert png.shape[:2] == (200, 600)
    assert float(png[..., :3].var()) > 0
    colours = png[..., :3].reshape(-1, 3)
    magenta = ((colours[:, 0] > 0.8) & (colours[:, 1] < 0.3) & (colours[:, 2] > 0.8)).sum()
    green = ((colours[:, 0] < 0.3) & (colours[:, 1] > 0.8) & (colours[:, 2] < 0.3)).sum()
    assert magenta > 0
    assert (green > 0) == with_truth


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
