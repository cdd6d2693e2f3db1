"""The PGL module: online and momentum-target networks, global and local heads, one loss step.

Layout of the module (names matter for checkpoints):

- ``online``: ModuleDict with ``backbone`` (:class:`ResidualUNet`, decoder built only as deep as
  the local levels need), ``global_proj`` (GAP -> :class:`MLPHead`) when the global loss is on,
  ``local_proj`` (ModuleDict level -> :class:`LocalHead`) when the local loss is on.
- ``predictor``: ModuleDict with ``global`` and ``local`` (per level) predictors, online only.
- ``target``: a deep copy of ``online`` with ``requires_grad=False``, updated by EMA only.

Forward (PGL.md, Networks and losses): both views go through the online network as one batch
``cat([a, b])`` and through the target once under ``torch.no_grad``. Global loss: mean of
``byol_loss(pred(a), target(b))`` and ``byol_loss(pred(b), target(a))``. Local loss per level:
dense projections (and online predictions) on each view's own grid, then aligned with
``align.overlap_grids`` and compared voxel-wise, symmetrised the same way; levels are averaged
[ours]. ``loss = loss_global + local_weight * loss_local`` over the parts the mode enables.
Levels: ``bottleneck`` (last encoder stage) and ``decoder_s4`` (decoder level at in-plane stride 4).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from pgl_core.align import default_out_size, overlap_grids, sample_grid
from pgl_core.config import LossConfig, ModelConfig
from pgl_core.ema import update_momentum
from pgl_core.losses import byol_loss, local_loss
from pgl_core.nets.heads import LocalHead, MLPHead
from pgl_core.levels import LEVELS, level_geometry
from pgl_core.nets.unet import ResidualUNet, decoder_depth_for_stride
from pgl_core.views import ViewParams



class PGLModel(nn.Module):
    """PGL pretraining model; see the module docstring. ``patch_vox`` is the (D, H, W) view size.

    ``head_norm``: "batch" (BYOL) or "layer" for the projector / predictor hidden layers.
    """

    def __init__(
        self, model_cfg: ModelConfig, loss_cfg: LossConfig, patch_vox: tuple[int, int, int], head_norm: str = "batch"
    ) -> None:
        super().__init__()
        self.mode = loss_cfg.mode
        self.local_weight = float(loss_cfg.local_weight)
        self.use_global = self.mode in ("pgl", "global")
        self.levels = tuple(loss_cfg.local_levels) if self.mode in ("pgl", "local") else ()
        if "auto" in self.levels:
            raise ValueError("loss.local_levels 'auto' must be resolved for the run's views first "
                             "(pgl_core.levels.resolve_local_levels)")
        unknown = [lv for lv in self.levels if lv not in LEVELS]
        if unknown or (self.mode == "local" and not self.levels):
            raise ValueError(f"local_levels {loss_cfg.local_levels} invalid for mode {self.mode}; choose from {LEVELS}")
        self.patch_vox = tuple(int(p) for p in patch_vox)
        self.level_cells = {lv: self._cells(model_cfg, lv) for lv in self.levels}
        depth = decoder_depth_for_stride(model_cfg, 4) if "decoder_s4" in self.levels else 0
        self.decoder_depth = depth
        self.online = nn.ModuleDict({"backbone": ResidualUNet(model_cfg, decoder_depth=depth)})
        self.predictor = nn.ModuleDict()
        dim, hidden = model_cfg.projector_dim, model_cfg.projector_hidden
        if self.use_global:
            self.online["global_proj"] = MLPHead(model_cfg.widths[-1], hidden, dim, head_norm)
            self.predictor["global"] = MLPHead(dim, hidden, dim, head_norm)
        if self.levels:
            lh = model_cfg.local_hidden
            chans = {lv: level_geometry(model_cfg, lv)[0] for lv in self.levels}
            self.online["local_proj"] = nn.ModuleDict(
                {lv: LocalHead(chans[lv], lh, dim, head_norm) for lv in self.levels}
            )
            self.predictor["local"] = nn.ModuleDict({lv: LocalHead(dim, lh, dim, head_norm) for lv in self.levels})
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)

    def _cells(self, model_cfg: ModelConfig, level: str) -> tuple[int, int, int]:
        stride = level_geometry(model_cfg, level)[1]
        if any(p % s for p, s in zip(self.patch_vox, stride)):
            raise ValueError(f"patch_vox {self.patch_vox} is not divisible by the {level} stride {stride}")
        return tuple(p // s for p, s in zip(self.patch_vox, stride))  # type: ignore[return-value]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Online network and predictor parameters (what the optimiser updates)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _features(self, nets: nn.ModuleDict, x: Tensor) -> dict[str, Tensor]:
        feats = nets["backbone"].encode(x)
        out = {"bottleneck": feats[-1]}
        if self.decoder_depth:
            out["decoder_s4"] = nets["backbone"].decode(feats)[-1]
        return out

    def _global_loss(self, on: dict[str, Tensor], tg: dict[str, Tensor], b: int) -> Tensor:
        p = self.predictor["global"](self.online["global_proj"](on["bottleneck"].mean(dim=(2, 3, 4))))
        with torch.no_grad():
            z = self.target["global_proj"](tg["bottleneck"].mean(dim=(2, 3, 4)))
        return 0.5 * (byol_loss(p[:b], z[b:]) + byol_loss(p[b:], z[:b]))

    def _local_level(self, level: str, on: Tensor, tg: Tensor, params: ViewParams, out_size) -> Tensor:
        b = params.batch
        q = self.predictor["local"][level](self.online["local_proj"][level](on))
        with torch.no_grad():
            z = self.target["local_proj"][level](tg)
        cells = self.level_cells[level]
        grid_a, grid_b = overlap_grids(params, cells, out_size or default_out_size(cells))
        c = q.shape[1]
        view_a = sample_grid(torch.cat([q[:b], z[:b]], dim=1), grid_a)
        view_b = sample_grid(torch.cat([q[b:], z[b:]], dim=1), grid_b)
        return 0.5 * (local_loss(view_a[:, :c], view_b[:, c:]) + local_loss(view_b[:, :c], view_a[:, c:]))

    def forward(
        self,
        view_a: Tensor,
        view_b: Tensor,
        params: ViewParams,
        align_sizes: dict[str, tuple[int, int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """Views (B, C, *patch_vox) -> {"loss", "loss_global", "loss_local"} float32 scalars.

        ``align_sizes``: optional common-grid size per local level (default: the level's cells).
        """
        if view_a.shape != view_b.shape or tuple(view_a.shape[2:]) != self.patch_vox:
            raise ValueError(
                f"views must both be (B, C, {self.patch_vox}), got {tuple(view_a.shape)}, {tuple(view_b.shape)}"
            )
        b = view_a.shape[0]
        x = torch.cat([view_a, view_b])
        params = params.on(x.device)
        on = self._features(self.online, x)
        with torch.no_grad():
            tg = self._features(self.target, x)
        zero = torch.zeros((), device=x.device)
        loss_global = self._global_loss(on, tg, b) if self.use_global else zero
        loss_local = zero
        if self.levels:
            sizes = align_sizes or {}
            parts = [self._local_level(lv, on[lv], tg[lv], params, sizes.get(lv)) for lv in self.levels]
            loss_local = torch.stack(parts).mean()
        total = loss_global + self.local_weight * loss_local if self.levels else loss_global
        return {"loss": total, "loss_global": loss_global, "loss_local": loss_local}

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """EMA step of the target towards the online network (backbone and projectors)."""
        update_momentum(self.online, self.target, tau)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """Online backbone weights (encoder + built decoder levels), loadable into SegmentationUNet."""
        return {k: v.detach().clone() for k, v in self.online["backbone"].state_dict().items()}
