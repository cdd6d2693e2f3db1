"""Fine-tuning augmentation (:class:`pgl_core.finetune_config.FinetuneAugConfig`) on the training
device: anatomy-respecting spatial transforms of image and label together, then intensity changes
in HU. Randomness is drawn from a CPU generator first (parameters), then applied (TorchIO's split).

Layouts: image ``(B, 1, D, H, W)`` float HU, label ``(B, D, H, W)`` integer class ids; array axes
(z, y, x) of the canonical LPS store, so x (the last axis) is the patient's left-right.

A left-right flip mirrors anatomy: the left kidney lands where the right one was. With
``swap_lateral_labels`` the label values of left/right pairs (found by name,
:func:`lateral_swap_table`) are exchanged on flipped samples, so the labels stay true.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor

from pgl_core.finetune_config import FinetuneAugConfig
from pgl_core.view_intensity import gaussian_blur, gaussian_kernels

_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l", "lt": "rt", "rt": "lt"}


def _swapped_name(name: str) -> tuple[str, str] | None:
    """(normalised name, normalised name with left/right exchanged), or None without a side token."""
    tokens = [t for t in re.split(r"[\s_.\-]+", name.strip().lower()) if t]
    if not any(t in _SIDE for t in tokens):
        return None
    return "_".join(tokens), "_".join(_SIDE.get(t, t) for t in tokens)


def lateral_swap_table(label_names: dict[int, str]) -> Tensor:
    """Lookup table (num_classes,) int64: value -> the value of its left/right twin (itself when it has
    none). ``kidney_left`` <-> ``kidney_right``, ``Adrenal gland L`` <-> ``Adrenal gland R``."""
    n = max(label_names) + 1 if label_names else 1
    table = torch.arange(n, dtype=torch.int64)
    by_name = {}
    for value, name in label_names.items():
        pair = _swapped_name(str(name))
        if pair is not None:
            by_name[pair[0]] = int(value)
    for value, name in label_names.items():
        pair = _swapped_name(str(name))
        if pair is not None and pair[1] in by_name:
            table[int(value)] = by_name[pair[1]]
    return table


def _uniform(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def draw_params(aug: FinetuneAugConfig, batch: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Every random choice of one batch (CPU tensors, (B,) or (3, B)); apply with :func:`apply_params`."""
    u = torch.rand((13, batch), generator=generator)
    flips = u[0:3] < torch.tensor(aug.flip_p, dtype=torch.float32)[:, None]
    return {
        "flip": flips,
        "rotate": torch.where(u[3] < aug.rotate_p, _uniform(u[4], -aug.rotate_deg, aug.rotate_deg), 0.0),
        "scale": torch.where(u[5] < aug.scale_p, _uniform(u[6], *aug.scale_range), 1.0),
        "noise_std_hu": torch.where(u[7] < aug.noise_p, _uniform(u[8], *aug.noise_std_hu), 0.0),
        "blur_on": u[9] < aug.blur_p, "blur_sigma": _uniform(u[10], *aug.blur_sigma),
        "shift_hu": torch.where(u[11] < aug.brightness_p, _uniform(u[12], -aug.brightness_hu, aug.brightness_hu),
                                0.0),
        "contrast": torch.where(torch.rand(batch, generator=generator) < aug.contrast_p,
                                _uniform(torch.rand(batch, generator=generator), *aug.contrast_range), 1.0),
        "noise_seed": torch.randint(0, 2**62, (1,), generator=generator),
    }


def _flip(image: Tensor, label: Tensor, flips: Tensor, swap: Tensor | None) -> tuple[Tensor, Tensor]:
    for axis in range(3):
        on = flips[axis].to(image.device)
        if not bool(on.any()):
            continue
        image = torch.where(on.view(-1, 1, 1, 1, 1), image.flip(2 + axis), image)
        flipped = label.flip(1 + axis)
        if axis == 2 and swap is not None:
            flipped = swap.to(label.device)[flipped.long()].to(label.dtype)
        label = torch.where(on.view(-1, 1, 1, 1), flipped, label)
    return image, label


def _rotate_scale(image: Tensor, label: Tensor, angle_deg: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """In-plane rotation + isotropic zoom about the patch centre (image trilinear, label nearest);
    voxels coming from outside the patch take the patch minimum (air) and label 0."""
    if bool((angle_deg == 0).all()) and bool((scale == 1).all()):
        return image, label
    b = image.shape[0]
    a = angle_deg.to(torch.float32) * (math.pi / 180.0)
    s = 1.0 / scale.to(torch.float32)
    theta = torch.zeros((b, 3, 4))
    # affine_grid's 5-D convention: rows / columns are (x, y, z) = (W, H, D); in-plane = (x, y)
    theta[:, 0, 0] = torch.cos(a) * s
    theta[:, 0, 1] = -torch.sin(a) * s
    theta[:, 1, 0] = torch.sin(a) * s
    theta[:, 1, 1] = torch.cos(a) * s
    theta[:, 2, 2] = s
    grid = F.affine_grid(theta.to(image.device), list(image.shape), align_corners=False)
    floor = image.amin(dim=(1, 2, 3, 4), keepdim=True)
    moved = F.grid_sample(image - floor, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + floor
    lab = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return moved, lab[:, 0].round().to(label.dtype)


def apply_params(image: Tensor, label: Tensor, params: dict[str, Tensor], swap: Tensor | None = None,
                 centre_hu: float = 40.0) -> tuple[Tensor, Tensor]:
    """Apply drawn parameters: flips (+ lateral label swap on x), rotation / zoom, then noise, blur,
    brightness and contrast in HU. image (B, 1, D, H, W) float HU, label (B, D, H, W)."""
    dev = image.device
    image, label = _flip(image, label, params["flip"], swap)
    image, label = _rotate_scale(image, label, params["rotate"], params["scale"])
    std = params["noise_std_hu"].to(dev).view(-1, 1, 1, 1, 1)
    if bool((std > 0).any()):
        gen = torch.Generator(device=dev).manual_seed(int(params["noise_seed"]))
        image = image + std * torch.randn(image.shape, generator=gen, device=dev, dtype=image.dtype)
    if bool(params["blur_on"].any()):
        sigma = params["blur_sigma"].to(dev)
        radius = max(1, int(math.ceil(3 * float(sigma.max()))))
        image = gaussian_blur(image, gaussian_kernels(sigma, params["blur_on"].to(dev), radius))
    shift = params["shift_hu"].to(dev).view(-1, 1, 1, 1, 1)
    factor = params["contrast"].to(dev).view(-1, 1, 1, 1, 1)
    return (image - centre_hu) * factor + centre_hu + shift, label


def augment_segmentation(image: Tensor, label: Tensor, aug: FinetuneAugConfig, generator: torch.Generator,
                         swap: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Draw then apply one batch's augmentation (see module doc). ``swap``: :func:`lateral_swap_table`
    (used when ``aug.swap_lateral_labels``)."""
    params = draw_params(aug, image.shape[0], generator)
    return apply_params(image, label, params, swap if aug.swap_lateral_labels else None, aug.contrast_centre_hu)
