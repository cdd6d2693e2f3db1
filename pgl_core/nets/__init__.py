"""Networks: the residual 3D U-Net backbone (``unet``) and the PGL projection heads (``heads``)."""

from pgl_core.nets.heads import LocalHead, MLPHead
from pgl_core.nets.unet import ResidualUNet, SegmentationUNet

__all__ = ["LocalHead", "MLPHead", "ResidualUNet", "SegmentationUNet"]
