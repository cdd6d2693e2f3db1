"""The segmenter model directory contract (kind ``pgl-segmenter``): ``model.pt``, ``split.json``
and ``contract.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pgl_core.config import ModelConfig
from pgl_core.contracts.common import (CONTRACT_FILE, FORMAT_VERSION, MODEL_FILE, PREDICTOR, SEGMENTER_KIND,
                                       SPLIT_FILE, Contract, get_state, put_json, put_state)
from pgl_core.contracts.encoder import PretrainContract
from pgl_core.intensity_norm import IntensityNorm
from pgl_core.nets.unet import SegmentationUNet
from storage import blobs
from storage.uri import join_uri


@dataclass(frozen=True)
class SegmenterContract(Contract):
    """A fine-tuned model directory's ``contract.json`` (format version 1; fields: see
    :mod:`pgl_core.contracts`). Without a spacing it fits only plans without one."""

    KIND: ClassVar[str] = SEGMENTER_KIND
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "architecture", "in_channels", "label_names", "spacing_mm", "orientation", "hu_window", "normalisation",
        "patch_vox")
    SPACING_OPTIONAL: ClassVar[bool] = False
    CHECKS: ClassVar[dict[str, tuple[Any, str]]] = {
        "architecture": (lambda v: isinstance(v, dict) and isinstance(v.get("num_classes"), int),
                         'an object with an integer "num_classes"')}

    architecture: dict[str, Any]
    in_channels: int
    label_names: dict[str, str]
    spacing_mm: list[float] | None
    orientation: str
    hu_window: list[float]
    normalisation: dict[str, Any]
    patch_vox: list[int]
    predictor: str = PREDICTOR
    sw_overlap: float = 0.5
    init: str = "random"
    pretrain_mode: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # the training dataset's plan ({}: made before it was kept)
    torch_version: str = ""
    format_version: int = FORMAT_VERSION
    kind: str = SEGMENTER_KIND
    source: str = field(default="", compare=False, repr=False)

    @classmethod
    def build(cls, cfg: dict[str, Any], num_classes: int, label_names: dict[Any, str],
              spacing_mm: list[float] | None, norm: IntensityNorm, init: str, pre: PretrainContract | None,
              dataset: str, manifest_hash: str, split: dict[str, Any], metrics: dict[str, Any],
              plan: dict[str, Any] | None = None, init_run: str | None = None) -> SegmenterContract:
        """The contract of a fine-tuning run (``cfg``: its config dict; ``init``: the init's reference,
        e.g. ``models:/pgl-encoder/3`` or a pretraining output URI; ``pre``: the init's contract;
        ``plan``: the training dataset's plan, whose reader settings prediction applies;
        ``init_run``: the run that produced the init, when known)."""
        lineage: dict[str, Any] = {"dataset": dataset, "manifest_hash": manifest_hash, "pretraining": None}
        if pre is not None:
            lineage["pretraining"] = {"uri": init, "mode": pre.mode, "steps": pre.steps,
                                      "datasets": dict(pre.datasets)}
            if init_run:
                lineage["pretraining"]["run_id"] = init_run
        return cls(
            architecture={"name": "SegmentationUNet", **cfg["model"], "num_classes": int(num_classes)},
            in_channels=int(cfg["model"]["in_channels"]),
            label_names={str(k): str(v) for k, v in label_names.items()},
            spacing_mm=None if spacing_mm is None else [float(v) for v in spacing_mm],
            orientation="LPS", hu_window=[float(v) for v in norm.hu_window],
            normalisation={"kind": norm.kind, "mean_hu": norm.mean_hu, "std_hu": norm.std_hu},
            patch_vox=[int(v) for v in cfg["finetune"]["patch_vox"]],
            sw_overlap=float(cfg["finetune"]["sw_overlap"]),
            init=init, pretrain_mode=None if pre is None else pre.mode,
            lineage=lineage, split=split, metrics=metrics, config=cfg, plan=dict(plan or {}),
            torch_version=torch.__version__,
        )

    def write(self, model_dir: str, state: dict[str, torch.Tensor], storage_options: dict | None = None) -> str:
        """Write ``model.pt``, ``split.json`` (the contract's ``split``) then ``contract.json`` (last:
        its presence marks a complete directory), each atomically; returns ``model_dir``."""
        put_state(join_uri(model_dir, MODEL_FILE), state, storage_options)
        put_json(join_uri(model_dir, SPLIT_FILE), self.split, storage_options, indent=1)
        self._write_json(join_uri(model_dir, CONTRACT_FILE), storage_options)
        return model_dir


def load_segmenter(model_dir: str, storage_options: dict | None = None,
                   device: str | torch.device = "cpu") -> tuple[SegmentationUNet, SegmenterContract]:
    """(model in eval mode on ``device``, contract) from a model directory (strict load)."""
    contract = SegmenterContract.read(model_dir, storage_options)
    arch = contract.architecture
    model_cfg = ModelConfig(**{k: v for k, v in arch.items() if k in ModelConfig.model_fields})
    model = SegmentationUNet(model_cfg, int(arch["num_classes"]))
    model.load_state_dict(get_state(join_uri(model_dir, MODEL_FILE), storage_options))
    return model.to(device).eval(), contract


def read_split(model_dir: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The model directory's ``split.json``."""
    return json.loads(blobs.get_bytes(join_uri(model_dir, SPLIT_FILE), storage_options))
