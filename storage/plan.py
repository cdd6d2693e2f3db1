"""The preprocessing plan: what every case of a dataset is turned into.

The plan is fixed when a dataset is created (first ingest) and stored in its manifest; cases added
later are processed with the same plan, so existing cases never need redoing. Its hash keys
idempotent reruns: a case is skipped when its source checksum and the plan hash are unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.checks import DEFAULT_SPACING_RANGE_MM, LOW_FRACTION, LOW_HU
from storage.manifest import plan_hash

PLAN_FORMAT_VERSION = 1
DEFAULT_OBJECT_STORE_SHARD_VOX = (128, 256, 256)


class PlanRequest(BaseModel):
    """What a user asks of ingest (the ``preprocess`` section of the configuration); the
    :class:`Plan` is this with the spacing and shards decided (:meth:`Plan.from_request`).
    Sizes (z, y, x) voxels, spacing (x, y, z) mm."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    target_spacing_mm: tuple[float, float, float] | None = Field(
        None, description="Output spacing (x, y, z) in mm; None = the dataset's median spacing.")
    chunk_vox: tuple[int, int, int] = Field((32, 64, 64), description="Zarr chunk shape (z, y, x) for image and label.")
    shard_vox: tuple[int, int, int] | None = Field(
        None, description="Zarr shard shape (z, y, x). None = one shard per chunk row on local disk "
        "(a few files per case instead of hundreds), (128, 256, 256) on object stores (fewer, larger objects).")
    zstd_level: int = Field(1, ge=1, le=9, description="zstd level of the arrays' chunks (zstd inside Blosc, "
                            "byte shuffle).")
    allow_non_ct: bool = Field(False, description="Accept DICOM modalities other than CT (and so values that are "
                               "not HU: implies allow_non_hu).")
    spacing_tolerance: float = Field(
        0.1, gt=0, description="Relative tolerance on slice spacing uniformity before a series is refused.")
    spacing_range_mm: tuple[float, float] = Field(
        DEFAULT_SPACING_RANGE_MM, description="Plausible voxel spacing (min, max) in mm: an image whose spacing on "
        "any axis is zero, negative, NaN or outside this range is refused (a header error: a zero NIfTI pixdim, "
        "a spacing in metres).")
    allow_non_hu: bool = Field(
        False, description=f"Accept images whose values do not look like Hounsfield units. By default an image "
        f"needs at least {LOW_FRACTION:.1%} of its voxels at or below {LOW_HU:g} HU (air, lung or fat: every CT of "
        "a body shows some) and at most half outside -2048..4095; this refuses 8-bit photos, MR-like or [0, 1] / "
        "z-scored intensities, label maps given as images and CT stored without its rescale intercept. A crop "
        "inside one organ without fat or air needs this switch. NaN is refused regardless.")

    @field_validator("spacing_range_mm")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1]:
            raise ValueError(f"spacing_range_mm must be (min, max) with 0 < min < max, got {value}")
        return value


@dataclass(frozen=True)
class Plan:
    """How raw CT becomes the stored int16 volume. Sizes (z, y, x) voxels, spacing (x, y, z) mm."""

    target_spacing_mm: tuple[float, float, float]
    orientation: str = "LPS"
    image_interpolation: str = "linear"
    label_interpolation: str = "nearest"
    dtype: str = "int16"
    chunk_vox: tuple[int, int, int] = (32, 64, 64)
    shard_vox: tuple[int, int, int] | None = None
    zstd_level: int = 1
    allow_non_ct: bool = False
    spacing_tolerance: float = 0.1
    format_version: int = PLAN_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    # None: a plan recorded before these checks existed (left out of its dict, so its hash is
    # unchanged); the defaults apply to it. New plans record them (see :func:`read_options`).
    spacing_range_mm: tuple[float, float] | None = None
    allow_non_hu: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target_spacing_mm", "chunk_vox", "shard_vox", "spacing_range_mm"):
            if d[key] is not None:
                d[key] = [v for v in d[key]]
        return {k: v for k, v in d.items() if not (k in _RECORDED_IF_SET and v is None)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        d = dict(d)
        for key in ("target_spacing_mm", "chunk_vox", "shard_vox", "spacing_range_mm"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def read_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`storage.readers.read_case` this plan implies."""
        return read_options(self.to_dict())

    @classmethod
    def from_request(cls, request: PlanRequest, spacing_mm: tuple[float, float, float],
                     object_store: bool) -> "Plan":
        """The plan for ``request`` with ``spacing_mm`` decided (rounded to 0.1 um); shards default
        to :data:`DEFAULT_OBJECT_STORE_SHARD_VOX` on object stores."""
        shard = request.shard_vox or (DEFAULT_OBJECT_STORE_SHARD_VOX if object_store else None)
        return cls(target_spacing_mm=tuple(round(float(s), 4) for s in spacing_mm), chunk_vox=request.chunk_vox,
                   shard_vox=shard, zstd_level=request.zstd_level, allow_non_ct=request.allow_non_ct,
                   spacing_tolerance=request.spacing_tolerance, spacing_range_mm=tuple(request.spacing_range_mm),
                   allow_non_hu=request.allow_non_hu)

    @property
    def hash(self) -> str:
        """The store's plan hash (sha256 of the plan's canonical JSON): keys idempotent reruns."""
        return plan_hash(self.to_dict())


_RECORDED_IF_SET = ("spacing_range_mm", "allow_non_hu")


def read_options(plan: dict[str, Any]) -> dict[str, Any]:
    """What a plan dict (a manifest's ``plan``, also carried by a segmenter's contract) asks of the
    reader: the :func:`storage.readers.read_case` keyword arguments, defaults for what it lacks
    (plans and contracts recorded before a setting existed)."""
    return {"allow_non_ct": bool(plan.get("allow_non_ct", False)),
            "spacing_tolerance": float(plan.get("spacing_tolerance", 0.1)),
            "spacing_range_mm": tuple(float(v) for v in plan.get("spacing_range_mm") or DEFAULT_SPACING_RANGE_MM),
            "allow_non_hu": bool(plan.get("allow_non_hu") or False)}
