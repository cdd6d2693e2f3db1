"""Process-wide runtime settings for the pipeline: telemetry off, Prefect home, quiet logs.

Call :func:`configure` before importing prefect or mlflow (the CLI does this first thing).
Nothing here changes results; it only decides where state lives and that nothing leaves loopback.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def configure(workdir: str | Path | None = None) -> None:
    """Set safe defaults (never overriding what the user exported).

    With ``workdir``, the embedded Prefect database lives under ``workdir/prefect`` so that a demo
    keeps everything it makes in one folder.
    """
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # models are logged without an input example on purpose (MLflow would run a prediction on it)
    warnings.filterwarnings("ignore", message=r".*input example was not provided")
    if workdir is not None and "PREFECT_API_URL" not in os.environ:
        home = Path(workdir).resolve() / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(home))


def prefect_server_configured() -> bool:
    """True when a Prefect API server is configured (else Prefect runs embedded, in-process)."""
    return bool(os.environ.get("PREFECT_API_URL"))
