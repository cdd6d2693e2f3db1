"""Prefect retry conditions shared by the flows: retry what is transient, never a data problem."""

from __future__ import annotations

from storage.errors import is_transient


def retry_transient(task_, task_run, state) -> bool:
    """``retry_condition_fn`` for Prefect tasks: True only for network / throttling failures
    (:func:`storage.errors.is_transient`: the object-store clients' connection errors included)."""
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - anything else is not worth retrying
        return is_transient(err)
    return False
