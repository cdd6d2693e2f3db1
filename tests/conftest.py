"""Test-suite wide settings and shared fixtures.

Shared fixtures live in ``tests/plugins/`` (one module per service or data source) and are
re-exported here so every test folder sees them.
"""

from __future__ import annotations

import os
import tempfile

from flows import runtime  # imports nothing heavy

# Embedded Prefect keeps its database in a throw-away folder, never in the home folder; then the
# CLI's own settings (nothing leaves loopback: telemetry off before any import of prefect / mlflow).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pgl-test-prefect-"))
os.environ.setdefault("PGL_PROGRESS", "0")
# the CLI run by tests uses Prefect's per-command API: nothing outlives a test (tests/flows/test_local_server.py
# tests the shared local server)
os.environ.setdefault("PGL_LOCAL_SERVER", "0")
# the CLI is called in-process here: its commands keep Prefect's console handler quiet (they print their
# own summaries and errors), and Prefect configures logging once, at its first import in the process
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
runtime.configure()

from tests.plugins.realdata import *  # noqa: E402,F401,F403
from tests.plugins.s3 import *  # noqa: E402,F401,F403
from tests.plugins.mlflow_server import *  # noqa: E402,F401,F403

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _workdir_env_per_test():
    """A CLI command run in-process exports its --workdir (PGL_WORKDIR) for the flows it runs: undo
    it after each test, so no later test records its runs in another test's folder."""
    before = os.environ.get(runtime.WORKDIR_ENV)
    yield
    if before is None:
        os.environ.pop(runtime.WORKDIR_ENV, None)
    else:
        os.environ[runtime.WORKDIR_ENV] = before
