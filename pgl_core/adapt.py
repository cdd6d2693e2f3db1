"""Adapting a pretrained encoder to a segmenter: the compatibility checks and the weight load.

The role of nnssl's adaptation plan. Before fine-tuning from a pretraining output,
:func:`check_pretrain_compat` compares its :class:`~pgl_core.contracts.PretrainContract` with the
run's config (architecture: ``in_channels``, ``widths``, ``strides``, ``blocks_per_stage``,
``norm``; intensity: HU window, normalisation kind, mean / std overrides) and with the dataset's
plan (spacing, orientation: :meth:`~pgl_core.contracts.PretrainContract.plan_problems`); then
:func:`load_encoder_into` loads the weights with no silent partial load: only the segmentation head
and the decoder levels the contract says were not pretrained (:func:`pretrained_decoder_depth`)
may stay at random init. Every mismatch is a :class:`~pgl_core.contracts.ContractMismatch` (a
``ConfigError``: exit status 2 in the CLIs) naming the field, both values and the fix.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from pgl_core.config import ModelConfig, PGLConfig
from pgl_core.contracts import ContractMismatch, PretrainContract, Problem
from pgl_core.nets.unet import SegmentationUNet, decoder_depth_for_stride

ARCH_FIELDS = ("in_channels", "widths", "strides", "blocks_per_stage", "norm")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _yaml(value: Any) -> str:
    return json.dumps(_plain(value)).replace(" ", "")


def _arch_problems(pre: PretrainContract, cfg: PGLConfig) -> list[Problem]:
    out = []
    for name in ARCH_FIELDS:
        want = _plain(pre.architecture.get(name, pre.in_channels if name == "in_channels" else None))
        have = _plain(getattr(cfg.model, name))
        if want != have:
            out.append((f"model.{name}", want, have, f"--set model.{name}={_yaml(want)} (or the preset the "
                        "weights were pretrained with)"))
    return out


def _intensity_problems(pre: PretrainContract, cfg: PGLConfig) -> list[Problem]:
    out = []
    window = [float(v) for v in cfg.intensity.hu_window]
    kind = pre.normalisation.get("kind")
    # a foreground norm's clip range comes from the pretraining data's body percentiles, not the config
    if kind != "foreground" and [float(v) for v in pre.hu_window] != window:
        out.append(("intensity.hu_window", _plain(pre.hu_window), window,
                    f"--set intensity.hu_window={_yaml(pre.hu_window)}"))
    if kind != cfg.intensity.normalisation:
        out.append(("intensity.normalisation", kind, cfg.intensity.normalisation,
                    f"--set intensity.normalisation={kind}"))
    for key in ("mean_hu", "std_hu"):
        have, want = getattr(cfg.intensity, key), pre.normalisation.get(key)
        if have is not None and want is not None and abs(float(have) - float(want)) > 1e-6 * max(1.0, abs(want)):
            out.append((f"intensity.{key}", want, have,
                        f"drop the intensity.{key} override (the weights' value {want} is used)"))
    return out


def check_pretrain_compat(pre: PretrainContract, cfg: PGLConfig, manifest: dict[str, Any], dataset: str,
                          init_uri: str) -> None:
    """Raise :class:`ContractMismatch` (naming ``init_uri``) unless the pretraining contract fits the
    config and the dataset plan: architecture and channel count, spacing
    (``SPACING_RTOL`` relative), orientation, HU window, normalisation kind and any explicit
    mean / std override. All problems are listed at once."""
    problems = _arch_problems(pre, cfg) + pre.plan_problems(manifest, dataset) + _intensity_problems(pre, cfg)
    if problems:
        raise ContractMismatch(f"init {init_uri}", problems)


def pretrained_decoder_depth(pre: PretrainContract) -> int:
    """Decoder levels the pretraining built and trained (0 for bottleneck-only and global modes)."""
    loss = pre.config.get("loss", {})
    if loss.get("mode", pre.mode) not in ("pgl", "local") or "decoder_s4" not in loss.get("local_levels", ()):
        return 0
    model_cfg = ModelConfig(**{k: v for k, v in pre.config["model"].items() if k in ModelConfig.model_fields})
    return decoder_depth_for_stride(model_cfg, 4)


def _may_stay_random(key: str, depth: int) -> bool:
    if key.startswith("seg_head."):
        return True
    parts = key.split(".")
    return parts[0] == "decoder" and len(parts) > 2 and parts[2].isdigit() and int(parts[2]) >= depth


def load_encoder_into(model: SegmentationUNet, state: dict[str, torch.Tensor], pre: PretrainContract,
                      where: str) -> list[str]:
    """Load pretrained backbone weights by name; returns the keys left at random init (seg head and
    the decoder levels the contract says were not pretrained). Anything else missing, any key the
    model lacks and any shape difference raise :class:`ContractMismatch` (naming ``where``) listing
    them; nothing is loaded then."""
    own = model.state_dict()
    depth = pretrained_decoder_depth(pre)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                    if k in own and tuple(v.shape) != tuple(own[k].shape))
    missing = sorted(k for k in own if k not in state)
    bad_missing = [k for k in missing if not _may_stay_random(k, depth)]
    problems = []
    for name, keys in (("unexpected keys (the model lacks them)", unexpected), ("shape mismatches", shapes),
                       ("missing keys", bad_missing)):
        if keys:
            shown = ", ".join(keys[:12]) + (f" ... (+{len(keys) - 12} more)" if len(keys) > 12 else "")
            problems.append((f"weights: {name}", "none", f"{len(keys)}: {shown}",
                             "use a pretraining output made with the same model config (preset), "
                             "or --init random"))
    if problems:
        raise ContractMismatch(where, problems)
    model.load_state_dict(state, strict=False)
    return missing
