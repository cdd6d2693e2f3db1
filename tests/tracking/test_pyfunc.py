"""The pyfunc wrapper without a registry, and the rule that only the tracking adapter imports mlflow."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.tracking.standins import make_model_dir, write_ct

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = {"flows/tracking/mlflow_run.py", "flows/tracking/inputs.py", "flows/tracking/registry.py",
           "flows/tracking/pyfunc_model.py"}


def test_only_the_tracking_adapter_imports_mlflow() -> None:
    importers = set()
    for package in ("flows", "pgl_core", "storage"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                    importers.add(str(path.relative_to(ROOT)))
    assert importers <= ADAPTER, f"mlflow imported outside the adapter: {sorted(importers - ADAPTER)}"
    assert "flows/tracking/mlflow_run.py" in importers


def _loaded(model_dir: str):
    import mlflow.pyfunc

    from flows.tracking.pyfunc_model import PGLSegmenterModel

    model = PGLSegmenterModel()
    model.load_context(mlflow.pyfunc.PythonModelContext(artifacts={"model_dir": model_dir}, model_config={}))
    return model


@pytest.mark.parametrize("shape", ["frame", "records", "columns"])
def test_predict_writes_label_maps_in_the_input_geometry(tmp_path: Path, shape: str) -> None:
    model = _loaded(make_model_dir(tmp_path / "model", threshold_hu=250.0))
    cases = [write_ct(tmp_path / f"ct{i}.nii.gz", seed=i, shape_zyx=(4 + i, 9, 7)) for i in range(2)]
    records = [{"input": p, "output": str(tmp_path / "pred" / f"seg{i}.nii.gz")} for i, (p, _) in enumerate(cases)]
    model_input = {"frame": pd.DataFrame(records), "records": records,
                   "columns": {"input": [r["input"] for r in records], "output": [r["output"] for r in records]}}[shape]
    result = model.predict(None, model_input)
    assert list(result["output"]) == [r["output"] for r in records]
    for (src, arr), rec in zip(cases, records):
        seg, ct = sitk.ReadImage(rec["output"]), sitk.ReadImage(src)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), (arr > 250).astype(np.uint8))
        assert seg.GetSpacing() == pytest.approx(ct.GetSpacing()) and seg.GetOrigin() == pytest.approx(ct.GetOrigin())


def test_bad_records_and_predictors_name_the_problem(tmp_path: Path) -> None:
    from flows.tracking.pyfunc_model import load_predictor, records_of

    with pytest.raises(ValueError, match="record 1 needs"):
        records_of([{"input": "a", "output": "b"}, {"input": "c"}])
    with pytest.raises(ValueError, match="'module:function'"):
        load_predictor("pgl_core.predict.predict_file")
    with pytest.raises(ValueError, match="no callable 'nope'"):
        load_predictor("tests.tracking.standins:nope")


def test_resolve_model_accepts_a_local_dir_and_refuses_others(tmp_path: Path) -> None:
    from flows.tracking.registry import resolve_model

    model_dir = make_model_dir(tmp_path / "m")
    assert resolve_model(model_dir) == str(Path(model_dir).resolve())
    with pytest.raises(FileNotFoundError, match="no contract.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
        resolve_model("models:/pgl-seg-x", cache_dir=tmp_path / "cache", tracking_uri=f"sqlite:///{tmp_path}/db")
