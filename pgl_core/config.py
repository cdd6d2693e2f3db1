"""The one typed configuration that decides results.

Every field that changes what a run computes lives here, with a docstring. Infrastructure
(addresses, credentials, pools) lives in the environment and in ``deploy/``, never here.
The whole object is saved in every checkpoint and logged with every run.

Load with :func:`load_config` (a preset, then an optional YAML file, then ``key=value``
overrides). Unknown keys are errors that name the key.

Conventions: ``*_vox`` sizes are voxel counts in array order (z, y, x); ``*_mm`` spacings are in
millimetres in ITK order (x, y, z).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from pgl_core.config_base import Section as _Section
from pgl_core.config_base import Triple, TripleF
from pgl_core.finetune_config import FinetuneAugConfig, FinetuneConfig
from storage.plan import PlanRequest

__all__ = ["PGLConfig", "ConfigError", "load_config", "FinetuneConfig", "FinetuneAugConfig", "Triple", "TripleF"]


class IntensityConfig(_Section):
    """Training-time intensity mapping of stored HU (recorded in the pretraining contract)."""

    hu_window: tuple[float, float] = Field(
        (-160.0, 240.0), description="HU clip range before normalisation (zscore, minmax; foreground "
        "takes its clip range from the data). The paper's is [-1024, 325] with zscore.")
    normalisation: Literal["foreground", "zscore", "minmax"] = Field(
        "minmax", description="Default minmax on the soft-tissue window, the best measured on the "
        "phantoms (docs/study.md: BTCV 0.76 vs 0.67 foreground, LiTS 0.63 vs 0.57, one seed each). "
        "foreground (nnU-Net's CT scheme): clip to the body voxels' "
        "foreground_percentiles, then z-score with the body mean / std; zscore: clip to hu_window, "
        "(x - mean) / std over whole volumes (air included); minmax: hu_window to [0, 1].")
    foreground_percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="Body-voxel percentiles that clip HU before the foreground z-score.")
    mean_hu: float | None = Field(None, description="Override the z-score mean (None = from the manifests).")
    std_hu: float | None = Field(None, description="Override the z-score std (None = from the manifests).")


class ViewConfig(_Section):
    """PGL two-view sampling (PGL.md, Views)."""

    patch_vox: Triple = Field((16, 96, 96), description="View size (D, H, W) fed to the network.")
    scale_range: tuple[float, float] = Field((1.1, 1.4), description="Crop box / patch size ratio, per axis.")
    min_overlap: float = Field(0.1, ge=0.0, lt=1.0, description="Minimum overlap volume / box volume.")
    min_axis_overlap: float = Field(
        0.25, ge=0, lt=1,
        description="Minimum per-axis overlap / larger box extent; keeps the overlap resolvable at the "
        "coarsest feature level.",
    )
    max_tries: int = Field(20, ge=1, description="Redraws before the offset is shrunk to force overlap.")
    flip_p: float = Field(0.5, ge=0, le=1, description="Per-axis flip probability.")
    rotate90: bool = Field(False, description="In-plane (H, W) 90-degree rotations.")
    noise_p: float = Field(0.1, ge=0, le=1, description="Gaussian noise probability.")
    noise_std_hu: float = Field(
        25.0, ge=0, description="Noise std drawn from U(0, this) HU (CT noise is ~10-20 HU; organs "
        "differ by 10-60 HU, so stronger noise teaches invariance to what segmentation needs).")
    blur_p: float = Field(0.2, ge=0, le=1, description="Gaussian blur probability.")
    blur_sigma: tuple[float, float] = Field((0.5, 1.0), description="Blur sigma range in voxels.")
    contrast_p: float = Field(0.5, ge=0, le=1, description="Contrast multiplier probability.")
    contrast_range: tuple[float, float] = Field(
        (0.9, 1.1), description="Multiplier on normalised values (about the normalisation mean): 0.9-1.1 "
        "moves soft tissue by a few HU relative to fat, keeping organ contrast.")
    gamma_p: float = Field(0.0, ge=0, le=1, description="Gamma probability (on [0, 1]-rescaled values; off "
                           "by default: gamma 0.7-1.5 over the HU range moves soft tissue by ~±250 HU).")
    gamma_range: tuple[float, float] = Field((0.7, 1.5), description="Gamma range.")


class ModelConfig(_Section):
    """Residual 3D U-Net-style encoder with a light decoder."""

    in_channels: int = Field(1, ge=1, description="Input channels.")
    widths: tuple[int, ...] = Field((32, 64, 128, 256, 320), description="Channels per encoder stage.")
    strides: tuple[Triple, ...] = Field(
        ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        description="Downsampling stride (D, H, W) entering each stage (first is the stem).",
    )
    blocks_per_stage: int = Field(1, ge=1, description="Residual blocks per encoder stage.")
    norm: Literal["instance", "batch", "group"] = Field("instance", description="Normalisation layer.")
    projector_hidden: int = Field(1024, ge=1, description="Hidden width of global projector/predictor MLPs.")
    projector_dim: int = Field(256, ge=1, description="Output width of projectors and predictors.")
    local_hidden: int = Field(256, ge=1, description="Hidden width of the 1x1x1 local projector/predictor.")


class LossConfig(_Section):
    """PGL objective: L = L_global + local_weight * L_local."""

    mode: Literal["pgl", "global", "local"] = Field("pgl", description="pgl = both; global = BYOL; local only.")
    local_weight: float = Field(1.0, ge=0, description="lambda on the local loss.")
    local_levels: tuple[str, ...] = Field(
        ("auto",), description="Feature levels with a local loss: 'bottleneck' and/or 'decoder_s4', or "
        "'auto': every level whose aligned view overlap spans at least local_min_cells cells per axis "
        "(median over sampled view pairs), else the finest (pgl_core.levels; recorded in the contract).")
    local_min_cells: float = Field(2.0, gt=0, description="Overlap extent in cells per axis a level needs "
                                   "for 'auto' local_levels.")


class OptimConfig(_Section):
    """Optimiser and schedules."""

    name: Literal["adamw", "lars", "sgd"] = Field("adamw", description="Optimiser.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-5, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD/LARS momentum.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps before the cosine decay.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of the peak.")
    grad_clip: float = Field(3.0, ge=0, description="Max global grad norm (0 disables).")
    ema_tau: float | None = Field(
        None, ge=0, le=1, description="EMA momentum at step 0; rises to 1 on a cosine. None = fitted to the "
        "run length: 1 - 0.04 * train.steps ** -0.2 (0.987 at 250 steps, 0.990 at 1e3, 0.996 at 1e5; "
        "pgl_core.ema.base_tau_for_steps).")


class TrainConfig(_Section):
    """Pretraining loop."""

    steps: int = Field(1000, ge=1, description="Optimisation steps.")
    batch_size: int = Field(8, ge=1, description="Global batch (split across ranks).")
    seed: int = Field(0, description="Seed for weights, sampling and augmentation.")
    loader_workers: int = Field(
        10, ge=0, description="Data-loader worker processes per rank (a GPU at the paper config needs ~10-12)."
    )
    crops_per_volume: int = Field(4, ge=1, description="Crops drawn per case visit (amortises opens).")
    amp: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 on CUDA, fp32 on CPU.")
    tf32: bool = Field(True, description="Allow TF32 matmuls on CUDA.")
    compile: bool = Field(False, description="torch.compile the model.")
    log_every: int = Field(10, ge=1, description="Steps between metric records.")
    checkpoint_every_steps: int = Field(500, ge=1, description="Checkpoint interval in steps.")
    checkpoint_every_minutes: float = Field(30.0, gt=0, description="Checkpoint interval in minutes.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (older are deleted).")
    max_consecutive_nonfinite: int = Field(
        10, ge=1, description="Abort after this many consecutive steps with a non-finite loss."
    )
    probe_every: int = Field(
        50, ge=0, description="Steps between dense-correspondence probes (pgl_core.probe: true vs "
        "permuted pairs on held-out views, logged as probe_*); 0 = off.")
    probe_pairs: int = Field(8, ge=1, description="Held-out view pairs the probe encodes.")
    probe_dataset: str | None = Field(
        None, description="A labelled dataset among the pretraining datasets: each probe also fits a "
        "voxel-wise linear head on frozen features and logs its Dice (probe_linear_dice).")
    probe_label_cases: int = Field(8, ge=2, description="Labelled cases (one crop each) the linear probe uses.")


class PGLConfig(_Section):
    """Everything that decides results."""

    preprocess: PlanRequest = Field(default_factory=PlanRequest)
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)
    views: ViewConfig = Field(default_factory=ViewConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        "views": {"patch_vox": (16, 32, 32)},
        "model": {
            "widths": (8, 16, 32, 32),
            "strides": ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)),
            "projector_hidden": 64,
            "projector_dim": 32,
            "local_hidden": 32,
        },
        "train": {"steps": 50, "batch_size": 4, "loader_workers": 0, "log_every": 5,
                  "checkpoint_every_steps": 25},
        "optim": {"warmup_steps": 5},
        "finetune": {"steps": 60, "batch_size": 2, "patch_vox": (16, 48, 48), "optimizer": "adamw",
                     "lr": 3e-3, "eval_every": 20, "loader_workers": 0},
    },
}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> dict[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    dotted, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, list):
        value = _listify_to_tuple(value)
    out: dict[str, Any] = {}
    cur = out
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def _listify_to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_listify_to_tuple(v) for v in value)
    return value


def _format_validation(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def add_config_arguments(parser: "argparse.ArgumentParser", preset: bool = True) -> None:
    """``--config FILE``, repeatable ``--set key=value`` and (optionally) ``--preset`` on ``parser``:
    the command-line side of :func:`load_config`, shared by every entry point."""
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML config file (see deploy/configs/).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one config field, e.g. --set train.steps=200 (repeatable).")
    if preset:
        parser.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                            help="Config preset: paper (the defaults) or tiny (tests, demo).")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    preset: str = "paper",
) -> PGLConfig:
    """Build the config: ``preset`` defaults, then the YAML ``path``, then ``overrides``.

    Raises :class:`ConfigError` naming the unknown key or invalid value.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    data: dict[str, Any] = dict(PRESETS[preset])
    origin = f"preset {preset}"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = _deep_merge(data, loaded)
        origin += f" + {p}"
    for item in overrides:
        data = _deep_merge(data, _parse_override(item))
    if overrides:
        origin += " + overrides " + " ".join(overrides)
    try:
        return PGLConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, origin)) from None


def config_to_dict(cfg: PGLConfig) -> dict[str, Any]:
    """Plain JSON-safe dict (tuples become lists), for checkpoints and tracking."""
    return cfg.model_dump(mode="json")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for tracking params)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
