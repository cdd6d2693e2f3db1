"""The segmenter model directory contract, and the checks that keep pretrained weights honest.

A fine-tuned segmenter lives in a model directory (``<run output>/model/``)::

    model.pt        SegmentationUNet state dict (CPU tensors)
    contract.json   what the weights expect and where they came from (below)
    split.json      the train / val / test case ids of the run

``contract.json`` (format version 1, kind ``pgl-segmenter``): ``predictor`` ("module:function"
that turns an input file into a label map), ``architecture`` (model config + ``num_classes``),
``in_channels``, ``label_names`` {str(value): name}, ``spacing_mm`` (x, y, z), ``orientation``,
``hu_window``, ``normalisation`` {kind, mean_hu, std_hu}, ``patch_vox`` (z, y, x),
``sw_overlap``, ``init`` ("random" or the pretraining URI), ``pretrain_mode``, ``lineage``,
``split``, ``metrics`` and the full ``config``.

Before fine-tuning from a pretraining output, :func:`check_pretrain_compat` compares the
pretraining contract with the run's config and the dataset's plan, and :func:`load_encoder_into`
loads the weights with no silent partial load. Every mismatch is a :class:`ContractMismatch`
(a ``ConfigError``: exit status 2 in the CLIs) naming the field, both values and the fix.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

from pgl_core.config import ConfigError, ModelConfig, PGLConfig
from pgl_core.contract import PretrainContract
from pgl_core.intensity_norm import IntensityNorm
from pgl_core.nets.unet import SegmentationUNet, decoder_depth_for_stride
from storage import blobs

KIND = "pgl-segmenter"
FORMAT_VERSION = 1
MODEL_FILE, CONTRACT_FILE, SPLIT_FILE = "model.pt", "contract.json", "split.json"
PREDICTOR = "pgl_core.predict:predict_file"
SPACING_RTOL = 1e-3
_ARCH_FIELDS = ("in_channels", "widths", "strides", "blocks_per_stage", "norm")
_REQUIRED = ("architecture", "in_channels", "label_names", "spacing_mm", "orientation", "hu_window",
             "normalisation", "patch_vox")


class ContractMismatch(ConfigError):
    """Weights and data disagree. ``problems``: [(field, expected, actual, fix)]."""

    def __init__(self, where: str, problems: list[tuple[str, Any, Any, str]]) -> None:
        self.problems = problems
        lines = [f"{where}: the weights' contract does not fit this run:"]
        lines += [f"  {f}: weights expect {e!r}, this run has {a!r}; fix: {fix}" for f, e, a, fix in problems]
        super().__init__("\n".join(lines))


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _yaml(value: Any) -> str:
    return json.dumps(_plain(value)).replace(" ", "")


def spacing_matches(a: Any, b: Any, rtol: float = SPACING_RTOL) -> bool:
    """True when two (x, y, z) spacings agree to ``rtol`` relative on every axis."""
    if a is None or b is None or len(a) != 3 or len(b) != 3:
        return a is None and b is None
    return all(abs(float(x) - float(y)) <= rtol * max(abs(float(x)), abs(float(y))) for x, y in zip(a, b))


def _plan(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest.get("plan") or {}


def _arch_problems(pre: PretrainContract, cfg: PGLConfig) -> list[tuple[str, Any, Any, str]]:
    out = []
    for name in _ARCH_FIELDS:
        want = _plain(pre.architecture.get(name, pre.in_channels if name == "in_channels" else None))
        have = _plain(getattr(cfg.model, name))
        if want != have:
            out.append((f"model.{name}", want, have, f"--set model.{name}={_yaml(want)} (or the preset the "
                        "weights were pretrained with)"))
    return out


def check_pretrain_compat(pre: PretrainContract, cfg: PGLConfig, manifest: dict[str, Any], dataset: str,
                          init_uri: str) -> None:
    """Raise :class:`ContractMismatch` unless the pretraining contract fits the config and dataset plan.

    Checked: architecture and channel count, spacing (``SPACING_RTOL`` relative), orientation,
    HU window, normalisation kind and any explicit mean / std override.
    """
    problems = _arch_problems(pre, cfg)
    plan = _plan(manifest)
    spacing = plan.get("target_spacing_mm")
    if pre.spacing_mm is not None and not spacing_matches(pre.spacing_mm, spacing):
        target = ",".join(f"{float(v):g}" for v in pre.spacing_mm)
        problems.append(("spacing_mm", _plain(pre.spacing_mm), _plain(spacing),
                         f"re-run pgl preprocess for dataset {dataset!r} with --target-spacing {target}"))
    orientation = plan.get("orientation", "LPS")
    if pre.orientation != orientation:
        problems.append(("orientation", pre.orientation, orientation,
                         f"re-run pgl preprocess for dataset {dataset!r} (the store's orientation must be "
                         f"{pre.orientation})"))
    window = [float(v) for v in cfg.intensity.hu_window]
    kind = pre.normalisation.get("kind")
    # a foreground norm's clip range comes from the pretraining data's body percentiles, not the config
    if kind != "foreground" and [float(v) for v in pre.hu_window] != window:
        problems.append(("intensity.hu_window", _plain(pre.hu_window), window,
                         f"--set intensity.hu_window={_yaml(pre.hu_window)}"))
    if kind != cfg.intensity.normalisation:
        problems.append(("intensity.normalisation", kind, cfg.intensity.normalisation,
                         f"--set intensity.normalisation={kind}"))
    for key in ("mean_hu", "std_hu"):
        have, want = getattr(cfg.intensity, key), pre.normalisation.get(key)
        if have is not None and want is not None and abs(float(have) - float(want)) > 1e-6 * max(1.0, abs(want)):
            problems.append((f"intensity.{key}", want, have,
                             f"drop the intensity.{key} override (the weights' value {want} is used)"))
    if problems:
        raise ContractMismatch(f"init {init_uri}", problems)


def pretrain_norm(pre: PretrainContract) -> IntensityNorm:
    """The intensity mapping the pretrained weights were trained with."""
    n = pre.normalisation
    return IntensityNorm(tuple(float(v) for v in pre.hu_window), str(n["kind"]),  # type: ignore[arg-type]
                         None if n.get("mean_hu") is None else float(n["mean_hu"]),
                         None if n.get("std_hu") is None else float(n["std_hu"]))


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
    """Load pretrained backbone weights; returns the keys left at random init (seg head and the
    decoder levels the contract says were not pretrained). Anything else missing, any unexpected
    key and any shape difference raise :class:`ContractMismatch` listing them."""
    own = model.state_dict()
    depth = pretrained_decoder_depth(pre)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                    if k in own and tuple(v.shape) != tuple(own[k].shape))
    missing = sorted(k for k in own if k not in state)
    bad_missing = [k for k in missing if not _may_stay_random(k, depth)]
    problems = []
    for name, keys in (("unexpected keys", unexpected), ("shape mismatches", shapes),
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


def build_segmenter_contract(cfg: dict[str, Any], num_classes: int, label_names: dict[str, str],
                             spacing_mm: list[float] | None, norm: IntensityNorm, init: str,
                             pre: PretrainContract | None, dataset: str, manifest_hash: str,
                             split: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """The ``contract.json`` dict of a segmenter (see module doc)."""
    lineage: dict[str, Any] = {"dataset": dataset, "manifest_hash": manifest_hash, "pretraining": None}
    if pre is not None:
        lineage["pretraining"] = {"uri": init, "mode": pre.mode, "steps": pre.steps, "datasets": dict(pre.datasets)}
    return {
        "format_version": FORMAT_VERSION, "kind": KIND, "predictor": PREDICTOR,
        "architecture": {"name": "SegmentationUNet", **cfg["model"], "num_classes": int(num_classes)},
        "in_channels": int(cfg["model"]["in_channels"]),
        "label_names": {str(k): str(v) for k, v in label_names.items()},
        "spacing_mm": None if spacing_mm is None else [float(v) for v in spacing_mm],
        "orientation": "LPS", "hu_window": [float(v) for v in norm.hu_window],
        "normalisation": {"kind": norm.kind, "mean_hu": norm.mean_hu, "std_hu": norm.std_hu},
        "patch_vox": [int(v) for v in cfg["finetune"]["patch_vox"]],
        "sw_overlap": float(cfg["finetune"]["sw_overlap"]),
        "init": init, "pretrain_mode": None if pre is None else pre.mode,
        "lineage": lineage, "split": split, "metrics": metrics, "config": cfg,
        "torch_version": torch.__version__,
    }


def write_model_dir(model_dir: str, state: dict[str, torch.Tensor], contract: dict[str, Any],
                    split: dict[str, Any], storage_options: dict | None = None) -> str:
    """Write ``model.pt``, ``split.json`` then ``contract.json`` (last: its presence marks a complete dir)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    blobs.put_bytes_atomic(_join(model_dir, MODEL_FILE), buf.getvalue(), storage_options)
    blobs.put_bytes_atomic(_join(model_dir, SPLIT_FILE), json.dumps(split, indent=1).encode(), storage_options)
    text = json.dumps(contract, indent=1, sort_keys=True, allow_nan=False)
    blobs.put_bytes_atomic(_join(model_dir, CONTRACT_FILE), text.encode(), storage_options)
    return model_dir


def read_segmenter_contract(model_dir: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The model directory's contract, checked for kind, version and required fields."""
    uri = _join(model_dir, CONTRACT_FILE)
    data = json.loads(blobs.get_bytes(uri, storage_options))
    if data.get("kind") != KIND or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{uri}: kind {data.get('kind')!r} / format_version {data.get('format_version')!r} "
                         f"is not a {KIND} contract version {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{uri}: contract lacks fields {missing}")
    return data


def build_segmenter(contract: dict[str, Any]) -> SegmentationUNet:
    """An untrained SegmentationUNet of the contract's architecture."""
    arch = contract["architecture"]
    model_cfg = ModelConfig(**{k: v for k, v in arch.items() if k in ModelConfig.model_fields})
    return SegmentationUNet(model_cfg, int(arch["num_classes"]))


def load_segmenter(model_dir: str, storage_options: dict | None = None,
                   device: str | torch.device = "cpu") -> tuple[SegmentationUNet, dict[str, Any]]:
    """(model in eval mode on ``device``, contract) from a model directory (strict load)."""
    contract = read_segmenter_contract(model_dir, storage_options)
    model = build_segmenter(contract)
    data = blobs.get_bytes(_join(model_dir, MODEL_FILE), storage_options)
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return model.to(device).eval(), contract


def read_split(model_dir: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The model directory's ``split.json``."""
    return json.loads(blobs.get_bytes(_join(model_dir, SPLIT_FILE), storage_options))


def check_dataset_for_segmenter(contract: dict[str, Any], manifest: dict[str, Any], dataset: str) -> None:
    """Raise :class:`ContractMismatch` when a store dataset's plan differs from the model's contract."""
    plan = _plan(manifest)
    problems = []
    if not spacing_matches(contract.get("spacing_mm"), plan.get("target_spacing_mm")):
        target = ",".join(f"{float(v):g}" for v in contract["spacing_mm"] or [])
        problems.append(("spacing_mm", contract.get("spacing_mm"), plan.get("target_spacing_mm"),
                         f"re-run pgl preprocess for dataset {dataset!r} with --target-spacing {target}"))
    if plan.get("orientation", "LPS") != contract.get("orientation", "LPS"):
        problems.append(("orientation", contract.get("orientation"), plan.get("orientation"),
                         f"re-run pgl preprocess for dataset {dataset!r}"))
    if problems:
        raise ContractMismatch(f"dataset {dataset!r}", problems)
