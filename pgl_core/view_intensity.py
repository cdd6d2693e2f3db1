"""Per-view intensity augmentations for PGL (PGL.md, Views): they change values, never geometry.

Every op works on a batch (N, C, D, H, W) on its own device with per-sample random parameters and
no Python branching on data (samples not selected get the identity), so one call augments a whole
batch of views. Order: Gaussian noise, Gaussian blur, brightness/contrast, gamma.

- noise: p ``noise_p``, std U(0, ``noise_std_hu``) HU (times ``units_per_hu``), additive.
- blur: p ``blur_p``, sigma U(``blur_sigma``) voxels on every axis, separable depthwise conv3d,
  replicate padding.
- brightness/contrast: p ``contrast_p``, values multiplied by U(``contrast_range``) (on z-scored
  data this scales contrast about the dataset mean).
- gamma: p ``gamma_p``, per sample rescale to [0, 1] by its min/max, power U(``gamma_range``),
  back to the original range (so the sample's min and max are kept).

Parameters are drawn from the given CPU generator; full-size noise is drawn on the data's device
from a generator seeded by it, so results are reproducible per (generator state, device).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pgl_core.config import ViewConfig


def _device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _draw_all(generator: torch.Generator | None, n: int, config: ViewConfig, device,
              units_per_hu: float = 1.0) -> list[tuple[Tensor, Tensor]]:
    """Per op (noise, blur, contrast, gamma): (apply mask (n,) bool, value (n,) float32) on ``device``.

    One (8, n) draw and one non-blocking host-to-device copy for the whole batch.
    """
    if generator is None:
        u = torch.rand((8, n), device=device)
    else:
        u = torch.rand((8, n), generator=generator).to(device, non_blocking=True)
    specs = [
        (config.noise_p, 0.0, config.noise_std_hu * units_per_hu),
        (config.blur_p, *config.blur_sigma),
        (config.contrast_p, *config.contrast_range),
        (config.gamma_p, *config.gamma_range),
    ]
    return [(u[2 * i] < p, lo + (hi - lo) * u[2 * i + 1]) for i, (p, lo, hi) in enumerate(specs)]


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1, 1)


def add_noise(x: Tensor, apply: Tensor, std: Tensor, generator: torch.Generator | None) -> Tensor:
    """x + N(0, std^2) on selected samples; x (N, C, D, H, W), apply/std (N,)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    std = torch.where(apply, std.clamp(min=0), torch.zeros_like(std))
    return x + _per_sample(std) * noise


def gaussian_kernels(sigma: Tensor, apply: Tensor, radius: int) -> Tensor:
    """(N, 2 * radius + 1) normalised 1-D Gaussians; a unit impulse where ``apply`` is False."""
    k = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    w = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    w = w / w.sum(-1, keepdim=True)
    impulse = (k == 0).to(torch.float32).expand_as(w)
    return torch.where(apply[:, None], w, impulse)


def gaussian_blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Separable blur of x (N, C, D, H, W) with one 1-D kernel (N, K) per sample, K odd."""
    n, c = x.shape[:2]
    r = kernels.shape[1] // 2
    w = kernels.to(x.dtype).repeat_interleave(c, dim=0)  # (N * C, K)
    y = x.reshape(1, n * c, *x.shape[2:])
    for axis in range(3):
        shape = [n * c, 1, 1, 1, 1]
        shape[2 + axis] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        y = F.conv3d(F.pad(y, pad, mode="replicate"), w.view(shape), groups=n * c)
    return y.view_as(x)


def scale_values(x: Tensor, apply: Tensor, factor: Tensor) -> Tensor:
    """Multiply selected samples by ``factor`` (N,)."""
    return x * _per_sample(torch.where(apply, factor, torch.ones_like(factor)))


def gamma(x: Tensor, apply: Tensor, g: Tensor, eps: float = 1e-7) -> Tensor:
    """Gamma ``g`` (N,) on [0, 1]-rescaled values of selected samples, mapped back to their range."""
    flat = x.flatten(1)
    lo = _per_sample(flat.amin(1))
    span = _per_sample(flat.amax(1)) - lo
    unit = ((x - lo) / (span + eps)).clamp(0.0, 1.0)
    out = unit.pow(_per_sample(g)) * span + lo
    return torch.where(_per_sample(apply), out, x)


def augment_intensity(x: Tensor, config: ViewConfig, generator: torch.Generator | None = None,
                      units_per_hu: float = 1.0) -> Tensor:
    """Apply noise, blur, brightness/contrast and gamma to x (N, C, D, H, W) float; same shape.
    ``units_per_hu``: normalised units per HU of ``x`` (``IntensityNorm.units_per_hu``), so that
    HU-valued settings mean HU whatever the normalisation."""
    (noise_on, std), (blur_on, sigma), (scale_on, factor), (gamma_on, g) = _draw_all(
        generator, x.shape[0], config, x.device, units_per_hu
    )
    x = add_noise(x, noise_on, std, _device_generator(generator, x.device))
    radius = max(1, int(math.ceil(3 * max(config.blur_sigma))))
    x = gaussian_blur(x, gaussian_kernels(sigma, blur_on, radius))
    x = scale_values(x, scale_on, factor)
    return gamma(x, gamma_on, g)
