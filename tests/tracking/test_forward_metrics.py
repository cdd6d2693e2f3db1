"""Metrics written by training reach the stage's run: every row, also rows that share a step."""

from __future__ import annotations

import json
from pathlib import Path

from flows.tracking.follow import forward_metrics


class ListSink:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.logged.append((step, values))


def _append(path: Path, *rows: dict) -> None:
    with path.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def test_rows_sharing_a_step_are_all_forwarded_once(tmp_path: Path):
    out = tmp_path / "metrics.jsonl"
    _append(out, {"kind": "params", "steps": 4}, {"kind": "metrics", "step": 2, "loss": 1.5, "lr": 0.1},
            {"kind": "metrics", "step": 2, "val_dice": 0.4})
    sink = ListSink()
    seen = forward_metrics(sink, str(tmp_path))
    assert sink.logged == [(2, {"loss": 1.5, "lr": 0.1}), (2, {"val_dice": 0.4})]
    with out.open("a") as fh:
        fh.write('{"kind": "metrics", "step": 4, "lo')  # a line being written right now
    assert forward_metrics(sink, str(tmp_path), since=seen) == seen and len(sink.logged) == 2
    out.write_text(out.read_text().rsplit("\n", 1)[0] + "\n")
    _append(out, {"kind": "metrics", "step": 4, "loss": 1.0}, {"kind": "metrics", "step": 4, "val_dice": 0.6})
    assert forward_metrics(sink, str(tmp_path), since=seen) == seen + 2
    assert sink.logged[2:] == [(4, {"loss": 1.0}), (4, {"val_dice": 0.6})]
