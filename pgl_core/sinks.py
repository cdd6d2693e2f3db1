"""The metrics sink interface the training loops write to, and its default implementations.

The loop never knows about a tracker: it calls ``log_params`` once and ``log_metrics`` every
``log_every`` steps on rank 0. ``JsonlSink`` (one JSON object per line) is the default; an MLflow
sink is plugged in from ``flows/``. ``MultiSink`` fans out to several sinks.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class MetricsSink(Protocol):
    """Where metrics go. Implementations must tolerate ``close()`` being called twice."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_params(self, params: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Drops everything (non-main ranks)."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlSink:
    """One JSON object per line: ``{"kind": "params"|"metrics", "step", "time", ...}``.

    ``target`` is a local path or a URI. Local files are appended and flushed per record; remote
    URIs (``s3://...``) are buffered and rewritten atomically through ``storage.blobs`` every
    ``flush_every`` records and on ``close()``, after the records the object already held (a
    resumed run appends to its history there too; records after the last rewrite of a killed run
    are lost, the steps after its last checkpoint are run again).
    """

    def __init__(self, target: str | Path, storage_options: dict | None = None, flush_every: int = 20) -> None:
        self.target = str(target)
        self.storage_options = storage_options
        self.flush_every = flush_every
        self._remote = "://" in self.target and not self.target.startswith("file://")
        self._lines: list[str] = []
        self._pending = 0
        self._fh = None
        if self._remote:
            from storage.blobs import exists, get_bytes

            if exists(self.target, storage_options):
                old = get_bytes(self.target, storage_options).decode("utf-8", errors="replace")
                self._lines = [line for line in old.splitlines() if line.strip()]
        else:
            path = Path(self.target.removeprefix("file://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, sort_keys=False)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
            return
        self._lines.append(line)
        self._pending += 1
        if self._pending >= self.flush_every:
            self._flush_remote()

    def _flush_remote(self) -> None:
        from storage.blobs import put_bytes_atomic

        data = ("\n".join(self._lines) + "\n").encode() if self._lines else b""
        put_bytes_atomic(self.target, data, storage_options=self.storage_options)
        self._pending = 0

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._write({"kind": "metrics", "step": int(step), "time": time.time(),
                     **{k: float(v) for k, v in metrics.items()}})

    def log_params(self, params: dict[str, Any]) -> None:
        self._write({"kind": "params", "time": time.time(), **params})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        elif self._remote and self._pending:
            self._flush_remote()


class MultiSink:
    """Forwards every call to each of ``sinks`` in order."""

    def __init__(self, *sinks: MetricsSink) -> None:
        self.sinks = list(sinks)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for s in self.sinks:
            s.log_metrics(step, metrics)

    def log_params(self, params: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log_params(params)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Parse a local JSONL metrics file (tests, reports)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
