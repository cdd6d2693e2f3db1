"""Phantom anatomy: tissue HU inside their structures, labels inside the body, organ placement
in physical space under every stored geometry, determinism and variety."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from phantoms import KINDS, generate_case, render_case
from phantoms.acquisition import draw_acquisition
from phantoms.anatomy import TISSUE_ID
from storage.volume import Volume


def physical_points(vol: Volume, mask: np.ndarray) -> np.ndarray:
    """(n, 3) LPS mm of the voxels where ``mask`` (z, y, x) is true."""
    k, j, i = np.nonzero(mask)
    matrix = np.asarray(vol.direction).reshape(3, 3) @ np.diag(vol.spacing_mm)
    return np.asarray(vol.origin_mm) + np.stack([i, j, k], axis=1) @ matrix.T


def tissue_hu(case, name: str, erode: int = 1) -> np.ndarray:
    """Image values inside ``name``'s tissue, eroded to keep away from partial-volume edges."""
    mask = case.tissue == TISSUE_ID[name]
    if erode:
        mask = ndimage.binary_erosion(mask, iterations=erode)
    assert mask.sum() > 20, f"too few {name} voxels"
    return case.image.array[mask].astype(float)


@pytest.fixture(scope="module")
def btcv_case():
    return render_case("btcv", 11, (64, 128, 128), oblique=False, phase="non_contrast")


@pytest.fixture(scope="module")
def btcv_pv_case():
    return render_case("btcv", 11, (64, 128, 128), oblique=False)


@pytest.mark.parametrize(
    ("tissue", "lo", "hi"),
    [("liver", 55, 65), ("spleen", 42, 52), ("kidney_left", 28, 45), ("kidney_right", 28, 45),
     ("subcutaneous_fat", -115, -85), ("muscle", 40, 60), ("lung", -880, -800), ("air", -1010, -990)],
)
def test_tissue_means_are_realistic(btcv_case, tissue, lo, hi):
    mean = tissue_hu(btcv_case, tissue).mean()
    assert lo <= mean <= hi, f"{tissue} mean {mean:.1f} HU outside [{lo}, {hi}]"


@pytest.mark.parametrize(
    ("tissue", "lo", "hi"),
    [("liver", 95, 115), ("spleen", 105, 125), ("kidney_left", 125, 165), ("aorta", 150, 180),
     ("subcutaneous_fat", -115, -85), ("muscle", 50, 70)],
)
def test_portal_venous_phase_is_the_default_and_enhances(btcv_pv_case, tissue, lo, hi):
    mean = tissue_hu(btcv_pv_case, tissue).mean()
    assert lo <= mean <= hi, f"{tissue} mean {mean:.1f} HU outside [{lo}, {hi}] (portal venous)"


def test_phase_changes_values_not_anatomy(btcv_case, btcv_pv_case):
    assert np.array_equal(btcv_case.tissue, btcv_pv_case.tissue)
    assert tissue_hu(btcv_pv_case, "liver").mean() > tissue_hu(btcv_case, "liver").mean() + 30
    with pytest.raises(ValueError, match="phase"):
        render_case("btcv", 11, (8, 16, 16), phase="arterial-ish")


def test_bone_is_bright_with_a_brighter_cortex(btcv_case):
    cortical = tissue_hu(btcv_case, "bone_cortical", erode=0).mean()
    cancellous = tissue_hu(btcv_case, "bone_cancellous", erode=0).mean()
    assert 250 <= cancellous <= 500 and 700 <= cortical <= 1200
    assert cortical > cancellous + 300


def test_noise_level_is_ct_like(btcv_case):
    sd = tissue_hu(btcv_case, "liver", erode=2).std()
    assert 8 <= sd <= 25, f"liver HU std {sd:.1f}"


def test_bowel_has_gas_pockets_and_a_wall():
    found_gas = False
    for seed in range(4):
        case = render_case("pool", seed)
        gut = np.isin(case.tissue, [TISSUE_ID["bowel"], TISSUE_ID["colon"]])
        assert gut.any()
        found_gas |= bool((case.image.array[gut] < -900).sum() > 10)
    assert found_gas


def test_lung_bases_sit_above_the_kidneys(btcv_case):
    lung = physical_points(btcv_case.image, btcv_case.tissue == TISSUE_ID["lung"])
    kidney_ids = [TISSUE_ID["kidney_left"], TISSUE_ID["kidney_right"]]
    kidneys = physical_points(btcv_case.image, np.isin(btcv_case.tissue, kidney_ids))
    assert lung[:, 2].mean() > kidneys[:, 2].max() - 20


def test_liver_tumours_are_hypodense_and_labelled():
    case = render_case("lits", 3)
    label = case.label.array
    assert set(np.unique(label)) <= set(KINDS["lits"])
    tumour = ndimage.binary_erosion(label == 2)
    assert tumour.sum() > 10
    tumour_mean = case.image.array[tumour].mean()
    liver_mean = case.image.array[ndimage.binary_erosion(label == 1)].mean()
    assert 50 <= tumour_mean <= 80 and tumour_mean < liver_mean - 20  # hypoattenuating in the portal venous phase


def test_kidney_tumour_is_heterogeneous_and_labelled():
    case = render_case("kits", 5, oblique=False)
    tumour = ndimage.binary_erosion(case.label.array == 2)
    assert tumour.sum() > 10
    assert case.image.array[tumour].std() > 1.3 * case.acquisition.noise_sigma_hu
    assert (case.label.array == 1).sum() > 100


@pytest.mark.parametrize("kind", ["btcv", "lits", "kits", "spleen"])
def test_labels_are_inside_the_body_and_complete(kind):
    case = render_case(kind, 21)
    body = ndimage.binary_erosion(case.tissue != TISSUE_ID["air"], iterations=2, border_value=1)
    label = case.label.array
    assert label.dtype == np.uint8 and case.image.array.dtype == np.int16
    assert np.all(body[label > 0])
    assert set(np.unique(label)) == set(KINDS[kind]), "every label of the kind is present"


def test_pool_is_unlabelled():
    image, label = generate_case("pool", 2)
    assert label is None and image.array.dtype == np.int16


def test_same_seed_same_arrays_different_seed_differs():
    a_img, a_lab = generate_case("btcv", 7)
    b_img, b_lab = generate_case("btcv", 7)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_lab.array, b_lab.array)
    assert a_img.geometry() == b_img.geometry()
    c_img, c_lab = generate_case("btcv", 8)
    assert c_img.geometry() != a_img.geometry()
    assert not np.array_equal(c_img.array, a_img.array)
    assert not np.array_equal(c_lab.array, a_lab.array)


def test_same_seed_same_body_whatever_the_kind():
    _, btcv = generate_case("btcv", 4)
    _, spleen = generate_case("spleen", 4)
    np.testing.assert_array_equal(spleen.array == 1, btcv.array == 1)


def test_geometry_varies_across_seeds():
    acqs = [render_case("pool", s, (8, 32, 32)).acquisition for s in range(30)]
    assert {a.ras for a in acqs} == {True, False}
    assert {a.descending for a in acqs} == {True, False}
    oblique = [a for a in acqs if a.oblique_deg > 0]
    assert 1 <= len(oblique) <= 15 and all(2 <= a.oblique_deg <= 8 for a in oblique)
    assert len({a.spacing_mm for a in acqs}) == 30
    for a in acqs:
        d = np.asarray(a.direction).reshape(3, 3)
        np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-9)


def test_spacing_follows_a_realistic_field_of_view():
    big = draw_acquisition(np.random.default_rng(0), (64, 512, 512), np.zeros(3))
    assert 0.6 <= big.spacing_mm[0] <= 1.0 and big.spacing_mm[0] == big.spacing_mm[1]
    assert 1.0 <= big.spacing_mm[2] <= 5.0
    fixed = render_case("pool", 0, (8, 32, 32), spacing_mm=(0.8, 0.7, 2.5)).image
    assert fixed.spacing_mm == (0.8, 0.7, 2.5)


def centroid(vol: Volume, mask: np.ndarray) -> np.ndarray:
    return physical_points(vol, mask).mean(axis=0)


def test_organs_sit_in_the_same_physical_place_whatever_the_stored_geometry():
    """LPS/RAS, ascending/descending and oblique storage of one body: liver on the patient's
    right (smaller LPS x) of the spleen and aorta, kidneys posterior to the liver, centroids equal."""
    variants = [dict(ras=False, descending=False, oblique=False), dict(ras=True, descending=False, oblique=False),
                dict(ras=True, descending=True, oblique=True), dict(ras=False, descending=True, oblique=True)]
    centroids = []
    for kw in variants:
        image, label = generate_case("btcv", 13, (48, 96, 96), **kw)
        names = {v: k for k, v in KINDS["btcv"].items()}
        c = {n: centroid(label, label.array == names[n]) for n in ("liver", "spleen", "aorta", "kidney_right")}
        assert c["liver"][0] < c["aorta"][0] < c["spleen"][0], f"left/right wrong for {kw}"
        assert c["kidney_right"][0] < c["aorta"][0]
        assert c["liver"][1] < c["kidney_right"][1], f"anterior/posterior wrong for {kw}"
        assert c["liver"][2] > c["kidney_right"][2], f"superior/inferior wrong for {kw}"
        centroids.append(c)
    for c in centroids[1:]:
        for n in c:
            assert np.linalg.norm(c[n] - centroids[0][n]) < 6.0, n


def test_small_case_is_fast():
    generate_case("btcv", 0)  # warm caches and imports
    start = time.perf_counter()
    generate_case("lits", 1, (64, 128, 128))
    seconds = time.perf_counter() - start
    print(f"64x128x128 phantom generated in {seconds:.3f} s")
    assert seconds < 5.0


def test_slab_by_slab_painting_matches_one_pass():
    from phantoms.case import paint_volume

    case = render_case("kits", 6, (20, 48, 40), oblique=True)
    grid = case.acquisition.grid(case.anatomy.centre_mm)
    hu_small, tissue_small = paint_volume(case.anatomy, grid, slab_voxels=48 * 40 * 3)
    hu_one, tissue_one = paint_volume(case.anatomy, grid, slab_voxels=10**9)
    np.testing.assert_array_equal(tissue_small, tissue_one)
    np.testing.assert_allclose(hu_small, hu_one, atol=0.05)  # float32 rounding of coordinates
    np.testing.assert_array_equal(tissue_one, case.tissue)
