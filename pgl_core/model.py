"""Entry point for the PGL networks: the backbone and segmentation net live in ``pgl_core.nets``.

Import from here or from ``pgl_core.nets``; both name the same classes.
"""

from pgl_core.nets.heads import LocalHead, MLPHead
from pgl_core.nets.unet import (
    ResidualUNet,
    SegmentationUNet,
    cumulative_strides,
    decoder_depth_for_stride,
)

__all__ = [
    "LocalHead",
    "MLPHead",
    "ResidualUNet",
    "SegmentationUNet",
    "cumulative_strides",
    "decoder_depth_for_stride",
]
