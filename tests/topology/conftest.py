"""The topology every ``topology`` test runs against, started once per session (about 30-40 s):
see :mod:`tests.topology.stack`. Raw phantoms (a DICOM pool and a labelled NIfTI dataset) are
uploaded to its bucket under ``raw/``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from phantoms import write_dataset
from tests.topology.stack import Topology

SHAPE = (32, 64, 64)
RAW = {"PhantomPool_dicom": ("pool", 2, 1, "dicom"), "PhantomSpleen": ("spleen", 4, 2, "nifti")}


def upload_tree(s3_server, local: Path, uri: str) -> None:
    """Every file under ``local`` to ``uri`` (``s3://bucket/prefix``), relative paths kept."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = s3_server.client()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}".lstrip("/"))


@pytest.fixture(scope="session")
def raw_local(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("topology-raw")
    for kind, n, seed, fmt in RAW.values():
        write_dataset(str(root), kind, n, seed=seed, shape_zyx=SHAPE, formats=(fmt,))
    assert {p.name for p in root.iterdir()} >= set(RAW)
    return root


@pytest.fixture(scope="session")
def topology(s3_server, raw_local: Path, tmp_path_factory) -> Iterator[Topology]:
    folder = tmp_path_factory.mktemp("topology")
    bucket = s3_server.make_bucket("pgl-topology")
    topo = Topology(folder=folder, bucket=bucket, s3_env=dict(s3_server.env),
                    storage_options=dict(s3_server.storage_options))
    try:
        topo.start_mlflow(s3_server.endpoint_url)
        topo.start_prefect()
        topo.start_dask(workers=2)
        topo.start_serve()
        for name in RAW:
            upload_tree(s3_server, raw_local / name, f"{bucket}/raw/{name}")
        yield topo
    finally:
        topo.stop_all()
