"""One phantom case end to end: seed -> anatomy + tumours + acquisition -> image and label Volumes.

Randomness is split into independent streams spawned from the case seed (anatomy, tumours,
acquisition, noise), so the same seed gives the same body whatever the kind or the acquisition
overrides, and the same seed gives bit-identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from phantoms.acquisition import Acquisition, draw_acquisition, scan
from phantoms.anatomy import Anatomy, draw_anatomy, kidney_tumours, liver_tumours
from phantoms.kinds import KINDS, TUMOUR_PROBABILITY, check_kind, label_lut
from phantoms.render import (
    Canvas, paint_body, paint_heart, paint_loop, paint_lungs, paint_organs, paint_tube, paint_tumour,
)
from phantoms.shapes import Grid
from phantoms.skeleton import paint_ribs, paint_spine
from storage.volume import Volume


@dataclass
class PhantomCase:
    """A generated case: ``image`` (int16 HU), ``label`` (uint8, None for unlabelled kinds), the
    internal ``tissue`` map (z, y, x) uint8 indexing ``anatomy.TISSUES``, and the drawn parameters."""

    image: Volume
    label: Volume | None
    tissue: np.ndarray
    anatomy: Anatomy
    acquisition: Acquisition


def paint_anatomy(anatomy: Anatomy, canvas: Canvas) -> None:
    """All structures, in painting order (later ones win where they overlap)."""
    paint_body(canvas, anatomy)
    paint_lungs(canvas, anatomy)
    paint_heart(canvas, anatomy)
    for loop in anatomy.loops:
        paint_loop(canvas, anatomy, loop)
    for tube in anatomy.muscles:
        paint_tube(canvas, tube, "muscle", anatomy.hu["muscle"], canvas.deep)
    for name, tube in anatomy.vessels.items():
        paint_tube(canvas, tube, name, anatomy.hu[name], canvas.cavity)
    paint_organs(canvas, anatomy)
    for tumour in anatomy.tumours:
        paint_tumour(canvas, tumour)
    paint_spine(canvas, anatomy)
    paint_ribs(canvas, anatomy)


def paint_volume(anatomy: Anatomy, grid: Grid, slab_voxels: int = 2**18) -> tuple[np.ndarray, np.ndarray]:
    """Ideal HU (float32) and tissue map (uint8), both (z, y, x), painted slab by slab of stored
    slices so temporaries stay small whatever the volume size."""
    hu = np.empty(grid.shape_zyx, dtype=np.float32)
    tissue = np.empty(grid.shape_zyx, dtype=np.uint8)
    nz, ny, nx = grid.shape_zyx
    per_slab = max(1, slab_voxels // (ny * nx))
    for k0 in range(0, nz, per_slab):
        k1 = min(nz, k0 + per_slab)
        canvas = Canvas(grid.slab(k0, k1))
        paint_anatomy(anatomy, canvas)
        hu[k0:k1], tissue[k0:k1] = canvas.hu, canvas.tissue
    return hu, tissue


def _with_tumours(kind: str, anatomy: Anatomy, rng: np.random.Generator, phase: str) -> Anatomy:
    p_liver, p_kidney = TUMOUR_PROBABILITY[kind]
    has_liver, has_kidney = rng.random() < p_liver, rng.random() < p_kidney
    tumours = []
    if has_liver:
        tumours += liver_tumours(rng, anatomy, phase)
    if has_kidney:
        tumours += kidney_tumours(rng, anatomy, phase)
    return replace(anatomy, tumours=tumours)


def render_case(
    kind: str,
    seed: int,
    shape_zyx: tuple[int, int, int] = (64, 128, 128),
    spacing_mm: tuple[float, float, float] | None = None,
    oblique: bool | None = None,
    ras: bool | None = None,
    descending: bool | None = None,
    phase: str = "portal_venous",
) -> PhantomCase:
    """Generate one case with its internals (tissue map, parameters); see ``generate_case``."""
    check_kind(kind)
    if len(shape_zyx) != 3 or min(shape_zyx) < 1:
        raise ValueError(f"shape_zyx must be 3 positive sizes (z, y, x), got {shape_zyx!r}")
    anat_ss, tumour_ss, acq_ss, noise_ss = np.random.SeedSequence(int(seed)).spawn(4)
    anatomy = _with_tumours(kind, draw_anatomy(np.random.default_rng(anat_ss), phase),
                            np.random.default_rng(tumour_ss), phase)
    acq = draw_acquisition(np.random.default_rng(acq_ss), tuple(shape_zyx), anatomy.centre_mm,
                           spacing_mm=spacing_mm, oblique=oblique, ras=ras, descending=descending)
    hu, tissue = paint_volume(anatomy, acq.grid(anatomy.centre_mm))
    pixels = scan(hu, acq, np.random.default_rng(noise_ss))
    meta = {"phantom_kind": kind, "phantom_seed": int(seed), "phantom_phase": phase, **acq.summary()}
    image = Volume(pixels, acq.spacing_mm, acq.origin_mm, acq.direction, meta=meta)
    label = None
    if KINDS[kind]:
        label = Volume(label_lut(kind)[tissue], acq.spacing_mm, acq.origin_mm, acq.direction, meta=dict(meta))
    return PhantomCase(image, label, tissue, anatomy, acq)
