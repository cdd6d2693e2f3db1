"""Reading the ``_cases/<id>.json`` completion records and checking format versions.

The records are the only truth about which cases of a dataset are done (see
``docs/store-layout.md``); everything here reads, nothing writes.
"""

from __future__ import annotations

import json
from typing import Any

from storage import layout
from storage.errors import StorageError


def check_version(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """``obj`` if its "format_version" is one this code reads; StorageError naming ``where`` else."""
    version = obj.get("format_version")
    if version not in layout.READABLE_VERSIONS:
        raise StorageError(f"{where}: store format_version {version!r} is not supported "
                           f"(this code reads versions {list(layout.READABLE_VERSIONS)})")
    return obj


def parse_record(data: bytes, where: str) -> dict[str, Any]:
    """One record from its bytes; StorageError naming ``where`` when corrupt or of unknown version."""
    try:
        rec = json.loads(data)
    except ValueError as exc:
        raise StorageError(f"corrupt case record {where}: {exc}") from exc
    if not isinstance(rec, dict) or "case_id" not in rec:
        raise StorageError(f"corrupt case record {where}: not a record object with a case_id")
    return check_version(rec, f"case record {where}")


def list_records(fs: Any, folder: str) -> list[dict[str, Any]]:
    """Every record in the ``_cases`` ``folder`` of ``fs``: one listing, then one concurrent read
    of all of them (temp files of writes in progress are left out)."""
    fs.invalidate_cache(folder)
    try:
        names = [p for p in fs.ls(folder, detail=False) if p.endswith(".json")
                 and not p.rsplit("/", 1)[-1].startswith(".")]
    except FileNotFoundError:
        return []
    if not names:
        return []
    return [parse_record(data, p) for p, data in sorted(fs.cat(names, on_error="raise").items())]
