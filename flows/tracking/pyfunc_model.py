"""The MLflow pyfunc wrapper of a PGL model directory (one of the three tracking adapter modules
allowed to import mlflow; see ``flows/tracking/mlflow_run.py``).

A registered model's only artifact is its local model directory (``model.pt`` or ``encoder.pt``
plus ``contract.json``). Prediction is whatever the contract names in ``"predictor"``
(``"module:function"``, default ``pgl_core.predict:predict_file``), called as
``predictor(model_dir, input_uri, output_uri) -> written_output_uri``: it does the whole job
(reading, preprocessing, sliding window, writing the label map in the input's geometry), so
``pgl predict`` and the pyfunc share one code path. Volumes have any size: never the pt2 flavour.

Input: a pandas DataFrame, a list of records or one record, with columns ``input`` and
``output`` (local paths or ``s3://`` URIs; an input may be a DICOM series folder).
Output: a DataFrame with one column ``output`` (the written URIs, in input order).

Servable in a fresh environment: the model ships the project's packages (``flows``, ``pgl_core``,
``storage``) as MLflow ``code_paths`` (``code/`` in the model, put on ``sys.path`` when it loads),
and its ``requirements.txt`` pins the runtime dependencies that code imports at the versions of
the logging environment, as an index serves them (local version labels such as torch's ``+cpu``
dropped: ``torch==2.13.0`` matches the CPU build on a CPU index and the CUDA one on PyPI).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shutil
from pathlib import Path
from typing import Any, Callable

import mlflow.pyfunc
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from pgl_core.contracts import PREDICTOR, read_contract

ARTIFACT_KEY = "model_dir"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "input"), ColSpec("string", "output")]),
    outputs=Schema([ColSpec("string", "output")]),
)
# The project's packages the model's code imports (the wrapper, the predictor and what they use),
# shipped inside the model; and the distributions that code imports (``s3fs`` for s3:// inputs and
# outputs), pinned in its requirements.
CODE_PACKAGES = ("flows", "pgl_core", "storage")
RUNTIME_DISTS = ("mlflow", "torch", "numpy", "pandas", "SimpleITK", "pydicom", "nibabel", "cloudpickle",
                 "pydantic", "pyyaml", "fsspec", "s3fs")


def public_version(version: str) -> str:
    """``version`` without its local label (``2.13.0+cpu`` -> ``2.13.0``): what an index serves."""
    return version.split("+", 1)[0]


def pip_requirements() -> list[str]:
    """Pinned requirements of the model's runtime (avoids MLflow's slow inference); a distribution
    missing here is left out."""
    pins = []
    for dist in RUNTIME_DISTS:
        try:
            pins.append(f"{dist}=={public_version(importlib.metadata.version(dist))}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def code_paths(folder: str | Path) -> list[str]:
    """Copies of :data:`CODE_PACKAGES` (sources only, no caches) under ``folder``; their paths, for
    ``log_model(code_paths=...)``."""
    paths = []
    for package in CODE_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"package {package!r} (shipped with every model) is not importable")
        dest = Path(folder) / "code" / package
        shutil.copytree(list(spec.submodule_search_locations)[0], dest,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        paths.append(str(dest))
    return paths


def load_predictor(spec: str) -> Callable[[str, str, str], str]:
    """Import ``"package.module:function"``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"predictor {spec!r} is not of the form 'module:function'")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ValueError(f"predictor {spec!r}: {module_name} has no callable {attr!r}")
    return fn


def records_of(model_input: Any) -> list[dict[str, str]]:
    """Normalise a DataFrame / list of records / dict into ``[{"input", "output"}, ...]``."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        cols = {k: v if isinstance(v, (list, tuple)) else [v] for k, v in model_input.items()}
        rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    else:
        rows = list(model_input)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not row.get("input") or not row.get("output"):
            raise ValueError(f"prediction record {i} needs non-empty 'input' and 'output', got {row!r}")
        out.append({"input": str(row["input"]), "output": str(row["output"])})
    return out


class PGLSegmenterModel(mlflow.pyfunc.PythonModel):
    """Pyfunc model: each record's ``input`` volume -> a label map written to its ``output``."""

    def load_context(self, context: Any) -> None:
        """Find the model directory among the artifacts and import its predictor."""
        self.model_dir = str(context.artifacts[ARTIFACT_KEY])
        self.contract = read_contract(self.model_dir)
        spec = self.contract.get("predictor") or PREDICTOR
        if self.contract.get("kind") == "pgl-encoder" and not self.contract.get("predictor"):
            self.predictor = None
        else:
            self.predictor = load_predictor(spec)

    # The DataFrame hint tells MLflow not to derive a schema from it (SIGNATURE states the
    # columns); called directly, records and dicts of columns are accepted too.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        """Run the contract's predictor on every record; returns a DataFrame ``output`` column."""
        if self.predictor is None:
            raise ValueError(f"model {self.model_dir} (kind {self.contract.get('kind')!r}) has no predictor; "
                             "use flows.tracking.registry.resolve_model to get its weights")
        outputs = [str(self.predictor(self.model_dir, r["input"], r["output"])) for r in records_of(model_input)]
        return pd.DataFrame({"output": outputs})
