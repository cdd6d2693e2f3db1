"""``evaluate_model`` tables and overlays, and the ``pgl finetune / evaluate / predict`` commands."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import SimpleITK as sitk

from flows.cli import main as pgl
from pgl_core.contracts import ContractMismatch
from pgl_core.evaluate import evaluate_model
from phantoms import generate_case
from tests.finetune.conftest import SMALL_PATCH, make_store


def test_evaluate_writes_csv_json_png(trained, kits_store, tmp_path):
    out = tmp_path / "eval"
    summary = evaluate_model(trained.model_dir, kits_store, "kits", str(out), split="val", overlays=1, device="cpu")
    split = json.loads((Path(trained.model_dir) / "split.json").read_text())
    assert summary["cases"] == split["val"] and summary["n_cases"] == 1
    assert set(summary["per_class"]) == {"kidney", "kidney_tumour"}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {r["case"] for r in rows} >= set(split["val"]) and {r["class"] for r in rows} >= {"kidney", "overall"}
    data = json.loads((out / "metrics.json").read_text())
    assert data["summary"]["n_cases"] == 1 and len(data["per_case"]) == 1
    dice = data["per_case"][0]["metrics"]["kidney"]["dice"]
    assert 0.0 <= dice <= 1.0
    png = out / "overlays" / f"{split['val'][0]}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_evaluate_all_labelled_cases(trained, kits_store, tmp_path):
    all_cases = evaluate_model(trained.model_dir, kits_store, "kits", str(tmp_path / "all"), split="all",
                               overlays=0, device="cpu")
    assert all_cases["n_cases"] == 5 and not (tmp_path / "all" / "overlays").exists()


def test_evaluate_refuses_a_dataset_with_another_spacing(trained, tmp_path):
    root = make_store(str(tmp_path / "other"), "kits", n_cases=3, spacing_mm=(6.0, 6.0, 10.0))
    with pytest.raises(ContractMismatch, match="spacing_mm"):
        evaluate_model(trained.model_dir, root, "kits", str(tmp_path / "e"), split="all")


def test_cli_finetune_evaluate_predict(kits_store, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [a for s in [*SMALL_PATCH, "finetune.eval_every=2", "finetune.log_every=1"] for a in ("--set", s)]
    code = pgl(["finetune", "--store", kits_store, "--dataset", "kits", "--output", str(run), "--preset", "tiny",
                "--steps", "2", "--labelled", "2", "--workdir", str(tmp_path / "w"), *sets])
    assert code == 0, capsys.readouterr().err
    assert "model:" in capsys.readouterr().out and (run / "model" / "contract.json").is_file()
    capsys.readouterr()
    assert pgl(["evaluate", "--model", str(run / "model"), "--store", kits_store, "--dataset", "kits",
                "--output", str(tmp_path / "ev"), "--overlays", "0", "--workdir", str(tmp_path / "w")]) == 0
    table = capsys.readouterr().out  # a human table with rounded numbers; JSON behind --json
    assert re.search(r"^  kidney\s+\d\.\d{3}$", table, re.M) and "mean over classes: Dice " in table, table
    assert pgl(["evaluate", "--model", str(run / "model"), "--store", kits_store, "--dataset", "kits",
                "--output", str(tmp_path / "ev"), "--overlays", "0", "--workdir", str(tmp_path / "w"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"  # unchanged model and dataset
    assert (tmp_path / "ev" / "metrics.json").is_file()
    image, _ = generate_case("kits", 2, (16, 32, 32), ras=True)  # 12 slices would be 25 mm thick
    src, dst = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    sitk.WriteImage(image.to_sitk(), str(src))
    assert pgl(["predict", "--model", str(run / "model"), "--input", str(src), "--output", str(dst)]) == 0
    assert sitk.ReadImage(str(dst)).GetSize() == sitk.ReadImage(str(src)).GetSize()
    # the run output folder itself is a model reference too (its model/ is used)
    assert pgl(["predict", "--model", str(run), "--input", str(src), "--output", str(tmp_path / "run.nii.gz")]) == 0
    assert sitk.ReadImage(str(tmp_path / "run.nii.gz")).GetSize() == sitk.ReadImage(str(src)).GetSize()
    assert pgl(["predict", "--model", str(tmp_path / "nope"), "--input", str(src), "--output", str(dst)]) == 2
    assert pgl(["finetune", "--store", kits_store, "--dataset", "kits", "--output", str(tmp_path / "r2"),
                "--preset", "tiny", "--labelled", "9", "--workdir", str(tmp_path / "w")]) == 2
    assert "only 3" in capsys.readouterr().err
