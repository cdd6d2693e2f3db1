"""Inputs shared by the orchestration tests: small phantom datasets and a tiny synthetic store."""

from __future__ import annotations

from pathlib import Path

import pytest

from phantoms import write_dataset

SHAPE = (32, 64, 64)
# The smallest run that still exercises every stage: a few steps, validation once.
TINY = ["train.steps=3", "train.log_every=1", "finetune.steps=3", "finetune.eval_every=3", "finetune.log_every=1"]


@pytest.fixture(scope="session")
def raw_root(tmp_path_factory) -> Path:
    """An unlabelled pool (2 cases) and a labelled spleen dataset (4 cases), NIfTI, MSD layout."""
    root = tmp_path_factory.mktemp("raw")
    write_dataset(str(root), "pool", 2, seed=1, shape_zyx=SHAPE, formats=("nifti",))
    write_dataset(str(root), "spleen", 4, seed=2, shape_zyx=SHAPE, formats=("nifti",))
    return root


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> str:
    """A store with two small unlabelled datasets written directly (no ingest)."""
    from benchmarks.loader import write_synthetic_store

    root = str(tmp_path_factory.mktemp("synth") / "store")
    write_synthetic_store(root, ["dsa", "dsb"], 2, (24, 48, 48))
    return root
