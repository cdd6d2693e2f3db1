"""Fixtures for the fine-tuning tests: small labelled phantom stores ingested through the real
reader -> canonicalise -> resample -> Zarr path, and a few-step pretraining output."""

from __future__ import annotations

import os

import pytest

from pgl_core.config import PGLConfig, load_config
from storage.ingest import ingest_case
from phantoms import KINDS, generate_case
from phantoms.writers import write_nifti
from storage.plan import Plan
from storage.readers import CaseSource
from storage.store import DatasetStore

SHAPE_ZYX = (24, 48, 48)
SPACING_MM = (8.0, 8.0, 10.0)
FAST = ["finetune.patch_vox=[16,32,32]", "finetune.batch_size=2", "finetune.log_every=1",
        "finetune.warmup_steps=2", "finetune.checkpoint_every_steps=1000"]


def make_store(root: str, dataset: str, kind: str = "kits", n_cases: int = 5, seed: int = 0,
               spacing_mm: tuple[float, float, float] = SPACING_MM) -> str:
    """Ingest ``n_cases`` labelled phantoms of ``kind`` into ``root/dataset``; returns ``root``."""
    raw = os.path.join(root + "-raw", dataset)
    plan = Plan(target_spacing_mm=spacing_mm)
    store = DatasetStore(root, dataset, create=True)
    store.ensure(plan.to_dict(), KINDS[kind])
    for i in range(n_cases):
        image, label = generate_case(kind, seed + i, SHAPE_ZYX)
        img = write_nifti(image, os.path.join(raw, f"case{i:02d}.nii.gz"))
        lab = write_nifti(label, os.path.join(raw, f"case{i:02d}_label.nii.gz"))
        result = ingest_case(CaseSource(f"case{i:02d}", "image", (img,), lab, "train"), root, dataset, plan)
        assert result.status == "done", result
    store.consolidate_manifest()
    return root


def tiny_cfg(*extra: str) -> PGLConfig:
    return load_config(preset="tiny", overrides=[*FAST, *extra])


@pytest.fixture(scope="session")
def kits_store(tmp_path_factory) -> str:
    """Five labelled 'kits' phantoms (kidney, kidney_tumour) in dataset ``kits``."""
    return make_store(str(tmp_path_factory.mktemp("ft") / "store"), "kits")


def write_pretrain_output(out_uri: str, store_root: str, dataset: str, cfg: PGLConfig | None = None,
                          seed: int = 1) -> str:
    """A pretraining output (``encoder.pt`` + ``contract.json``) for ``cfg`` without training steps:
    a seeded PGLModel's online backbone and the contract built from the dataset's manifest."""
    import torch

    from pgl_core.config import config_to_dict
    from pgl_core.contracts import PretrainContract
    from pgl_core.intensity_norm import resolve_norm
    from pgl_core.pgl import PGLModel

    from pgl_core.levels import resolve_local_levels

    cfg = resolve_local_levels(cfg or tiny_cfg())
    store = DatasetStore(store_root, dataset)
    manifests = {dataset: store.manifest()}
    torch.manual_seed(seed)
    model = PGLModel(cfg.model, cfg.loss, tuple(cfg.views.patch_vox))
    norm = resolve_norm(cfg.intensity, manifests)
    contract = PretrainContract.build(config_to_dict(cfg), norm.to_dict(), manifests, {dataset: store.manifest_hash()}, 0)
    contract.write(out_uri, model.encoder_state_dict())
    return out_uri


SMALL_PATCH = ["finetune.patch_vox=[8,16,16]"]


@pytest.fixture(scope="session")
def trained(kits_store, tmp_path_factory):
    """A completed 12-step tiny fine-tuning run on ``kits`` (3 training cases): its FinetuneResult."""
    from pgl_core.finetune import run_finetuning

    cfg = tiny_cfg(*SMALL_PATCH, "finetune.steps=12", "finetune.eval_every=4")
    return run_finetuning(cfg, kits_store, "kits", "random", str(tmp_path_factory.mktemp("ft") / "run"),
                          labelled=3)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP thread teams wait on each other and
    small 3-D convolutions run ~50x slower with 2 threads than with 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
