"""What a stage's Prefect run page shows besides its logs: a progress artifact updated while the
work runs, a result (a table or markdown) when it ends, and a link to the stage's MLflow run.

Every function is best effort and a no-op outside a flow run: the UI is a view of the work, never
a reason for it to fail. A failed call is logged once (as a warning on the run's log) and the
object that failed stops trying. Artifact keys are lowercase letters, digits and dashes
(:func:`artifact_key`); a keyed artifact shows on the run's Artifacts tab and, with its history
over runs, on the UI's Artifacts page.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any, Sequence

_log = logging.getLogger(__name__)


def in_flow_run() -> bool:
    """True inside a Prefect flow run (or a thread started with its context)."""
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def artifact_key(*parts: str) -> str:
    """A valid artifact key from ``parts`` (``"preprocess", "Task09_Spleen"`` -> ``preprocess-task09-spleen``)."""
    text = "-".join(p for p in parts if p)
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:200] or "pgl"


def _warn(what: str, err: BaseException) -> None:
    message = "Prefect artifact %s not recorded (%s: %s); the run goes on"
    try:
        from prefect import get_run_logger

        get_run_logger().warning(message, what, type(err).__name__, str(err)[:200])
    except Exception:  # noqa: BLE001 - no run logger in this thread
        _log.warning(message, what, type(err).__name__, str(err)[:200])


class Progress:
    """A progress artifact (0-100 %) with a one-line description, updated at most every
    ``min_interval_s`` seconds (and always at 100 %)."""

    def __init__(self, key: str, total: int, min_interval_s: float = 1.0) -> None:
        self.key, self.total, self.min_interval_s = key, max(int(total), 1), min_interval_s
        self.artifact_id: Any = None
        self._last = -math.inf
        self._live = in_flow_run()

    def update(self, done: int, description: str) -> None:
        """Show ``done`` of ``total`` with ``description`` (e.g. ``"12/40 cases: 11 done, 1 failed"``)."""
        if not self._live:
            return
        pct = min(100.0, 100.0 * done / self.total)
        now = time.monotonic()
        if pct < 100.0 and now - self._last < self.min_interval_s:
            return
        self._last = now
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(progress=pct, key=self.key, description=description)
            else:
                update_progress_artifact(self.artifact_id, pct, description=description)
        except Exception as err:  # noqa: BLE001 - see the module docstring
            self._live = False
            _warn(self.key, err)


def table(key: str, rows: Sequence[dict[str, Any]], description: str) -> None:
    """A table artifact: one row per dict (the same keys in every row; floats rounded to 4 places)."""
    if not in_flow_run():
        return
    clean = [{k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()}
             for r in rows]
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=clean, key=key, description=description)
    except Exception as err:  # noqa: BLE001
        _warn(key, err)


def markdown(key: str, text: str, description: str) -> None:
    """A markdown artifact."""
    if not in_flow_run():
        return
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=text, key=key, description=description)
    except Exception as err:  # noqa: BLE001
        _warn(key, err)


def link(key: str, url: str, text: str, description: str) -> None:
    """A link artifact (``text`` shown, ``url`` opened)."""
    if not in_flow_run():
        return
    try:
        from prefect.artifacts import create_link_artifact

        create_link_artifact(link=url, link_text=text, key=key, description=description)
    except Exception as err:  # noqa: BLE001
        _warn(key, err)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` as a GitHub-style markdown table (floats to 4 places, None as an empty cell)."""
    if not rows:
        return "(none)"
    cols = list(rows[0])

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def flow_run_info() -> dict[str, str]:
    """``{"prefect.flow_run_id", "prefect.flow_run_name", "prefect.flow_run_url"}`` of the current
    flow run (the URL only when the UI's address is known); empty outside a flow run."""
    if not in_flow_run():
        return {}
    from prefect.runtime import flow_run

    info = {"prefect.flow_run_id": flow_run.id or "", "prefect.flow_run_name": flow_run.name or ""}
    try:
        url = flow_run.ui_url
    except Exception:  # noqa: BLE001 - no UI address configured
        url = None
    if url:
        info["prefect.flow_run_url"] = url
    return {k: v for k, v in info.items() if v}
