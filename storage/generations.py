"""The folder of one case: its generations and what a finished write leaves behind.

Every write of a case goes to a fresh folder ``<case>/g<n>/`` (``n`` one more than any generation
the folder or the case's record holds), so the arrays a done record names are never touched by a
later write. When the new record is in place the writer removes everything else in the folder:
the generation the old record named, generations of writes that crashed before their record, and
the arrays of a format version 1 case (kept directly in ``<case>/``). Works on any fsspec
filesystem (local folders, S3); needs no rename.
"""

from __future__ import annotations

from typing import Any, Iterable

import zarr

from storage import layout

GROUP_META = "zarr.json"


def children(fs: Any, folder: str) -> list[str]:
    """Sorted names directly inside ``folder`` (empty when it does not exist); never cached."""
    fs.invalidate_cache(folder)
    try:
        found = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    return sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in found} - {""})


def next_generation(names: Iterable[str], named: str | None) -> str:
    """A generation name newer than every ``g<n>`` in ``names`` and than ``named`` (the record's)."""
    numbers = [layout.generation_number(n) for n in [*names, named or ""]]
    return layout.generation_name(1 + max([n for n in numbers if n is not None], default=0))


def kept(record: dict[str, Any] | None) -> set[str]:
    """What the case folder must keep for ``record``: the group metadata and the generation it
    names (the arrays themselves for a version 1 record); nothing for a failed or missing record."""
    if not record or record.get("status") != "done":
        return set()
    generation = record.get("generation")
    return {GROUP_META, *(layout.ARRAYS if generation is None else (generation,))}


def leftovers(names: Iterable[str], keep: set[str]) -> list[str]:
    """The entries of the case folder that no record names."""
    return [n for n in names if n not in keep]


def remove(fs: Any, folder: str, names: Iterable[str]) -> None:
    """Delete the entries ``names`` of ``folder`` (recursively); missing ones are no error."""
    for name in names:
        try:
            fs.rm(f"{folder}/{name}", recursive=True)
        except FileNotFoundError:
            pass
    fs.invalidate_cache(folder)


def holds_v1_arrays(names: Iterable[str]) -> bool:
    """True when a format version 1 case's arrays are among ``names``."""
    return any(n in layout.ARRAYS for n in names)


def tidy(fs: Any, zstore: Any, base: str, case_id: str, record: dict[str, Any] | None,
         names: list[str] | None = None) -> None:
    """Remove from the case folder ``<base>/<case_id>`` of ``fs`` what ``record`` does not name
    (the whole folder for a failed or missing record). ``names``: the folder's entries when the
    caller already listed them. A version 1 case group's "pgl_case" attribute goes with its arrays."""
    folder = f"{base}/{case_id}"
    names = children(fs, folder) if names is None else names
    keep = kept(record)
    if not keep:
        remove(fs, base, [case_id] if names else [])
        return
    drop = leftovers(names, keep)
    if holds_v1_arrays(drop):
        group = zarr.open_group(zstore, path=case_id, mode="r+", zarr_format=3)
        if "pgl_case" in group.attrs:
            del group.attrs["pgl_case"]
    remove(fs, folder, drop)
