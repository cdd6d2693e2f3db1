"""What lives at a store root: the PGL datasets it holds, and whether a store can live there at
all (an object store's bucket must exist and answer)."""

from __future__ import annotations

import json

from storage.errors import InputError
from storage.uri import is_local, open_fs


def check_store_root(root_uri: str, storage_options: dict | None = None) -> None:
    """InputError unless a store can live at ``root_uri``: an object store's bucket must exist and
    answer (a local folder is created on first write)."""
    if is_local(root_uri):
        return
    fs, path = open_fs(root_uri, storage_options)
    bucket = path.split("/", 1)[0]
    try:
        fs.info(bucket)  # not exists(): it answers False for an endpoint that does not answer
    except FileNotFoundError:
        raise InputError(f"store {root_uri}: bucket {bucket!r} does not exist (create it, or check --store "
                         "and AWS_ENDPOINT_URL)") from None
    except Exception as err:  # noqa: BLE001 - unreachable endpoint, refused credentials, ...
        raise InputError(f"store {root_uri}: the object store does not answer ({type(err).__name__}: {err}); "
                         "check AWS_ENDPOINT_URL and the credentials in the environment") from None


def list_datasets(root_uri: str, storage_options: dict | None = None) -> list[str]:
    """Sorted names of the PGL datasets directly under ``root_uri``."""
    fs, path = open_fs(root_uri, storage_options)
    fs.invalidate_cache(path)
    try:
        metas = fs.glob(f"{path.rstrip('/')}/*/zarr.json")
    except FileNotFoundError:
        return []
    names: list[str] = []
    if not metas:
        return names
    for p, data in fs.cat(metas, on_error="omit").items():
        try:
            attrs = json.loads(data).get("attributes", {})
        except ValueError:
            continue
        if "pgl_dataset" in attrs:
            names.append(p.rstrip("/").split("/")[-2])
    return sorted(names)
