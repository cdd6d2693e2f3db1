"""PGL two-view geometry: sample crop boxes, flips and rotations, then render them on device.

Sampling and applying are separate steps (TorchIO style): :func:`sample_views` draws a
:class:`ViewParams` on the CPU from a seeded generator; :func:`render_views` applies it to a batch of
source volumes with one batched ``grid_sample`` (both views in one call). ``align.py`` reads the same
parameters to put the two views' feature maps on one common grid.

Geometry convention (used everywhere in this package):

- Source coordinates are continuous *voxel-edge* coordinates, axes (z, y, x): voxel ``i`` spans
  ``[i, i + 1)`` and its centre is ``i + 0.5``. A box is ``[box_lo, box_lo + box_size)`` per axis.
- A view has ``patch_vox`` voxels. Resampling uses ``align_corners=False`` semantics: view voxel
  ``k`` samples the source at ``box_lo + (k + 0.5) * box_size / P`` (trilinear).
- View-normalised coordinates ``t`` in [-1, 1]^3 (align_corners=False, the view's own array axes)
  and box-normalised coordinates ``c`` (source axes, -1 / +1 at the box edges) are related by
  ``c = A t`` with ``A = diag(flip signs) @ Q(rot90)``, a signed permutation. In array terms:
  ``view = torch.rot90(torch.flip(crop, flipped_axes), k, dims=(-2, -1))``.

Box placement [ours]: boxes always lie inside the source volume; where the volume is smaller than
a drawn box along an axis the box is shrunk to the volume's extent on that axis (the scale then
falls below ``scale_range``). Use :func:`source_shape_for` to size source crops so this never
happens. The two boxes overlap by at least ``min_overlap`` of the *larger* box's volume and, per
axis, by at least ``min_axis_overlap`` of the larger box's extent (keeps the overlap resolvable at
the coarsest feature level, see ``align.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from pgl_core.config import ViewConfig
from pgl_core.view_intensity import augment_intensity

DEFAULT_MIN_AXIS_OVERLAP = 0.25
_SHRINK_STEPS = 8


@dataclass
class ViewParams:
    """Geometry of one view pair per sample. Index 0 of dim 1 is view a, index 1 is view b.

    box_lo: (B, 2, 3) float, box start in source voxel-edge coordinates (z, y, x).
    box_size: (B, 2, 3) float, box size in source voxels.
    flips: (B, 2, 3) bool, flip of the rendered view per axis.
    rot90: (B, 2) int64, in-plane (H, W) quarter turns applied after the flips.
    patch_vox: (D, H, W) size of each rendered view.
    """

    box_lo: Tensor
    box_size: Tensor
    flips: Tensor
    rot90: Tensor
    patch_vox: tuple[int, int, int]

    def __post_init__(self) -> None:
        b = self.box_lo.shape[0]
        expected = {"box_lo": (b, 2, 3), "box_size": (b, 2, 3), "flips": (b, 2, 3), "rot90": (b, 2)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"ViewParams.{name} has shape {got}, expected {shape}")
        self.patch_vox = tuple(int(p) for p in self.patch_vox)  # type: ignore[assignment]

    @property
    def batch(self) -> int:
        return int(self.box_lo.shape[0])

    def to(self, device: torch.device | str) -> "ViewParams":
        """Copy of the parameters on ``device`` (non-blocking where possible)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return ViewParams(patch_vox=self.patch_vox, **moved)

    def view_matrices(self) -> Tensor:
        """(B, 2, 3, 3) float32 signed permutations A with c = A t (see module docstring).

        A = diag(flip signs) @ Q_k, Q_k = [[1, 0, 0], [0, cos, sin], [0, -sin, cos]] at k * 90
        degrees (Q_1 t = (t_z, t_x, -t_y)). Built on the parameters' device, no host copies.
        """
        angle = self.rot90.to(torch.float32) * (math.pi / 2)
        cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
        one, zero = torch.ones_like(cos), torch.zeros_like(cos)
        q = torch.stack([one, zero, zero, zero, cos, sin, zero, -sin, cos], dim=-1).unflatten(-1, (3, 3))
        signs = torch.where(self.flips, -1.0, 1.0).to(torch.float32)
        return signs.unsqueeze(-1) * q

    def on(self, device: torch.device) -> "ViewParams":
        """``self`` if already on ``device`` (no copy, traceable), else :meth:`to`."""
        return self if self.box_lo.device == device else self.to(device)


def source_shape_for(config: ViewConfig, spread: float = 0.5) -> tuple[int, int, int]:
    """Source sub-volume (D, H, W) to read per sample: ``ceil(patch * max_scale * (1 + spread))``.

    ``spread``: how far (as a fraction of the larger box) the two boxes can be offset before the
    volume edges push them back together. ``1 - min_axis_overlap`` gives the sampler's full offset
    range; the default 0.5 (2.1x the patch per axis at scale 1.4) trades overlap variety for I/O.
    Any source of at least ``patch * max_scale`` keeps box sizes in ``scale_range``.
    """
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    hi = max(config.scale_range)
    return tuple(int(math.ceil(p * hi * (1.0 + spread) - 1e-9)) for p in config.patch_vox)  # type: ignore[return-value]


def _axis_overlap(config: ViewConfig, min_axis_overlap: float | None) -> float:
    if min_axis_overlap is not None:
        return float(min_axis_overlap)
    return float(getattr(config, "min_axis_overlap", DEFAULT_MIN_AXIS_OVERLAP))


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _place_b(lo_a: Tensor, size_a: Tensor, size_b: Tensor, offset: Tensor, vol: Tensor) -> Tensor:
    """Box b start for centre offsets (..., 3) from box a's centre, clamped inside the volume."""
    centre_b = lo_a + size_a / 2 + offset
    lo_b = centre_b - size_b / 2
    return torch.minimum(torch.clamp(lo_b, min=0.0), vol - size_b)


def _pair_ok(lo_a, size_a, lo_b, size_b, min_overlap: float, min_axis: float) -> Tensor:
    """Whether each box pair meets the volume and per-axis overlap constraints (float64)."""
    inter = torch.clamp(torch.minimum(lo_a + size_a, lo_b + size_b) - torch.maximum(lo_a, lo_b), min=0.0)
    big = torch.maximum(size_a, size_b)
    vol_ok = inter.prod(-1) >= min_overlap * big.prod(-1) * (1 - 1e-9)
    axis_ok = (inter >= min_axis * big * (1 - 1e-9)).all(-1)
    return vol_ok & axis_ok


def _first_valid(ok: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the first candidate (dim 1) that is ok, and whether any was."""
    idx = ok.to(torch.int8).argmax(dim=1)
    chosen = candidates[torch.arange(candidates.shape[0]), idx]
    return chosen, ok.any(dim=1)


def _draw_boxes(vol, patch, config, gen, batch, min_axis) -> tuple[Tensor, Tensor]:
    """(B, 2, 3) box starts and sizes meeting the overlap constraints (float64, CPU)."""
    s0, s1 = config.scale_range
    size = torch.minimum(patch * _uniform(gen, (batch, 2, 3), s0, s1), vol)
    size_a, size_b = size[:, 0], size[:, 1]
    lo_a = _uniform(gen, (batch, 3), 0.0, 1.0) * (vol - size_a)
    reach = torch.maximum(size_a, size_b) * (1.0 - min_axis)
    offsets = _uniform(gen, (batch, config.max_tries, 3), -1.0, 1.0) * reach[:, None]
    cands = _place_b(lo_a[:, None], size_a[:, None], size_b[:, None], offsets, vol)
    ok = _pair_ok(lo_a[:, None], size_a[:, None], cands, size_b[:, None], config.min_overlap, min_axis)
    lo_b, found = _first_valid(ok, cands)
    # Shrink the first offset geometrically towards concentric boxes when no redraw succeeded.
    shrink = 0.5 ** torch.arange(1, _SHRINK_STEPS + 2, dtype=torch.float64)
    shrink[-1] = 0.0
    shrunk = _place_b(lo_a[:, None], size_a[:, None], size_b[:, None],
                      offsets[:, :1] * shrink[None, :, None], vol)
    ok_s = _pair_ok(lo_a[:, None], size_a[:, None], shrunk, size_b[:, None], config.min_overlap, min_axis)
    lo_s, found_s = _first_valid(ok_s, shrunk)
    lo_b = torch.where(found[:, None], lo_b, lo_s)
    # Last resort (only for min_overlap near 1): view b uses view a's box.
    same = ~(found | found_s)
    lo_b = torch.where(same[:, None], lo_a, lo_b)
    size_b = torch.where(same[:, None], size_a, size_b)
    return torch.stack([lo_a, lo_b], 1), torch.stack([size_a, size_b], 1)


def sample_views(
    volume_shape: tuple[int, int, int],
    config: ViewConfig | None,
    generator: torch.Generator,
    batch: int,
    min_axis_overlap: float | None = None,
) -> ViewParams:
    """Draw ``batch`` view pairs for source sub-volumes of ``volume_shape`` (D, H, W).

    Box sizes are ``patch_vox * U(scale_range)`` per axis and view (shrunk to the volume if it is
    smaller); boxes lie inside the volume; flips per axis with ``flip_p``; quarter turns uniform in
    {0..3} when ``config.rotate90`` (needs a square in-plane patch). ``min_axis_overlap``: per-axis
    overlap as a fraction of the larger box (None = ``config.min_axis_overlap`` if that field
    exists, else 0.25). All draws use ``generator`` (CPU); the result lives on the CPU.
    """
    config = config or ViewConfig()
    patch = tuple(int(p) for p in config.patch_vox)
    if len(volume_shape) != 3 or min(volume_shape) < 1:
        raise ValueError(f"volume_shape must be 3 positive sizes (D, H, W), got {tuple(volume_shape)}")
    if config.rotate90 and patch[1] != patch[2]:
        raise ValueError(f"rotate90 needs a square in-plane patch, got patch_vox={patch}")
    min_axis = _axis_overlap(config, min_axis_overlap)
    vol = torch.tensor(volume_shape, dtype=torch.float64)
    lo, size = _draw_boxes(vol, torch.tensor(patch, dtype=torch.float64), config, generator, batch, min_axis)
    flips = torch.rand((batch, 2, 3), generator=generator) < config.flip_p
    if config.rotate90:
        rot = torch.randint(0, 4, (batch, 2), generator=generator)
    else:
        rot = torch.zeros((batch, 2), dtype=torch.int64)
    return ViewParams(lo.float(), size.float(), flips, rot, patch)


def exact_affine_grid(m: Tensor, t: Tensor, size: tuple[int, int, int], align_corners: bool) -> Tensor:
    """Sampling grid ``g = m @ s + t`` for output ``size`` (d, h, w), built with element-wise ops.

    m: (N, 3, 3), t: (N, 3), both in (z, y, x) order; s are the output's normalised coordinates.
    Returns (N, d, h, w, 3) float32 in grid_sample's (x, y, z) order. Unlike ``F.affine_grid`` it
    uses no matmul, so autocast / TF32 never lower its precision.
    """
    m, t = m.float(), t.float()
    axes = [_linspace(n, align_corners, m.device) for n in size]
    z = axes[0].view(1, -1, 1, 1)
    y = axes[1].view(1, 1, -1, 1)
    x = axes[2].view(1, 1, 1, -1)
    comps = []
    for i in (2, 1, 0):  # grid_sample wants (x, y, z)
        r = m[:, i].view(-1, 3, 1, 1, 1)
        comps.append(r[:, 0] * z + r[:, 1] * y + r[:, 2] * x + t[:, i].view(-1, 1, 1, 1))
    return torch.stack(comps, dim=-1)


def _linspace(n: int, align_corners: bool, device: torch.device) -> Tensor:
    if n <= 1:
        return torch.zeros(max(n, 1), device=device)
    if align_corners:
        return torch.linspace(-1.0, 1.0, n, device=device)
    return (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1


def render_grids(params: ViewParams, volume_shape: tuple[int, int, int], device: torch.device) -> Tensor:
    """(B, 2 * D, H, W, 3) grid rendering view a (first D slices) then view b from the source."""
    p = params.on(device)
    a = p.view_matrices()  # (B, 2, 3, 3)
    inv = [1.0 / n for n in volume_shape]
    scale = torch.stack([p.box_size[..., i].float() * inv[i] for i in range(3)], -1)  # half-extent
    centre = p.box_lo.float() + p.box_size.float() / 2
    trans = torch.stack([2 * centre[..., i] * inv[i] - 1 for i in range(3)], -1)
    m = (scale.unsqueeze(-1) * a).flatten(0, 1)
    grid = exact_affine_grid(m, trans.flatten(0, 1), p.patch_vox, align_corners=False)
    b = p.batch
    return grid.view(b, 2, *grid.shape[1:]).flatten(1, 2)


def render_views(
    volumes: Tensor,
    params: ViewParams,
    intensity: bool = True,
    config: ViewConfig | None = None,
    generator: torch.Generator | None = None,
    units_per_hu: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Render both views of each sample: volumes (B, C, D, H, W) -> two (B, C, *patch_vox) tensors.

    One trilinear ``grid_sample`` (align_corners=False, border padding) renders both views on the
    volumes' device, in float32. ``intensity=True`` then applies the per-view intensity
    augmentations of ``config`` (see ``view_intensity.py``), which never move anatomy; ``units_per_hu``
    converts their HU-valued strengths to the volumes' normalised units.
    """
    if volumes.dim() != 5 or volumes.shape[0] != params.batch:
        raise ValueError(f"volumes must be (B={params.batch}, C, D, H, W), got {tuple(volumes.shape)}")
    x = volumes.float()
    grid = render_grids(params, tuple(x.shape[2:]), x.device)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    d = params.patch_vox[0]
    view_a, view_b = out[:, :, :d].contiguous(), out[:, :, d:].contiguous()
    if not intensity:
        return view_a, view_b
    both = augment_intensity(torch.cat([view_a, view_b]), config or ViewConfig(), generator, units_per_hu)
    return both[: params.batch], both[params.batch :]
