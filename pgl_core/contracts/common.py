"""What both contracts share: file names, the untyped reader, the field checks, the checked read,
the intensity mapping, the plan check and the atomic writes (see :mod:`pgl_core.contracts`)."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, fields
from typing import Any, ClassVar, Self

import torch

from pgl_core.config import ConfigError
from pgl_core.intensity_norm import IntensityNorm
from storage import blobs
from storage.uri import join_uri

FORMAT_VERSION = 1
ENCODER_KIND, SEGMENTER_KIND = "pgl-encoder", "pgl-segmenter"
CONTRACT_FILE, ENCODER_FILE, MODEL_FILE, SPLIT_FILE = "contract.json", "encoder.pt", "model.pt", "split.json"
PREDICTOR = "pgl_core.predict:predict_file"
SPACING_RTOL = 1e-3

Problem = tuple[str, Any, Any, str]  # (field, expected, actual, fix)


class ContractMismatch(ConfigError):
    """Weights and data disagree. ``problems``: [(field, expected, actual, fix)]."""

    def __init__(self, where: str, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [f"{where}: the weights' contract does not fit this run:"]
        lines += [f"  {f}: weights expect {e!r}, this run has {a!r}; fix: {fix}" for f, e, a, fix in problems]
        super().__init__("\n".join(lines))


def spacing_matches(a: Any, b: Any, rtol: float = SPACING_RTOL) -> bool:
    """True when two (x, y, z) spacings agree to ``rtol`` relative on every axis."""
    if a is None or b is None or len(a) != 3 or len(b) != 3:
        return a is None and b is None
    return all(abs(float(x) - float(y)) <= rtol * max(abs(float(x)), abs(float(y))) for x, y in zip(a, b))


def contract_uri(uri: str) -> str:
    """The ``contract.json`` URI of a run output / model directory (or that URI itself)."""
    return uri if uri.endswith(".json") else join_uri(uri, CONTRACT_FILE)


def read_contract(uri: str, storage_options: dict | None = None,
                  kinds: tuple[str, ...] = (ENCODER_KIND, SEGMENTER_KIND)) -> dict[str, Any]:
    """The JSON object of a ``contract.json`` (given as its folder's URI or its own), checked for
    kind and format version only; ValueError / FileNotFoundError naming the file."""
    uri = str(uri)
    target = contract_uri(uri)
    try:
        raw = blobs.get_bytes(target, storage_options=storage_options)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{uri} has no {CONTRACT_FILE}" if target != uri else str(exc)) from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{target}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{target}: a contract is a JSON object, not {type(data).__name__}")
    if data.get("kind") not in kinds:
        raise ValueError(f"{target}: kind {data.get('kind')!r} is not {' or '.join(map(repr, kinds))}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{target}: unsupported format_version {data.get('format_version')!r} "
                         f"(this code reads {FORMAT_VERSION})")
    return data


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(n: int, check: Any = _number) -> Any:
    return lambda v: isinstance(v, list) and len(v) == n and all(check(x) for x in v)


def _is(*types: type) -> Any:
    return lambda v: isinstance(v, types)


def _norm_ok(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("kind"), str) and all(
        v.get(k) is None or _number(v[k]) for k in ("mean_hu", "std_hu"))


# What a field must hold when present: (check, description for the error).
FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "architecture": (_is(dict), "an object"),
    "in_channels": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "spacing_mm": (lambda v: v is None or _numbers(3)(v), "null or 3 numbers (x, y, z mm)"),
    "orientation": (_is(str), "a string"),
    "hu_window": (_numbers(2), "2 numbers (lo, hi HU)"),
    "normalisation": (_norm_ok, 'an object with a string "kind" and numeric or null mean_hu / std_hu'),
    "patch_vox": (_numbers(3, _integer), "3 integers (z, y, x)"),
    "mode": (_is(str), "a string"),
    "datasets": (_is(dict), "an object {dataset: manifest hash}"),
    "steps": (lambda v: _integer(v) and v >= 0, "a non-negative integer"),
    "config": (_is(dict), "an object"),
    "torch_version": (_is(str), "a string"),
    "spacing_mm_per_dataset": (_is(dict), "an object {dataset: spacing}"),
    "label_names": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                    "an object {label value: name}"),
    "predictor": (lambda v: isinstance(v, str) and ":" in v, 'a "module:function" string'),
    "sw_overlap": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "init": (_is(str), "a string"),
    "pretrain_mode": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "lineage": (_is(dict), "an object"),
    "split": (_is(dict), "an object"),
    "metrics": (_is(dict), "an object"),
    "plan": (_is(dict), "an object"),
}


class Contract:
    """Base of the two contract dataclasses: the checked read, the JSON form, the intensity mapping
    and the plan check. Subclasses set ``KIND``, ``REQUIRED`` fields, ``SPACING_OPTIONAL`` (a
    contract without a spacing fits any plan) and may tighten ``CHECKS``."""

    KIND: ClassVar[str]
    REQUIRED: ClassVar[tuple[str, ...]]
    SPACING_OPTIONAL: ClassVar[bool]
    CHECKS: ClassVar[dict[str, tuple[Any, str]]] = {}
    # fields of both subclasses (declared there: this base is not a dataclass)
    spacing_mm: list[float] | None
    orientation: str
    hu_window: list[float]
    normalisation: dict[str, Any]
    source: str  # where it was read from ("" when built); never written

    @classmethod
    def read(cls, uri: str, storage_options: dict | None = None) -> Self:
        """The contract of a run output / model directory (or of the ``contract.json`` URI itself):
        kind, version, required fields and field types checked, ValueError naming file and field."""
        target = contract_uri(uri)
        data = read_contract(uri, storage_options, kinds=(cls.KIND,))
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise ValueError(f"{target}: contract lacks fields {missing}")
        known = [f.name for f in fields(cls) if f.name != "source"]  # type: ignore[arg-type]
        checks = {**FIELD_CHECKS, **cls.CHECKS}
        for name in known:
            check, what = checks.get(name, (None, ""))
            if check is not None and name in data and not check(data[name]):
                raise ValueError(f"{target}: field {name!r} must be {what}, got {data[name]!r}")
        return cls(**{k: data[k] for k in known if k in data}, source=target)

    def to_dict(self) -> dict[str, Any]:
        """The ``contract.json`` object."""
        data = asdict(self)  # type: ignore[call-overload]
        data.pop("source")
        return data

    def norm_from(self) -> IntensityNorm:
        """The intensity mapping the weights were trained with."""
        n = self.normalisation
        return IntensityNorm(tuple(float(v) for v in self.hu_window), str(n["kind"]),  # type: ignore[arg-type]
                             None if n.get("mean_hu") is None else float(n["mean_hu"]),
                             None if n.get("std_hu") is None else float(n["std_hu"]))

    def plan_problems(self, manifest: dict[str, Any], dataset: str) -> list[Problem]:
        """Where a store dataset's plan (its manifest's ``plan``) differs from the contract: spacing
        (``SPACING_RTOL`` relative) and orientation."""
        plan = manifest.get("plan") or {}
        spacing = plan.get("target_spacing_mm")
        problems: list[Problem] = []
        if not (self.spacing_mm is None and self.SPACING_OPTIONAL) and not spacing_matches(self.spacing_mm, spacing):
            target = ",".join(f"{float(v):g}" for v in self.spacing_mm or [])
            problems.append(("spacing_mm", self.spacing_mm, spacing,
                             f"re-run pgl preprocess for dataset {dataset!r} with --target-spacing {target}"))
        orientation = plan.get("orientation", "LPS")
        if self.orientation != orientation:
            problems.append(("orientation", self.orientation, orientation,
                             f"re-run pgl preprocess for dataset {dataset!r} (the store's orientation must be "
                             f"{self.orientation})"))
        return problems

    def check_plan(self, manifest: dict[str, Any], dataset: str) -> None:
        """Raise :class:`ContractMismatch` when :meth:`plan_problems` finds any."""
        problems = self.plan_problems(manifest, dataset)
        if problems:
            raise ContractMismatch(f"dataset {dataset!r}" + (f" vs {self.source}" if self.source else ""), problems)

    def _write_json(self, uri: str, storage_options: dict | None) -> None:
        put_json(uri, self.to_dict(), storage_options, indent=1, sort_keys=True, allow_nan=False)


def put_state(uri: str, state: dict[str, torch.Tensor], storage_options: dict | None) -> None:
    """Write a state dict (as CPU tensors) atomically."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    blobs.put_bytes_atomic(uri, buf.getvalue(), storage_options=storage_options)


def get_state(uri: str, storage_options: dict | None) -> dict[str, torch.Tensor]:
    """A state dict written by :func:`put_state` (on the CPU, weights only)."""
    data = blobs.get_bytes(uri, storage_options=storage_options)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def put_json(uri: str, data: Any, storage_options: dict | None, **dumps: Any) -> None:
    """Write ``json.dumps(data, **dumps)`` atomically."""
    blobs.put_bytes_atomic(uri, json.dumps(data, **dumps).encode(), storage_options=storage_options)
