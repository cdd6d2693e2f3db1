"""Phantom inputs shared by the flow tests (small, generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phantoms import write_dataset

SHAPE = (24, 64, 64)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """Two small labelled datasets (NIfTI + DICOM) and an unlabelled pool (NIfTI)."""
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(str(root), "spleen", 3, seed=7, shape_zyx=SHAPE, formats=("nifti", "dicom"))
    write_dataset(str(root), "pool", 2, seed=9, shape_zyx=SHAPE, formats=("nifti",))
    return root
