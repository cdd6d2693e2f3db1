"""Package boundaries: imports flow flows -> pgl_core -> storage, and phantoms -> storage only
(import-linter contracts)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "storage": {"torch", "prefect", "prefect_dask", "mlflow", "dask", "distributed", "flows", "pgl_core",
                "phantoms"},
    "pgl_core": {"prefect", "prefect_dask", "mlflow", "zarr", "fsspec", "s3fs", "dask", "distributed", "flows",
                 "phantoms"},
    "phantoms": {"torch", "prefect", "prefect_dask", "mlflow", "dask", "distributed", "flows", "pgl_core"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_forbidden_imports_anywhere_in_the_source():
    offences = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = _imports(path) & forbidden
            if bad:
                offences.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offences, "package boundary broken:\n" + "\n".join(offences)


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" in proc.stdout and "0 broken" in proc.stdout
