"""Residual 3D U-Net backbone shared by PGL pretraining and segmentation fine-tuning.

Encoder stage ``i``: a 3x3x3 conv with stride ``config.strides[i]`` (stage 0 is the stem, usually
stride 1; the next is anisotropic (1, 2, 2) for thin-slab patches) to ``config.widths[i]``
channels, then ``blocks_per_stage`` residual blocks. Decoder level ``j`` (0 = coarsest) goes from
stage ``L-1-j`` to stage ``L-2-j``: a transposed conv undoing that stride, concatenation with the
skip, one residual block. Every conv is followed by a norm (InstanceNorm3d(affine=True) by default)
and LeakyReLU(0.01).

Module names are shared: :class:`SegmentationUNet` is a :class:`ResidualUNet` with a full decoder
plus ``seg_head``, so a pretrained backbone's ``state_dict`` loads into it by name
(:func:`pgl_core.adapt.load_encoder_into`, checked against the pretraining contract). A pretraining
backbone may build only the first ``decoder_depth`` decoder levels (the ones its losses use, so no
parameter sits unused under DDP); the deeper levels then start from random init downstream.
Layouts: inputs (B, C_in, D, H, W); stage ``i`` output (B, widths[i], D / s_i, H / s_i, W / s_i)
with ``s_i`` the cumulative stride.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgl_core.config import ModelConfig


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer for 3-D maps: instance (affine), batch or group (8 groups at most)."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; choose instance, batch or group")


def conv_norm_act(c_in: int, c_out: int, stride, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        make_norm(norm, c_out),
        nn.LeakyReLU(0.01, inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3x3 conv-norm layers plus identity (or 1x1x1 projection) skip, then LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        self.conv1 = conv_norm_act(c_in, c_out, 1, norm)
        self.conv2 = nn.Sequential(nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), make_norm(norm, c_out))
        self.skip = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv3d(c_in, c_out, 1, bias=False), make_norm(norm, c_out))
        )
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class Encoder(nn.Module):
    """Stages of (strided conv, residual blocks); returns every stage's output."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        stages, c_in = [], config.in_channels
        for width, stride in zip(config.widths, config.strides):
            blocks = [ResidualBlock(width, width, config.norm) for _ in range(config.blocks_per_stage)]
            stages.append(nn.Sequential(conv_norm_act(c_in, width, tuple(stride), config.norm), *blocks))
            c_in = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """``depth`` levels of (transposed conv up, concat skip, residual block), coarse to fine."""

    def __init__(self, config: ModelConfig, depth: int) -> None:
        super().__init__()
        w, s = config.widths, config.strides
        top = len(w) - 1
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(w[top - j], w[top - j - 1], tuple(s[top - j]), stride=tuple(s[top - j]), bias=False)
            for j in range(depth)
        )
        self.blocks = nn.ModuleList(
            ResidualBlock(2 * w[top - j - 1], w[top - j - 1], config.norm) for j in range(depth)
        )

    def forward(self, feats: list[Tensor], depth: int | None = None) -> list[Tensor]:
        depth = len(self.ups) if depth is None else depth
        x, out = feats[-1], []
        for j in range(depth):
            x = self.blocks[j](torch.cat([self.ups[j](x), feats[-2 - j]], dim=1))
            out.append(x)
        return out


def cumulative_strides(config: ModelConfig) -> list[tuple[int, int, int]]:
    """Cumulative (D, H, W) stride of each encoder stage's output."""
    out, cur = [], (1, 1, 1)
    for s in config.strides:
        cur = tuple(a * b for a, b in zip(cur, s))
        out.append(cur)
    return out  # type: ignore[return-value]


def _check_config(config: ModelConfig) -> None:
    if len(config.widths) != len(config.strides) or len(config.widths) < 2:
        raise ValueError(
            f"model widths {config.widths} and strides {config.strides} need equal lengths >= 2"
        )


class ResidualUNet(nn.Module):
    """Backbone: ``encode`` (list of stage maps) and ``decode`` (decoder maps, coarse to fine).

    ``decoder_depth``: decoder levels built (None = all ``len(widths) - 1``, full resolution).
    """

    def __init__(self, config: ModelConfig, decoder_depth: int | None = None) -> None:
        super().__init__()
        _check_config(config)
        full = len(config.widths) - 1
        depth = full if decoder_depth is None else int(decoder_depth)
        if not 0 <= depth <= full:
            raise ValueError(f"decoder_depth must be in [0, {full}], got {decoder_depth}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config, depth)

    @property
    def decoder_depth(self) -> int:
        return len(self.decoder.ups)

    def stage_strides(self) -> list[tuple[int, int, int]]:
        return cumulative_strides(self.config)

    def decoder_strides(self) -> list[tuple[int, int, int]]:
        """Cumulative stride of each built decoder level's output, coarse to fine."""
        cum = self.stage_strides()
        return [cum[len(cum) - 2 - j] for j in range(self.decoder_depth)]

    def encode(self, x: Tensor) -> list[Tensor]:
        """x (B, C_in, D, H, W) -> one (B, widths[i], ...) map per stage (last = bottleneck)."""
        return self.encoder(x)

    def decode(self, feats: list[Tensor], depth: int | None = None) -> list[Tensor]:
        """Encoder maps -> the first ``depth`` (default all built) decoder maps, coarse to fine."""
        return self.decoder(feats, depth)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.encode(x)
        dec = self.decode(feats)
        return dec[-1] if dec else feats[-1]


def decoder_depth_for_stride(config: ModelConfig, inplane_stride: int) -> int:
    """Decoder levels needed to reach the stage whose cumulative in-plane stride is ``inplane_stride``."""
    cum = cumulative_strides(config)
    for i, s in enumerate(cum[:-1]):
        if s[1] == inplane_stride and s[2] == inplane_stride:
            return len(cum) - 1 - i
    raise ValueError(f"no decoder level with in-plane stride {inplane_stride}; stage strides are {cum}")


class SegmentationUNet(ResidualUNet):
    """Full-resolution segmentation net: backbone + ``seg_head`` (1x1x1 conv) -> (B, K, D, H, W) logits."""

    def __init__(self, config: ModelConfig, num_classes: int) -> None:
        super().__init__(config, decoder_depth=None)
        self.seg_head = nn.Conv3d(config.widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.seg_head(super().forward(x))

