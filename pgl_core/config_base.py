"""The base of every configuration section (extra keys forbidden, validated on assignment) and the
shared field types: ``Triple`` voxel counts in array order (z, y, x), ``TripleF`` floats."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

Triple = tuple[int, int, int]
TripleF = tuple[float, float, float]


class Section(BaseModel):
    """A configuration section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
