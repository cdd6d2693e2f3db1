"""Painting the skeleton: the lumbar/thoracic spine (vertebral bodies with a bright cortical rim,
discs, neural arch, spinous and transverse processes, spinal canal) and the lower rib pairs.

Bone is painted last so it is never hidden by soft tissue. Arrays are (z, y, x), body-frame mm.
"""

from __future__ import annotations

import numpy as np

from phantoms.anatomy import Anatomy
from phantoms.render import Canvas, body_level

_F = np.float32


def _segment(z: np.ndarray, z0: float, period: float) -> np.ndarray:
    """Signed distance (mm) from z to the nearest segment centre z0 + k * period."""
    phase = (z - _F(z0)) * _F(1.0 / period)
    return (phase - np.round(phase)) * _F(period)


def paint_spine(cv: Canvas, an: Anatomy) -> None:
    """Vertebrae repeating along z, discs between them, posterior elements and the canal."""
    sp = an.spine
    rx, ry = sp.radii_mm
    canal_y = sp.y_mm + ry + 9.0
    lo = np.array([sp.x_mm - 50, sp.y_mm - ry - 2, -5000.0])
    hi = np.array([sp.x_mm + 50, canal_y + 45, 5000.0])
    if (block := cv.grid.block(lo, hi)) is None:
        return
    x, y, z = cv.grid.points(block)
    x = x - _F(sp.x_mm)
    dz = _segment(z, sp.z0_mm, sp.period_mm)
    half_h = _F((sp.period_mm - sp.disc_mm) / 2)
    in_vert = np.abs(dz) < half_h
    u, v = x * _F(1 / rx), (y - _F(sp.y_mm)) * _F(1 / ry)
    rho = np.sqrt(u * u + v * v)
    cv.paint(block, (rho < 0.95) & ~in_vert, "disc", an.hu["disc"])
    body = (rho < 1) & in_vert
    cv.paint(block, body, "bone_cortical", an.hu["bone_cortical"])
    cv.paint(block, body & (rho < 0.8) & (np.abs(dz) < half_h - 2), "bone_cancellous", an.hu["bone_cancellous"])
    rc = np.sqrt(x * x + (y - _F(canal_y)) ** 2) * _F(1 / 8.0)
    dy_c = y - _F(canal_y)
    arch = (rc < 1.7) & (dy_c > -6)
    spinous = (np.abs(x) < 4) & (dy_c > 0) & (dy_c < 38) & (np.abs(dz + dy_c * _F(0.25)) < 0.35 * half_h)
    transverse = (np.abs(x) > 10) & (np.abs(x) < 42) & (np.abs(dy_c) < 5) & (np.abs(dz) < 4)
    cv.paint(block, (arch & in_vert) | spinous | transverse, "bone_cortical", an.hu["bone_cortical"])
    cv.paint(block, rc < 1, "spinal_canal", an.hu["spinal_canal"])


def paint_ribs(cv: Canvas, an: Anatomy) -> None:
    """Rib pairs along the inner muscle wall, highest posteriorly, sloping down anteriorly; lower
    ribs are shorter (floating ribs end laterally). Cortical shell over a cancellous core."""
    rb, body = an.ribs, an.body
    z_lo = rb.z0_mm - rb.drop_mm - 15
    z_hi = rb.z0_mm + (rb.count - 1) * rb.period_mm + 15
    if (block := cv.grid.block(np.array([-400, -400, z_lo]), np.array([400, 400, z_hi]))) is None:
        return
    x, y, z = cv.grid.points(block)
    rho = body_level(body, x, y, z, body.fat_mm + 0.8 * body.muscle_mm)
    r = np.sqrt(x * x + y * y) + _F(1e-3)
    dr = r - r / rho  # mm outward from the rib line along the ray
    sin_t = y / r
    zeta = z + _F(rb.drop_mm) * (_F(1.0) - sin_t) * _F(0.5) - _F(rb.z0_mm)
    k = np.clip(np.round(zeta * _F(1 / rb.period_mm)), 0, rb.count - 1)
    dz = zeta - k * _F(rb.period_mm)
    reach = _F(-0.1) - _F(0.65 / max(rb.count - 1, 1)) * k  # lower ribs stop further back
    present = (sin_t > reach) & ((np.abs(x) > 42) | (y < 0))
    hr, hz = rb.half_mm
    q = np.sqrt((dr * _F(1 / hr)) ** 2 + (dz * _F(1 / hz)) ** 2)
    rib = (q < 1) & present
    cv.paint(block, rib, "bone_cortical", an.hu["bone_cortical"])
    cv.paint(block, rib & (q < 0.6), "bone_cancellous", an.hu["bone_cancellous"])
