"""Test-suite wide settings and shared fixtures.

Shared fixtures live in ``tests/plugins/`` (one module per service or data source) and are
re-exported here so every test folder sees them.
"""

from __future__ import annotations

import os
import tempfile

# Nothing leaves loopback: telemetry off before any import of prefect / mlflow.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
os.environ.setdefault("PGL_PROGRESS", "0")
# Embedded Prefect keeps its database in a throw-away folder, never in the home folder.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pgl-test-prefect-"))

from tests.plugins.realdata import *  # noqa: E402,F401,F403
from tests.plugins.s3 import *  # noqa: E402,F401,F403
from tests.plugins.mlflow_server import *  # noqa: E402,F401,F403
