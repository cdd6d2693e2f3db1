"""The description of a registered model version (Markdown, as the MLflow UI shows it): what the
model is, the datasets it was trained on (with manifest hash prefixes), its init, its steps, its
test mean Dice and how to use it. Built from the model's ``contract.json`` and the metrics it was
registered with; fields an older contract lacks are left out.
"""

from __future__ import annotations

import math
from typing import Any

HASH_PREFIX = 12


def _short(digest: Any) -> str:
    return str(digest)[:HASH_PREFIX] if digest else "?"


def _datasets(hashes: dict[str, Any]) -> str:
    return ", ".join(f"{name} (manifest {_short(digest)})" for name, digest in sorted(hashes.items())) or "?"


def _classes(contract: dict[str, Any]) -> str:
    names = contract.get("label_names") or {}
    values = list(names.values()) if isinstance(names, dict) else list(names)
    return ", ".join(str(v) for v in values if str(v) != "background")


def _dice(metrics: dict[str, Any]) -> str:
    value = metrics.get("mean_dice")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "not evaluated"
    return f"{value:.3f}" if math.isfinite(value) else "not evaluated"


def _init(contract: dict[str, Any]) -> str:
    pre = (contract.get("lineage") or {}).get("pretraining")
    if not pre:
        return "random (no pretraining)"
    text = f"`{pre.get('uri') or contract.get('init')}`"
    details = [f"{pre['mode']} pretraining" if pre.get("mode") else "",
               f"run `{pre['run_id']}`" if pre.get("run_id") else "",
               f"{pre['steps']} steps" if pre.get("steps") is not None else "",
               f"on {_datasets(pre['datasets'])}" if pre.get("datasets") else ""]
    details = [d for d in details if d]
    return text + (f" ({', '.join(details)})" if details else "")


def _steps(contract: dict[str, Any]) -> Any:
    steps = (contract.get("metrics") or {}).get("steps")
    if steps is None:
        steps = ((contract.get("config") or {}).get("finetune") or {}).get("steps")
    return steps


def segmenter_description(name: str, version: str, contract: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The description of version ``version`` of the segmenter ``name``."""
    lineage = contract.get("lineage") or {}
    dataset = lineage.get("dataset") or name.removeprefix("pgl-seg-")
    uri = f"models:/{name}/{version}"
    classes = _classes(contract)
    steps = _steps(contract)
    return "\n".join([
        f"PGL segmenter for **{dataset}**: a CT scan in, a label map out in the scan's own geometry"
        + (f" (classes: {classes})." if classes else "."),
        "",
        f"- trained on: {_datasets({dataset: lineage.get('manifest_hash')})}",
        f"- init: {_init(contract)}",
        f"- fine-tuning steps: {steps if steps is not None else '?'}",
        f"- test mean Dice: {_dice(metrics)}",
        "",
        f"Use: `pgl predict --model {uri} --input ct.nii.gz --output seg.nii.gz`, or "
        f"`mlflow.pyfunc.load_model(\"{uri}\").predict([{{\"input\": \"ct.nii.gz\", \"output\": \"seg.nii.gz\"}}])`.",
    ])


def encoder_description(name: str, version: str, contract: dict[str, Any]) -> str:
    """The description of version ``version`` of the pretrained encoder ``name``."""
    uri = f"models:/{name}/{version}"
    mode = contract.get("mode")
    patch = contract.get("patch_vox")
    spacing = contract.get("spacing_mm")
    lines = [f"Self-supervised pretrained 3D U-Net encoder{f' (mode {mode})' if mode else ''}: the "
             "initialisation of segmenters, not a predictor itself.", "",
             f"- pretrained on: {_datasets(contract.get('datasets') or {})}",
             f"- steps: {contract.get('steps', '?')}"]
    if patch:
        lines.append(f"- patch: {'x'.join(str(p) for p in patch)} voxels (z, y, x)")
    if spacing:
        lines.append(f"- spacing: {' x '.join(f'{s:g}' for s in spacing)} mm (x, y, z)")
    lines += ["", f"Use: `pgl finetune --init {uri} --store STORE --dataset NAME --output DIR`."]
    return "\n".join(lines)


def version_description(name: str, version: str, contract: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The description of a new model version, by its contract's kind."""
    if contract.get("kind") == "pgl-encoder":
        return encoder_description(name, version, contract)
    return segmenter_description(name, version, contract, metrics)
