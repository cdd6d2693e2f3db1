"""Types of the stage flows' parameters, as the deployment forms show them.

An optional parameter is ``X | Unset = None``: Prefect's form shows a plain ``X`` field, left empty
(no "type None" toggle), and an empty field means the documented default. Conventions shared by
every stage flow: ``preset`` + ``config`` (a YAML file) + ``overrides`` (``section.key=value``) make
the configuration; ``force`` redoes finished work; ``device`` is cpu, cuda or empty (automatic).
"""

from __future__ import annotations

from typing import Literal

from pydantic.json_schema import SkipJsonSchema

Unset = SkipJsonSchema[None]
Device = Literal["cpu", "cuda"]
Preset = Literal["paper", "tiny"]
