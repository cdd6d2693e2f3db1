"""The preprocessing plan: what every case of a dataset is turned into.

The plan is fixed when a dataset is created (first ingest) and stored in its manifest; cases added
later are processed with the same plan, so existing cases never need redoing. Its hash keys
idempotent reruns: a case is skipped when its source checksum and the plan hash are unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
        None, description="Zarr shard shape (z, y, x). None = no shards on local disk, (128, 256, 256) "
        "on object stores (fewer, larger objects).")
    zstd_level: int = Field(1, ge=1, le=9, description="zstd level of the arrays' chunks (zstd inside Blosc, "
                            "byte shuffle).")
    allow_non_ct: bool = Field(False, description="Accept DICOM modalities other than CT.")
    spacing_tolerance: float = Field(
        0.1, gt=0, description="Relative tolerance on slice spacing uniformity before a series is refused.")


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target_spacing_mm", "chunk_vox", "shard_vox"):
            if d[key] is not None:
                d[key] = [v for v in d[key]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        d = dict(d)
        for key in ("target_spacing_mm", "chunk_vox", "shard_vox"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def from_request(cls, request: PlanRequest, spacing_mm: tuple[float, float, float],
                     object_store: bool) -> "Plan":
        """The plan for ``request`` with ``spacing_mm`` decided (rounded to 0.1 um); shards default
        to :data:`DEFAULT_OBJECT_STORE_SHARD_VOX` on object stores."""
        shard = request.shard_vox or (DEFAULT_OBJECT_STORE_SHARD_VOX if object_store else None)
        return cls(target_spacing_mm=tuple(round(float(s), 4) for s in spacing_mm), chunk_vox=request.chunk_vox,
                   shard_vox=shard, zstd_level=request.zstd_level, allow_non_ct=request.allow_non_ct,
                   spacing_tolerance=request.spacing_tolerance)

    @property
    def hash(self) -> str:
        """The store's plan hash (sha256 of the plan's canonical JSON): keys idempotent reruns."""
        return plan_hash(self.to_dict())
