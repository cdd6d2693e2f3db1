"""Test-suite wide settings and shared fixtures.

Shared fixtures live in ``tests/plugins/`` (one module per service or data source) and are
re-exported here so every test folder sees them.
"""

from __future__ import annotations

import os

# Nothing leaves loopback: telemetry off before any import of prefect / mlflow.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from tests.plugins.realdata import *  # noqa: E402,F401,F403
from tests.plugins.s3 import *  # noqa: E402,F401,F403
