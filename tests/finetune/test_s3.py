"""Fine-tuning output, model directory and predictions on S3 (local moto server)."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from pgl_core.finetune import run_finetuning
from pgl_core.sinks import NullSink
from pgl_core.predict import predict_file
from storage import blobs
from phantoms import generate_case
from tests.finetune.conftest import SMALL_PATCH, tiny_cfg

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def test_finetune_to_s3_then_predict_from_and_to_s3(kits_store, s3_server, s3_bucket, tmp_path):
    opts = s3_server.storage_options
    out = f"{s3_bucket}/runs/ft"
    cfg = tiny_cfg(*SMALL_PATCH, "finetune.steps=2", "finetune.eval_every=2")
    res = run_finetuning(cfg, kits_store, "kits", "random", out, storage_options=opts, sink=NullSink(), labelled=2)
    assert res.model_dir == f"{out}/model"
    contract = json.loads(blobs.get_bytes(f"{out}/model/contract.json", opts))
    assert contract["kind"] == "pgl-segmenter" and blobs.exists(f"{out}/split.json", opts)
    image, _ = generate_case("kits", 4, (16, 32, 32), ras=True, oblique=True)  # (12 slices: 23 mm)
    src = tmp_path / "ct.nrrd"
    sitk.WriteImage(image.to_sitk(), str(src))
    blobs.put_bytes_atomic(f"{s3_bucket}/in/ct.nrrd", src.read_bytes(), opts)
    written = predict_file(res.model_dir, f"{s3_bucket}/in/ct.nrrd", f"{s3_bucket}/out/labels.nii.gz",
                           device="cpu", storage_options=opts)
    local = tmp_path / "labels.nii.gz"
    local.write_bytes(blobs.get_bytes(written, opts))
    assert sitk.ReadImage(str(local)).GetSize() == sitk.ReadImage(str(src)).GetSize()
