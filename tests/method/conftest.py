"""Fixtures for the PGL method tests: the tiny config and coordinate volumes."""

from __future__ import annotations

import pytest
import torch

from pgl_core.config import PGLConfig, load_config


def coordinate_volume(shape: tuple[int, int, int], batch: int = 1) -> torch.Tensor:
    """(batch, 3, D, H, W) float32 whose channels hold each voxel's own (z, y, x) index."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid[None].expand(batch, -1, -1, -1, -1).contiguous()


@pytest.fixture
def tiny() -> PGLConfig:
    return load_config(preset="tiny")


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed torch; one intra-op thread (small convs on a shared 2-core box thrash with more)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
