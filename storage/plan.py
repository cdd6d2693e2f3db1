"""The preprocessing plan: what every case of a dataset is turned into.

The plan is fixed when a dataset is created (first ingest) and stored in its manifest; cases added
later are processed with the same plan, so existing cases never need redoing. Its hash keys
idempotent reruns: a case is skipped when its source checksum and the plan hash are unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from storage.manifest import plan_hash

PLAN_FORMAT_VERSION = 1
DEFAULT_OBJECT_STORE_SHARD_VOX = (128, 256, 256)


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

    @property
    def hash(self) -> str:
        """The store's plan hash (sha256 of the plan's canonical JSON): keys idempotent reruns."""
        return plan_hash(self.to_dict())
