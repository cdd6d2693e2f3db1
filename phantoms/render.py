"""Painting an :class:`~phantoms.anatomy.Anatomy` on a voxel grid: ideal (noise-free) HU
and the tissue map, both (z, y, x), evaluated at each stored voxel's physical position.

One function per structure; they run in a fixed order, later structures overwrite earlier ones
(body -> lungs -> heart -> bowel -> muscles -> vessels -> organs -> tumours -> spine -> ribs).
Each structure is evaluated only on the index block covering its bounding box.
"""

from __future__ import annotations

import numpy as np

from phantoms.anatomy import TISSUE_ID, Anatomy, Body, Loop, Tube, Tumour
from phantoms.shapes import Block, Blob, Grid, full

_F = np.float32


class Canvas:
    """The HU (float32) and tissue (uint8) arrays being painted, plus the body masks (bool, full):
    ``deep`` = inside the subcutaneous fat, ``cavity`` = inside the muscle wall."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.hu = np.full(grid.shape_zyx, -1000.0, dtype=np.float32)
        self.tissue = np.zeros(grid.shape_zyx, dtype=np.uint8)
        self.deep = np.zeros(grid.shape_zyx, dtype=bool)
        self.cavity = np.zeros(grid.shape_zyx, dtype=bool)

    def paint(self, block: Block, mask: np.ndarray, tissue: str, value: float | np.ndarray) -> None:
        """Set ``tissue`` and HU ``value`` (scalar or array broadcastable to the block) where ``mask``."""
        mask = full(mask, block)
        sub = self.hu[block]
        sub[mask] = value if np.ndim(value) == 0 else full(np.asarray(value, dtype=_F), block)[mask]
        self.tissue[block][mask] = TISSUE_ID[tissue]

    def has(self, block: Block, tissues: tuple[str, ...]) -> np.ndarray:
        return np.isin(self.tissue[block], [TISSUE_ID[t] for t in tissues])


def body_level(body: Body, x: np.ndarray, y: np.ndarray, z: np.ndarray, inset_mm: float) -> np.ndarray:
    """Normalised radius of the trunk outline moved inward by ``inset_mm`` (< 1 inside).

    The outline is a cross-section shape (computed from x, y only: 2D for axis-aligned grids)
    scaled along z by ``1 + widen_per_mm * z``."""
    a, b = body.a_mm - inset_mm, body.b_mm - inset_mm
    u, v = x * _F(1.0 / a), y * _F(1.0 / b)
    r = np.sqrt(u * u + v * v) + _F(1e-6)
    n0, n1 = u / r, v / r
    c = body.outline
    harmonics = (n0 * n0 - n1 * n1, 2 * n0 * n1, n0 * (n0 * n0 - 3 * n1 * n1), n1 * (3 * n0 * n0 - n1 * n1))
    pert = _F(1.0) + sum(_F(ci) * h for ci, h in zip(c, harmonics))
    back = y * _F(1.0 / (0.93 * body.b_mm - inset_mm))  # the back lies flat on the table
    return np.maximum(r / pert, back) / (_F(1.0) + _F(body.widen_per_mm) * z)


def paint_body(cv: Canvas, an: Anatomy) -> None:
    """Air outside, subcutaneous fat, muscle wall, visceral fat inside (whole grid)."""
    block = cv.grid.whole()
    x, y, z = cv.grid.points(block)
    b = an.body
    cv.paint(block, body_level(b, x, y, z, 0.0) < 1, "subcutaneous_fat", an.hu["subcutaneous_fat"])
    cv.deep[...] = full(body_level(b, x, y, z, b.fat_mm) < 1, block)
    cv.paint(block, cv.deep, "muscle", an.hu["muscle"])
    cv.cavity[...] = full(body_level(b, x, y, z, b.fat_mm + b.muscle_mm) < 1, block)
    cv.paint(block, cv.cavity, "visceral_fat", an.hu["visceral_fat"])


def paint_lungs(cv: Canvas, an: Anatomy) -> None:
    """Lung bases above the two diaphragm domes (deeper laterally and posteriorly)."""
    z_low = min(an.diaphragm_mm) - 90
    block = cv.grid.block(np.array([-400, -400, z_low]), np.array([400, 400, 2000]))
    if block is None:
        return
    x, y, z = cv.grid.points(block)
    dome = np.where(x < 0, _F(an.diaphragm_mm[0]), _F(an.diaphragm_mm[1]))
    lateral = (np.abs(x) - _F(65.0)) * _F(1 / 70.0)
    posterior = np.clip(y * _F(1.0 / an.body.b_mm), 0, 1)
    z_diaphragm = dome - _F(35.0) * lateral * lateral - _F(45.0) * posterior * posterior
    mask = cv.cavity[block] & (z > z_diaphragm)
    cv.paint(block, mask, "lung", _F(an.hu["lung"]) + an.textures["lung"](x, y, z))


def _blob_block(cv: Canvas, blob: Blob) -> tuple[Block, np.ndarray, tuple] | None:
    block = cv.grid.block(*blob.bounds())
    if block is None:
        return None
    pts = cv.grid.points(block)
    return block, blob.level(*pts), pts


def paint_heart(cv: Canvas, an: Anatomy) -> None:
    for blob in an.organs["heart"]:
        if (hit := _blob_block(cv, blob)) is not None:
            block, level, _ = hit
            cv.paint(block, (level < 1) & cv.cavity[block], "heart", an.hu["heart"])


def _lumen_filling(blob: Blob, y: np.ndarray, gas: float) -> np.ndarray:
    """True where a hollow organ holds gas: its non-dependent (anterior, -y) ``gas`` fraction."""
    extent_y = float(np.abs(blob.rotation[1]) @ blob.radii_mm)
    return (y - _F(blob.centre_mm[1])) * _F(1.0 / extent_y) < _F(-1.0 + 2.0 * gas)


def paint_loop(cv: Canvas, an: Anatomy, loop: Loop) -> None:
    """A bowel segment: 3 mm wall, fluid (small bowel) or stool (colon) content, optional gas."""
    if (hit := _blob_block(cv, loop.blob)) is None:
        return
    block, level, (x, y, z) = hit
    inside = (level < 1) & cv.cavity[block]
    tissue = "colon" if loop.colon else "bowel"
    content = _F(an.hu["stool"]) + an.textures["stool"](x, y, z) if loop.colon else an.hu["bowel_fluid"]
    cv.paint(block, inside, tissue, content)
    wall = _F(1.0 - 3.0 / float(loop.blob.radii_mm.min()))
    cv.paint(block, inside & (level >= wall), tissue, an.hu["bowel_wall"])
    if loop.gas > 0:
        cv.paint(block, inside & (level < wall) & _lumen_filling(loop.blob, y, loop.gas), tissue, an.hu["gas"])


def paint_tube(cv: Canvas, tube: Tube, tissue: str, hu: float, within: np.ndarray | None) -> None:
    """A vertical tube (vessel or muscle), optionally restricted to the mask ``within`` (full grid)."""
    scale_max = 1.0 + tube.grow_per_mm * 400.0
    r = np.array(tube.radii_mm) * min(scale_max, 3.5)
    lo = np.array([tube.x_mm - r[0], tube.y_mm - r[1], tube.z_bottom_mm])
    hi = np.array([tube.x_mm + r[0], tube.y_mm + r[1], tube.z_top_mm])
    if (block := cv.grid.block(lo, hi)) is None:
        return
    x, y, z = cv.grid.points(block)
    scale = np.minimum(_F(1.0) + _F(tube.grow_per_mm) * np.maximum(_F(tube.z_top_mm) - z, 0), _F(3.5))
    u = (x - _F(tube.x_mm)) / (scale * _F(tube.radii_mm[0]))
    v = (y - _F(tube.y_mm)) / (scale * _F(tube.radii_mm[1]))
    mask = (u * u + v * v < 1) & (z >= tube.z_bottom_mm) & (z <= tube.z_top_mm)
    if within is not None:
        mask = mask & within[block]
    cv.paint(block, mask, tissue, hu)


def paint_organs(cv: Canvas, an: Anatomy) -> None:
    """Stomach, spleen, liver, kidneys (cortex/medulla), gallbladder, in this priority order."""
    for name in ("stomach", "spleen", "liver", "kidney_right", "kidney_left", "gallbladder"):
        for blob in an.organs[name]:
            if (hit := _blob_block(cv, blob)) is None:
                continue
            block, level, (x, y, z) = hit
            inside = (level < 1) & cv.cavity[block]
            if name == "stomach":
                wall = _F(1.0 - 4.0 / float(blob.radii_mm.min()))
                cv.paint(block, inside, name, an.hu["stomach_wall"])
                lumen = inside & (level < wall)
                cv.paint(block, lumen, name, an.hu["stomach_fluid"])
                cv.paint(block, lumen & _lumen_filling(blob, y, 0.3), name, an.hu["gas"])
            elif name.startswith("kidney"):
                cv.paint(block, inside, name, an.hu["kidney_medulla"])
                cv.paint(block, inside & (level >= 0.84), name, an.hu["kidney_cortex"])
            elif name == "gallbladder":
                cv.paint(block, inside, name, an.hu[name])
            else:
                texture = an.textures["organ"](x, y, z) + an.textures["organ_fine"](x, y, z)
                cv.paint(block, inside, name, _F(an.hu[name]) + texture)


def paint_tumour(cv: Canvas, tumour: Tumour) -> None:
    """A lesion replacing its host tissue; a necrotic core when ``necrotic_hu`` is set."""
    if (hit := _blob_block(cv, tumour.blob)) is None:
        return
    block, level, (x, y, z) = hit
    mask = (level < 1) & cv.cavity[block] & cv.has(block, tumour.host)
    texture = tumour.texture(x, y, z)
    cv.paint(block, mask, tumour.tissue, _F(tumour.mean_hu) + texture)
    if tumour.necrotic_hu is not None:
        cv.paint(block, mask & (level < 0.45), tumour.tissue, _F(tumour.necrotic_hu) + _F(0.3) * texture)
