"""Geometric building blocks of the phantoms: the voxel grid in body-frame millimetres, smoothly
deformed ellipsoids ("blobs") and low-frequency texture waves.

Everything is evaluated on *physical* points: a :class:`Grid` turns stored voxel indices into
body-frame LPS millimetres (x = patient left, y = posterior, z = superior, origin at the body
centre), so the anatomy is the same in mm whatever spacing, direction or slice order is stored.
Arrays follow the Volume convention: blocks are indexed (z, y, x). Point arrays are float32 and
may be *partially broadcast* (e.g. shape ``(1, ny, nx)`` when a coordinate does not depend on z);
combine them with numpy broadcasting and use :func:`full` where a full block is needed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

Block = tuple[slice, slice, slice]

# Monomials of a unit direction n = (n0, n1, n2) of degree 2 and 3: restricted to the sphere they
# span the real spherical harmonics of degree <= 3, i.e. a low-frequency radius perturbation.
_MONOMIALS: tuple[tuple[int, int, int], ...] = tuple(
    (a, b, c) for deg in (2, 3) for a in range(deg + 1) for b in range(deg + 1 - a) for c in [deg - a - b]
)
MAX_PERTURBATION = 0.35


@dataclass(frozen=True)
class Grid:
    """Stored voxel grid expressed in the body frame.

    ``origin_mm``: (3,) body-frame position of voxel (0, 0, 0); ``matrix``: (3, 3) whose column c is
    the body-frame step in mm per index along x (c=0), y (c=1), z (c=2), i.e. direction @ diag(spacing).
    """

    shape_zyx: tuple[int, int, int]
    origin_mm: np.ndarray
    matrix: np.ndarray

    def block(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> Block | None:
        """Smallest index block (z, y, x slices) covering the body-frame box [lo_mm, hi_mm]; None if empty."""
        corners = np.array(list(itertools.product(*zip(lo_mm, hi_mm))), dtype=float)  # (8, 3)
        idx_xyz = np.linalg.solve(self.matrix, (corners - self.origin_mm).T).T
        lo = np.floor(idx_xyz.min(axis=0)).astype(int)
        hi = np.ceil(idx_xyz.max(axis=0)).astype(int) + 1
        n_xyz = self.shape_zyx[::-1]
        lo = np.clip(lo, 0, n_xyz)
        hi = np.clip(hi, 0, n_xyz)
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    def slab(self, k0: int, k1: int) -> "Grid":
        """The sub-grid of stored slices [k0, k1)."""
        shape = (k1 - k0, self.shape_zyx[1], self.shape_zyx[2])
        return Grid(shape, self.origin_mm + self.matrix[:, 2] * k0, self.matrix)

    def whole(self) -> Block:
        return tuple(slice(0, n) for n in self.shape_zyx)  # type: ignore[return-value]

    def points(self, block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body-frame (x, y, z) mm of the voxel centres of ``block``, each broadcastable to (z, y, x)."""
        sz, sy, sx = block
        idx = (
            np.arange(sx.start, sx.stop, dtype=np.float32)[None, None, :],
            np.arange(sy.start, sy.stop, dtype=np.float32)[None, :, None],
            np.arange(sz.start, sz.stop, dtype=np.float32)[:, None, None],
        )
        out = []
        for row in range(3):
            acc: np.ndarray = np.full((1, 1, 1), self.origin_mm[row], dtype=np.float32)
            for col in range(3):
                step = float(self.matrix[row, col])
                if abs(step) > 1e-9:
                    acc = acc + np.float32(step) * idx[col]
            out.append(acc)
        return out[0], out[1], out[2]


def block_shape(block: Block) -> tuple[int, int, int]:
    return tuple(s.stop - s.start for s in block)  # type: ignore[return-value]


def full(a: np.ndarray, block: Block) -> np.ndarray:
    """Broadcast a partially broadcast array to the full (z, y, x) shape of ``block`` (read-only view)."""
    return np.broadcast_to(a, block_shape(block))


def rotation_xyz(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx for angles (ax, ay, az) in radians; (3, 3)."""
    ax, ay, az = (float(a) for a in angles_rad)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Blob:
    """An ellipsoid whose radius is perturbed by a random low-order spherical-harmonic-like field.

    ``rotation``: (3, 3), columns are the blob's axes in the body frame; ``radii_mm`` along them;
    ``coeffs``: one weight per degree-2/3 monomial of the unit direction.
    """

    centre_mm: np.ndarray
    radii_mm: np.ndarray
    rotation: np.ndarray
    coeffs: np.ndarray

    def bounds(self, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Body-frame box certainly containing ``level <= margin``."""
        ext = np.abs(self.rotation) @ self.radii_mm * (1.0 + MAX_PERTURBATION) * margin
        return self.centre_mm - ext, self.centre_mm + ext

    def level(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside, 1 on the deformed surface; shape of broadcast(x, y, z)."""
        d = (x - np.float32(self.centre_mm[0]), y - np.float32(self.centre_mm[1]), z - np.float32(self.centre_mm[2]))
        u = [
            (d[0] * np.float32(self.rotation[0, a]) + d[1] * np.float32(self.rotation[1, a])
             + d[2] * np.float32(self.rotation[2, a])) * np.float32(1.0 / self.radii_mm[a])
            for a in range(3)
        ]
        rho = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
        inv = 1.0 / (rho + np.float32(1e-6))
        n = [ui * inv for ui in u]
        powers = [[np.float32(1.0), n[a], n[a] * n[a], n[a] * n[a] * n[a]] for a in range(3)]
        f = np.zeros_like(rho)
        for c, (pa, pb, pc) in zip(self.coeffs, _MONOMIALS):
            if c != 0.0:
                f += np.float32(c) * powers[0][pa] * powers[1][pb] * powers[2][pc]
        np.clip(f, -MAX_PERTURBATION, MAX_PERTURBATION, out=f)
        return rho / (1.0 + f)


def random_blob(
    rng: np.random.Generator,
    centre_mm: tuple[float, float, float],
    radii_mm: tuple[float, float, float],
    *,
    pos_sd_mm: float = 5.0,
    size_jitter: float = 0.1,
    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    angle_sd_deg: float = 6.0,
    roughness: float = 0.12,
) -> Blob:
    """A :class:`Blob` around the given mean centre/radii/orientation with random variation."""
    centre = np.asarray(centre_mm, float) + rng.normal(0.0, pos_sd_mm, 3)
    radii = np.asarray(radii_mm, float) * rng.uniform(1 - size_jitter, 1 + size_jitter, 3)
    angles = np.deg2rad(np.asarray(angles_deg, float) + rng.normal(0.0, angle_sd_deg, 3))
    degree = np.array([sum(m) for m in _MONOMIALS])
    coeffs = rng.normal(0.0, roughness, len(_MONOMIALS)) * np.where(degree == 2, 1.0, 0.6)
    return Blob(centre, radii, rotation_xyz(angles), coeffs)


@dataclass(frozen=True)
class Waves:
    """Sum of plane cosine waves in body-frame mm: a smooth texture field (amplitudes in HU)."""

    freqs_per_mm: np.ndarray  # (n, 3)
    phases: np.ndarray  # (n,)
    amps: np.ndarray  # (n,)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.float32(0.0)
        for k, ph, a in zip(self.freqs_per_mm, self.phases, self.amps):
            arg = np.float32(2 * np.pi * k[0]) * x + np.float32(2 * np.pi * k[1]) * y + np.float32(2 * np.pi * k[2]) * z
            out = out + np.float32(a) * np.cos(arg + np.float32(ph))
        return out


def random_waves(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float], amp: float) -> Waves:
    """``n`` waves with random directions, wavelengths in the given range and total amplitude ~``amp``."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = dirs / rng.uniform(*wavelength_mm, size=(n, 1))
    return Waves(freqs, rng.uniform(0, 2 * np.pi, n), np.full(n, amp / np.sqrt(n)))
