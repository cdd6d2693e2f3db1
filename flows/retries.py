"""Prefect retry conditions shared by the flows: retry what is transient, never a data problem."""

from __future__ import annotations

from storage.errors import TRANSIENT_ERRORS


def retry_transient(task_, task_run, state) -> bool:
    """``retry_condition_fn`` for Prefect tasks: True only for network / throttling failures."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except Exception:  # noqa: BLE001 - anything else is not worth retrying
        return False
    return False
