"""The simulated scan of a phantom: stored geometry (spacing, origin, direction, slice order) and
scanner effects (partial-volume blur, Gaussian noise, int16 quantisation).

Geometry is drawn from a physical field of view, so the anatomy keeps its size in mm:
the in-plane FOV is 340-460 mm and the craniocaudal coverage 230-300 mm, centred near the upper
abdomen; spacing = FOV / matrix size. A 512 x 512 matrix therefore gets 0.66-0.90 mm pixels and
64 slices get 3.6-4.7 mm slices; a 64 x 128 x 128 case has ~3 mm pixels. Pass ``spacing_mm`` to
fix the spacing instead (the FOV then follows from it). Per case (seeded): RAS- or LPS-ordered
axes (50 %), descending or ascending stored slices (50 %), oblique direction cosines (20 %, a
2-8 degree rotation about a random axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from phantoms.shapes import Grid

FOV_XY_MM = (340.0, 460.0)
COVERAGE_Z_MM = (230.0, 300.0)
FOV_CENTRE_Z_MM = 20.0  # body-frame z of the scan centre (upper abdomen), +-10 mm
HU_RANGE = (-1024, 3071)


@dataclass(frozen=True)
class Acquisition:
    """Stored geometry in the Volume convention (spacing/origin (x, y, z) mm, LPS; direction
    row-major 3x3) plus scanner parameters."""

    shape_zyx: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]
    ras: bool
    descending: bool
    oblique_deg: float
    noise_sigma_hu: float
    psf_sigma_mm: float

    def matrix(self) -> np.ndarray:
        """(3, 3) index -> physical mm: direction @ diag(spacing)."""
        return np.asarray(self.direction, float).reshape(3, 3) @ np.diag(self.spacing_mm)

    def grid(self, body_centre_mm: np.ndarray) -> Grid:
        """The stored voxel grid in the body frame of an anatomy placed at ``body_centre_mm``."""
        return Grid(self.shape_zyx, np.asarray(self.origin_mm, float) - body_centre_mm, self.matrix())

    def summary(self) -> dict:
        """JSON-safe description (goes into Volume.meta)."""
        return {"ras": self.ras, "descending": self.descending, "oblique_deg": round(self.oblique_deg, 3),
                "noise_sigma_hu": round(self.noise_sigma_hu, 2)}


def _axis_rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation about unit ``axis``; (3, 3)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def draw_acquisition(
    rng: np.random.Generator,
    shape_zyx: tuple[int, int, int],
    body_centre_mm: np.ndarray,
    spacing_mm: tuple[float, float, float] | None = None,
    oblique: bool | None = None,
    ras: bool | None = None,
    descending: bool | None = None,
) -> Acquisition:
    """Draw a case's acquisition; explicit arguments override the drawn values. All random
    values are always drawn in the same order, so an override leaves the others unchanged."""
    nz, ny, nx = (int(n) for n in shape_zyx)
    fov_xy, cov_z = rng.uniform(*FOV_XY_MM), rng.uniform(*COVERAGE_Z_MM)
    drawn_ras, drawn_desc, drawn_obl = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.2
    axis = rng.normal(size=3)
    angle_deg = float(rng.uniform(2.0, 8.0))
    offset = np.array([rng.uniform(-15, 15), rng.uniform(-15, 15), FOV_CENTRE_Z_MM + rng.uniform(-10, 10)])
    noise, psf = float(rng.uniform(10.0, 20.0)), float(rng.uniform(0.4, 0.8))

    ras = drawn_ras if ras is None else bool(ras)
    descending = drawn_desc if descending is None else bool(descending)
    oblique = drawn_obl if oblique is None else bool(oblique)
    if spacing_mm is None:
        pixel = round(fov_xy / max(nx, ny), 4)
        spacing_mm = (pixel, pixel, round(cov_z / nz, 4))
    spacing = np.asarray(spacing_mm, float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be 3 positive numbers (x, y, z), got {spacing_mm!r}")
    flips = np.diag([-1.0 if ras else 1.0, -1.0 if ras else 1.0, -1.0 if descending else 1.0])
    rot = _axis_rotation(axis / np.linalg.norm(axis), np.deg2rad(angle_deg)) if oblique else np.eye(3)
    direction = rot @ flips
    half_extent = direction @ (spacing * (np.array([nx, ny, nz]) - 1) / 2.0)
    origin = np.round(body_centre_mm + offset - half_extent, 2)
    return Acquisition(
        shape_zyx=(nz, ny, nx), spacing_mm=tuple(float(s) for s in spacing), origin_mm=tuple(float(o) for o in origin),
        direction=tuple(float(d) for d in direction.ravel()), ras=ras, descending=descending,
        oblique_deg=angle_deg if oblique else 0.0, noise_sigma_hu=noise, psf_sigma_mm=psf,
    )


def scan(hu: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Ideal HU (z, y, x) float32 -> int16 CT image: partial-volume blur (scanner PSF combined with
    the voxel's box response, per axis), additive Gaussian noise, rounding and clipping."""
    box_sd = np.asarray(acq.spacing_mm) / np.sqrt(12.0)
    sigma_mm = np.sqrt(acq.psf_sigma_mm**2 + box_sd**2)
    sigma_vox_zyx = (sigma_mm / np.asarray(acq.spacing_mm))[::-1]
    out = ndimage.gaussian_filter(hu, sigma=tuple(sigma_vox_zyx), truncate=3.0)
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(acq.noise_sigma_hu)
    np.clip(out, *HU_RANGE, out=out)
    return np.rint(out).astype(np.int16)
