"""Synthetic abdominal CT phantoms with labels, generated fast and offline (numpy + scipy).

Each case is an adult-like abdomen in physical millimetres: air outside the body (-1000 HU),
subcutaneous fat (~-100), muscle wall and back muscles (~50), visceral fat (~-90), liver (~60),
spleen (~47), kidneys (~32 medulla / ~45 cortex), stomach, gallbladder, aorta, IVC, bowel loops and
colon with gas pockets (-1000), lung bases above the diaphragm (~-850), spine and ribs (cancellous
~280-420 HU under a ~850-1150 HU cortical shell), and, depending on the kind, hypodense liver
tumours (20-40 HU) or a heterogeneous kidney tumour. Shapes are ellipsoids deformed by random
low-order spherical-harmonic-like radius perturbations; every case varies them. The scan adds
partial-volume blur and Gaussian noise (sigma 10-20 HU).

Acquisition varies per case (see ``acquisition``): spacing from a physical field of view, LPS- or
RAS-ordered axes, ascending or descending slices, 20 % oblique. Anatomy is evaluated at each
stored voxel's physical LPS position, so a reader that canonicalises correctly always sees head =
+z, patient left = +x, anterior = -y.

Public API::

    KINDS                    kind -> {label value: name} (0 = background; "pool" -> {})
    generate_case(kind, seed, shape_zyx=(64, 128, 128), spacing_mm=None, oblique=None, ras=None,
                  descending=None) -> (image Volume int16 HU, label Volume uint8 | None)
    write_dataset(out_dir, kind, n_cases, seed=0, shape_zyx=(64, 128, 128), formats=("nifti",),
                  name=None, progress=None) -> summary dict
    DATASET_NAMES            kind -> default dataset folder name (PhantomBTCV, PhantomLiTS, ...)

Kinds: "btcv" (8 organs: spleen, kidney_right, kidney_left, gallbladder, liver, stomach, aorta,
inferior_vena_cava), "lits" (liver, liver_tumour), "kits" (kidney = both kidneys,
kidney_tumour), "spleen" (spleen), "pool" (unlabelled; 30 % of cases carry each tumour type).
``render_case`` (in ``case``) also returns the internal tissue map and drawn parameters.
"""

from __future__ import annotations

from phantoms.case import PhantomCase, render_case
from phantoms.datasets import case_seed, write_dataset, write_datasets
from phantoms.kinds import DATASET_NAMES, KINDS
from storage.volume import Volume

__all__ = ["DATASET_NAMES", "KINDS", "PhantomCase", "case_seed", "generate_case", "render_case", "write_dataset",
           "write_datasets"]


def generate_case(kind: str, seed: int, shape_zyx: tuple[int, int, int] = (64, 128, 128),
                  **acquisition) -> tuple[Volume, Volume | None]:
    """One phantom case: ``(image, label)``; image int16 HU (z, y, x), label uint8 with values of
    ``KINDS[kind]`` on the same grid, None for "pool". ``acquisition`` takes the keywords of
    :func:`render_case` (``spacing_mm`` (x, y, z), ``oblique``, ``ras``, ``descending``, ``phase``);
    those left out are drawn from ``seed``. The same seed gives identical arrays and the same anatomy
    whatever the kind, the acquisition overrides or the contrast ``phase`` ("portal_venous", the
    default, or "non_contrast"; HU per phase in ``anatomy.PHASE_HU``)."""
    case = render_case(kind, seed, shape_zyx, **acquisition)
    return case.image, case.label
