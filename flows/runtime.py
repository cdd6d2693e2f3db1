"""Process-wide runtime settings for the pipeline: telemetry off, Prefect home, quiet logs.

Call :func:`configure` before importing prefect or mlflow (the CLI does this first thing).
Nothing here changes results; it only decides where state lives and that nothing leaves loopback.
"""

from __future__ import annotations

import os
import urllib.parse
import warnings
from pathlib import Path

WORKDIR_ENV = "PGL_WORKDIR"
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def configure(workdir: str | Path | None = None) -> None:
    """Set safe defaults (never overriding what the user exported).

    With ``workdir``, the embedded Prefect database lives under ``workdir/prefect`` so that a demo
    keeps everything it makes in one folder, and ``PGL_WORKDIR`` names it for the stage flows run
    here or by a server started here (their embedded MLflow store and model cache).
    """
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    move_url_credentials()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # runs log to the Prefect API at INFO (their UI pages show the per-case summaries and the
    # training's output); the console shows warnings only (commands print their own summaries)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # models are logged without an input example on purpose (MLflow would run a prediction on it)
    warnings.filterwarnings("ignore", message=r".*input example was not provided")
    if workdir is not None:
        os.environ[WORKDIR_ENV] = str(Path(workdir).resolve())
    if workdir is not None and "PREFECT_API_URL" not in os.environ:
        home = Path(workdir).resolve() / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(home))


def configure_cpu_inference() -> None:
    """Let idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE`` unless exported):
    must run before torch is imported. With torch's default of one thread per core, spinning threads
    that wait for a descheduled one made CPU prediction 5-10x slower on a machine shared with other
    work (benchmarks/predict.py, README "Performance"); the operations it waits between take
    milliseconds, so a sleeping thread's wake-up is small beside them. Results are unchanged."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


LOCAL_SERVER_ENV = "PGL_LOCAL_SERVER_API"  # set by the CLI to the shared local server it uses


def prefect_server_configured() -> bool:
    """True when a Prefect API server other than this machine's shared local one
    (:mod:`flows.local_server`) is configured: worker processes then report to it directly. With the
    local server or Prefect's ephemeral API, ingest runs on threads (no per-process start-up)."""
    api = os.environ.get("PREFECT_API_URL")
    return bool(api) and api != os.environ.get(LOCAL_SERVER_ENV)


# URL variables whose credentials have a variable of their own: (URL, user variable, password variable)
_CREDENTIAL_HOMES = (("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
                     ("PREFECT_API_URL", None, None))


def move_url_credentials() -> None:
    """Take ``user:password@`` out of ``MLFLOW_TRACKING_URI`` (into ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD``, which MLflow sends as basic auth) and out of ``PREFECT_API_URL``
    (into ``PREFECT_API_AUTH_STRING``), so that no log line, error, run tag or Prefect parameter ever
    shows them: every later reader sees the URL without its secret."""
    for var, user_var, password_var in _CREDENTIAL_HOMES:
        parts = urllib.parse.urlsplit(os.environ.get(var, ""))
        if parts.username is None:
            continue
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
        if user_var:
            os.environ.setdefault(user_var, user)
            if parts.password is not None:
                os.environ.setdefault(password_var, password)
        else:
            os.environ.setdefault("PREFECT_API_AUTH_STRING", f"{user}:{password}")
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        os.environ[var] = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
